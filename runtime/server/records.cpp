#include "runtime/server/records.hpp"

#include <algorithm>
#include <type_traits>

namespace flotilla {

const char* to_string(RejectReason reason) noexcept {
  switch (reason) {
    case RejectReason::late: return "late";
    case RejectReason::stale: return "stale";
    case RejectReason::not_sampled: return "not-sampled";
    case RejectReason::duplicate: return "duplicate";
    case RejectReason::wrong_version: return "wrong-version";
    case RejectReason::invalid: return "invalid";
    case RejectReason::fold_failed: return "fold-failed";
    case RejectReason::not_finite: return "not-finite";
    case RejectReason::outlier: return "outlier";
  }
  return "?";
}

VersionRecorder::Pending* VersionRecorder::pending_for_version(std::uint64_t version) {
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    if (it->record.model_version == version && !it->record.failed) return &*it;
  }
  return nullptr;
}

ClientCounts VersionRecorder::client_counts() const {
  return {online_.size(), busy_.size(), online_.size() - std::min(online_.size(), busy_.size()),
          offline_.size()};
}

void VersionRecorder::record_clients(RoundRecord& r) const {
  const auto c = client_counts();
  r.clients_busy = static_cast<std::uint32_t>(c.busy);
  r.clients_idle = static_cast<std::uint32_t>(c.idle);
  r.clients_offline = static_cast<std::uint32_t>(c.offline);
}

void VersionRecorder::close_open(double at, bool failed, std::uint64_t version) {
  open_.failed = failed;
  if (rounds_) {
    // The sampled clients whose update had not come when the round closed: known now, not
    // only if their update ever arrives (the last round's never do; nor a crashed client's).
    open_.late = static_cast<std::uint32_t>(awaiting_.size());
    awaiting_.clear();
  }
  open_.model_version = version;
  if (weight_sum_ > 0) {
    open_.train_loss = loss_sum_ / weight_sum_;
    open_.train_accuracy = accuracy_sum_ / weight_sum_;
  }
  if (open_.updates > 0) open_.staleness_mean = staleness_sum_ / open_.updates;
  open_.round_seconds = at - open_since_;
  open_.version_seconds = run_started_ ? at - *run_started_ : 0;
  record_clients(open_);
  pending_.push_back({open_, false});
  RoundRecord next;
  next.round = open_.round + 1;
  next.model_version = version;
  open_ = next;
  open_since_ = at;
  staleness_sum_ = loss_sum_ = accuracy_sum_ = weight_sum_ = 0;
}

void VersionRecorder::on(const Event& event) {
  now_ = event.at;
  std::visit(
      [&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, ClientJoined>) {
          if (e.role == Role::client) {
            online_.insert(e.peer);
            offline_.erase(e.peer);
          }
        } else if constexpr (std::is_same_v<T, ClientLeft>) {
          if (online_.erase(e.peer) > 0) offline_.insert(e.peer);
          busy_.erase(e.peer);
        } else if constexpr (std::is_same_v<T, RoundStarted>) {
          if (!run_started_) run_started_ = event.at;
          rounds_ = true;
          busy_.clear();  // a new round: only its sampled clients will hold tasks
          awaiting_.clear();
          round_tasks_.clear();
          open_ = RoundRecord{};
          open_.round = e.round;
          open_.model_version = e.version;
          open_.sampled = e.sampled;
          open_since_ = event.at;
          staleness_sum_ = loss_sum_ = accuracy_sum_ = weight_sum_ = 0;
        } else if constexpr (std::is_same_v<T, TaskSent>) {
          if (!run_started_) {
            run_started_ = event.at;
            open_since_ = event.at;
          }
          busy_.insert(e.peer);
          if (rounds_) {
            awaiting_.insert(e.peer);
            round_tasks_.insert(e.peer);  // a client joining the open round counts as sampled
            open_.sampled = std::max<std::uint32_t>(open_.sampled, static_cast<std::uint32_t>(round_tasks_.size()));
          }
          ++counters_.tasks_sent;
          open_.bytes_sent += e.bytes;
          ++open_.tasks;
        } else if constexpr (std::is_same_v<T, TaskLost>) {
          busy_.erase(e.peer);
          ++counters_.tasks_lost;
        } else if constexpr (std::is_same_v<T, UpdateAccepted>) {
          busy_.erase(e.peer);
          if (e.round == open_.round) awaiting_.erase(e.peer);
          ++counters_.updates_accepted;
          if (e.weight_capped) ++counters_.weights_capped;
          if (e.clipped) ++counters_.updates_clipped;
          ++open_.updates;
          open_.bytes_received += e.bytes;
          staleness_sum_ += static_cast<double>(e.staleness);
          open_.staleness_max = std::max(open_.staleness_max, e.staleness);
          loss_sum_ += e.weight * e.train_loss;
          accuracy_sum_ += e.weight * e.train_accuracy;
          weight_sum_ += e.weight;
        } else if constexpr (std::is_same_v<T, UpdateRejected>) {
          ++counters_.rejected_by_reason[static_cast<std::size_t>(e.reason)];
          // The update ended its sender's task, unless it was not its to send.
          if (e.reason != RejectReason::not_sampled && e.reason != RejectReason::duplicate) {
            busy_.erase(e.peer);
          }
          if (e.reason == RejectReason::late) {
            ++counters_.updates_late;
            // Sync: counted in its round's record when the round closed without it.
            if (!rounds_) ++open_.late;
          } else {
            ++counters_.updates_rejected;
            ++open_.rejected;
            if (e.round == open_.round && e.reason != RejectReason::not_sampled &&
                e.reason != RejectReason::duplicate) {
              awaiting_.erase(e.peer);  // it answered its task, if not well
            }
            if (e.reason == RejectReason::stale) ++open_.stale;
          }
        } else if constexpr (std::is_same_v<T, FoldFailed>) {
          counters_.updates_accepted -= std::min<std::uint64_t>(counters_.updates_accepted, e.updates);
          counters_.updates_rejected += e.updates;
          counters_.rejected_by_reason[static_cast<std::size_t>(RejectReason::fold_failed)] += e.updates;
          open_.updates -= std::min(open_.updates, e.updates);
          open_.rejected += e.updates;
        } else if constexpr (std::is_same_v<T, ClientReported>) {
          open_.optimizer_state_bytes = std::max(open_.optimizer_state_bytes, e.stats.optimizer_state_bytes);
        } else if constexpr (std::is_same_v<T, MessageRefused>) {
          ++counters_.messages_malformed;
        } else if constexpr (std::is_same_v<T, VersionProduced>) {
          ++counters_.rounds_completed;
          open_.round = e.round;
          close_open(event.at, false, e.version);
        } else if constexpr (std::is_same_v<T, VersionFailed>) {
          ++counters_.rounds_failed;
          open_.round = e.round;
          close_open(event.at, true, open_.model_version);
        } else if constexpr (std::is_same_v<T, EvaluationRequested>) {
          if (auto* p = pending_for_version(e.version)) {
            p->awaiting_evaluation = true;
          } else {
            // The initial model (or a version whose record left already): a record of its own.
            RoundRecord r;
            r.round = e.round;
            r.model_version = e.version;
            record_clients(r);
            pending_.push_back({r, true});
          }
        } else if constexpr (std::is_same_v<T, Evaluated>) {
          if (auto* p = pending_for_version(e.version)) {
            p->record.eval_loss = e.loss;
            p->record.eval_accuracy = e.accuracy;
            p->awaiting_evaluation = false;
          }
        } else if constexpr (std::is_same_v<T, EvaluationMissed>) {
          if (auto* p = pending_for_version(e.version)) p->awaiting_evaluation = false;
        } else if constexpr (std::is_same_v<T, PluginReloaded>) {
          ++(e.ok ? counters_.plugin_reloads : counters_.plugin_reload_failures);
        } else if constexpr (std::is_same_v<T, RunFinished>) {
          for (auto& p : pending_) p.awaiting_evaluation = false;
        }
      },
      event.body);
}

std::vector<RoundRecord> VersionRecorder::take_completed() {
  while (!pending_.empty() && !pending_.front().awaiting_evaluation) {
    auto& r = pending_.front().record;
    r.elapsed_seconds = run_started_ ? now_ - *run_started_ : 0;
    completed_.push_back(r);
    pending_.pop_front();
  }
  std::vector<RoundRecord> out;
  out.swap(completed_);
  return out;
}

}  // namespace flotilla

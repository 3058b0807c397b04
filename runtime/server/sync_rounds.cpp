#include "runtime/server/sync_rounds.hpp"

#include "runtime/base/log.hpp"

#include <algorithm>
#include <cmath>

namespace flotilla {

SyncRounds::SyncRounds(ScheduleOptions options, TensorList initial_model,
                       std::unique_ptr<Aggregation> aggregation, const Clock& clock,
                       std::string run_id)
    : Schedule(std::move(options), std::move(initial_model), std::move(aggregation), clock,
               std::move(run_id)) {}

std::string SyncRounds::describe() const {
  std::string d = "sync";
  if (options_.over_selection > 0) d += " (over-selection " + std::to_string(options_.over_selection) + ")";
  return d;
}

std::size_t SyncRounds::needed() const {
  if (options_.over_selection > 0 && options_.clients_per_round > 0) {
    return std::min<std::size_t>(options_.clients_per_round, sampled_.size());
  }
  return sampled_.size();
}

std::vector<Send> SyncRounds::handle_update(const std::string& peer, const Update& update) {
  std::vector<Send> out;
  heard(peer, out);
  if (!collecting_ || update.round != round_) {
    if (update.round < round_ || (update.round == round_ && !collecting_)) {
      reject(out, peer, update, RejectReason::late, "round " + std::to_string(update.round) + " is over");
    } else {
      reject(out, peer, update, RejectReason::not_sampled,
             "round " + std::to_string(update.round) + " has not started");
    }
    return out;
  }
  if (!sampled_.contains(peer)) {
    reject(out, peer, update, RejectReason::not_sampled, "not sampled for round " + std::to_string(round_));
    return out;
  }
  if (replied_.contains(peer)) {
    reject(out, peer, update, RejectReason::duplicate,
           "already sent an update for round " + std::to_string(round_));
    return out;
  }
  answered_.insert(peer);  // its answer to this round's task, accepted below or not
  if (update.base_model_version != version_) {
    reject(out, peer, update, RejectReason::wrong_version,
           "update is based on model version " + std::to_string(update.base_model_version) +
               ", the round trains version " + std::to_string(version_));
    return out;
  }
  if (update.is_delta) {
    reject(out, peer, update, RejectReason::invalid,
           "a delta update, but the sync schedule's tasks ask for weights");
    return out;
  }
  const auto [weight, capped] = weight_of(update);
  const auto client_id = client_id_of(peer);
  if (auto ok = aggregation_->check(WeightedUpdate{&update.tensors, weight, 0, client_id}); !ok) {
    reject(out, peer, update, RejectReason::invalid, ok.error().message);
    return out;
  }
  TensorList clipped;
  const auto valid = validate(out, peer, update, update.tensors, clipped);
  if (!valid) return out;
  replied_.insert(peer);
  ++accepted_;
  emit(UpdateAccepted{peer, client_id, round_, update.base_model_version, 0, weight,
                      total_bytes(update.tensors), metric(update.metrics, "loss"),
                      metric(update.metrics, "accuracy"), capped, valid->clipped});
  // Counted first: a fold that then fails takes back exactly the updates it lost.
  fold_queue_.push_back(Queued{*valid->tensors, weight, client_id});
  if (fold_queue_.size() >= std::max<std::uint32_t>(options_.fold_batch, 1)) fold_queued();
  if (replied_.size() >= needed()) close_round(out, false);
  return out;
}

void SyncRounds::tick_running(std::vector<Send>& out) {
  fold_queued();
  if (collecting_ && clock_.now() - round_started_ >= options_.round_deadline) close_round(out, true);
}

void SyncRounds::on_client_ready(const std::string& peer, std::vector<Send>& out) {
  if (!collecting_ || sampled_.contains(peer) || replied_.contains(peer)) return;
  if (options_.clients_per_round != 0 && sampled_.size() >= wanted_) return;
  sampled_.insert(peer);
  logger("aggregator")->info("{} joins round {} (the round can still use it)", peer, round_);
  out.push_back(task_for(peer, round_, false));
}

void SyncRounds::on_client_restarted(const std::string& peer, std::vector<Send>& out) {
  if (collecting_ && sampled_.contains(peer) && !replied_.contains(peer)) {
    logger("aggregator")->info("{} restarted while holding round {}'s task: sent again", peer, round_);
    out.push_back(task_for(peer, round_, false));
    return;
  }
  on_client_ready(peer, out);
}

void SyncRounds::save_position(ScheduleSnapshot& snapshot) const {
  if (collecting_) {
    throw Failure(Errc::internal, "a checkpoint while round " + std::to_string(round_) + " is open");
  }
  snapshot.step = round_;
}

void SyncRounds::start_round(std::vector<Send>& out) {
  apply_pending_reload();  // between rounds: nothing is folded in yet
  const auto live = registry_.clients();
  ++round_;
  collecting_ = true;
  round_started_ = clock_.now();
  std::size_t k = live.size();
  if (options_.clients_per_round != 0) {
    const double want = std::ceil(options_.clients_per_round * (1.0 + options_.over_selection));
    k = std::min<std::size_t>(static_cast<std::size_t>(want), live.size());
  }
  // Uncapped: a round that sampled fewer than K (too few live clients) takes those who come.
  wanted_ = options_.clients_per_round == 0
                ? 0
                : static_cast<std::size_t>(
                      std::ceil(options_.clients_per_round * (1.0 + options_.over_selection)));
  const auto clients = selection_->pick(live, k, rng_);
  sampled_ = std::set<std::string>(clients.begin(), clients.end());
  fold_queue_.clear();
  replied_.clear();
  answered_.clear();
  accepted_ = 0;
  emit(RoundStarted{round_, version_, static_cast<std::uint32_t>(k)});
  for (const auto& peer : sampled_) out.push_back(task_for(peer, round_, false));
  logger("aggregator")->debug("round {} started with {} clients", round_, k);
}

void SyncRounds::fold_queued() {
  if (fold_queue_.empty()) return;
  std::vector<WeightedUpdate> batch;
  for (const auto& q : fold_queue_) batch.push_back({&q.tensors, q.weight, 0, q.client_id});
  // Counted first (accepted_): the updates a failing fold loses are taken back.
  const auto lost = fold(batch, Label{"round", round_});
  accepted_ -= std::min(accepted_, lost);
  fold_queue_.clear();
}

void SyncRounds::close_round(std::vector<Send>& out, bool deadline) {
  fold_queued();
  collecting_ = false;
  const bool last = round_ >= options_.rounds;
  const Label what{"round", round_};
  bool produced = false;
  const bool contained = contain_version(round_, what, [&] {
    std::optional<TensorList> next;
    if (accepted_ >= options_.min_updates && aggregation_->accepted() > 0) {
      next = finalize_aggregation(what);
    } else if (aggregation_->accepted() > 0) {
      aggregation_->discard();
    }
    if (next) {
      produce_version(std::move(*next), round_, last, out);
      produced = true;
    }
  });
  if (contained && !produced) {
    logger("aggregator")->warn("round {} failed: {} of {} updates by the deadline (min-updates {})",
                               round_, accepted_, sampled_.size(), options_.min_updates);
    emit(VersionFailed{round_, "too few updates by the deadline"});
  }
  // A sampled client that sent nothing by the deadline is not sampled again until it is heard
  // from (a killed device would otherwise cost the next round its whole deadline too; a slow
  // but live one comes back with its late update or its next heartbeat). Closed early (K of
  // the over-selected replied), only those also silent past the peer timeout.
  for (const auto& peer : sampled_) {
    const auto* p = registry_.find(peer);
    if (p == nullptr || answered_.contains(peer)) continue;
    if (deadline) {
      set_aside(peer, "sent no update by the round deadline", out);
    } else if (clock_.now() - p->last_seen > options_.peer_timeout) {
      set_aside(peer, "missed the round and is silent", out);
    }
  }
  sampled_.clear();
  replied_.clear();
  answered_.clear();
  // Between rounds, before the next one draws its clients: a checkpoint here continues with
  // the same draw.
  version_point();
  if (last) {
    end_run(out, "all rounds done");
  } else if (auto why = stop_reason()) {
    end_run(out, *why);
  } else {
    start_round(out);
  }
}

}  // namespace flotilla

#include "runtime/server/async_schedule.hpp"

#include "runtime/base/log.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

namespace flotilla {

Expected<void> AsyncSchedule::supports(const ScheduleOptions& o, const Aggregation& aggregation) {
  return supports(o, aggregation.traits(), aggregation.describe());
}

Expected<void> AsyncSchedule::supports(const ScheduleOptions& o, const AggregationTraits& traits,
                                       const std::string& name) {
  if (o.kind == ScheduleKind::async && traits.needs_cohort) {
    return Error{Errc::invalid_config,
                 name + " needs many updates per version (it declares so), but schedule = \"async\" "
                        "makes a version of every update: use \"buffered\" or \"sync\""};
  }
  if (traits.tracks_global && o.kind == ScheduleKind::async) {
    return Error{Errc::invalid_config,
                 name + " keeps and steps the global model itself (it declares so), but schedule = "
                        "\"async\" mixes the model on its own: use \"buffered\" (FedBuff with a "
                        "server optimizer, buffer-learning-rate 1) or \"sync\""};
  }
  if (traits.writes_base && o.kind != ScheduleKind::sync) {
    // Buffered deltas are rebased one by one onto the current adapters, but the base weights
    // the method wrote in between are not: the exact aggregate (FedEx-LoRA) or the merged stack
    // (FLoRA, whose fresh adapters change every version) would be wrong.
    return Error{Errc::invalid_config,
                 name + " writes into the base weights from a cohort trained on one version (it "
                        "declares so); use schedule = \"sync\""};
  }
  if (traits.tracks_global && o.kind == ScheduleKind::buffered && o.server_learning_rate != 1.0) {
    return Error{Errc::invalid_config,
                 name + " keeps and steps the global model itself (it declares so): leave "
                        "aggregator.buffer-learning-rate at 1 and set its own options instead"};
  }
  return {};
}

AsyncSchedule::AsyncSchedule(ScheduleOptions options, TensorList initial_model,
                             std::unique_ptr<Aggregation> aggregation, const Clock& clock,
                             std::string run_id)
    : Schedule(std::move(options), std::move(initial_model), std::move(aggregation), clock,
               std::move(run_id)) {
  if (auto ok = supports(options_, *aggregation_); !ok) throw Failure(ok.error());
  if (options_.versions == 0) throw Failure(Errc::invalid_config, "an async schedule needs versions > 0");
}

std::string AsyncSchedule::describe() const {
  const std::string concurrency =
      options_.max_concurrency == 0 ? "all" : std::to_string(options_.max_concurrency);
  const std::string max_stale =
      options_.max_staleness == 0 ? "" : fmt::format(", max-staleness {}", options_.max_staleness);
  if (options_.kind == ScheduleKind::async) {
    return fmt::format("async (FedAsync: alpha {}, staleness {}, concurrency {}{})", options_.alpha,
                       options_.staleness.describe(), concurrency, max_stale);
  }
  return fmt::format("buffered (FedBuff: K {}, buffer-learning-rate {}, {}concurrency {}{})",
                     options_.buffer_size, options_.server_learning_rate,
                     options_.staleness_weighted ? "staleness " + options_.staleness.describe() + ", " : "",
                     concurrency, max_stale);
}

void AsyncSchedule::Idle::insert(const std::string& peer) {
  if (position_.emplace(peer, peers_.size()).second) peers_.push_back(peer);
}

void AsyncSchedule::Idle::erase(const std::string& peer) {
  auto it = position_.find(peer);
  if (it == position_.end()) return;
  const std::size_t at = it->second;
  position_.erase(it);
  if (at + 1 != peers_.size()) {
    peers_[at] = std::move(peers_.back());
    position_[peers_[at]] = at;
  }
  peers_.pop_back();
}

void AsyncSchedule::start(std::vector<Send>& out) {
  for (const auto& peer : registry_.clients()) {
    if (!tasks_.contains(peer)) idle_.insert(peer);
  }
  hand_out(out);
}

void AsyncSchedule::on_client_ready(const std::string& peer, std::vector<Send>& out) {
  if (!tasks_.contains(peer) && registry_.live(peer)) idle_.insert(peer);
  hand_out(out);
}

void AsyncSchedule::on_client_restarted(const std::string& peer, std::vector<Send>& out) {
  if (auto held = tasks_.find(peer); held != tasks_.end()) {
    // Its process restarted: the task died with the old one. Waiting for its deadline would
    // only keep a slot idle.
    logger("aggregator")->info("{} registered again: its task {} is lost", peer, held->second.seq);
    emit(TaskLost{peer, client_id_of(peer), held->second.seq});
    tasks_.erase(held);
  }
  on_client_ready(peer, out);
}

void AsyncSchedule::task_over(const std::string& peer) {
  tasks_.erase(peer);
  if (registry_.live(peer)) idle_.insert(peer);
}

void AsyncSchedule::hand_out(std::vector<Send>& out) {
  if (phase_ != Phase::running) return;
  const std::size_t cap =
      options_.max_concurrency == 0 ? registry_.live_clients() : options_.max_concurrency;
  if (tasks_.size() >= cap || idle_.peers().empty()) return;
  for (const auto& peer : selection_->pick(idle_.peers(), cap - tasks_.size(), rng_)) {
    if (!registry_.live(peer) || tasks_.contains(peer)) continue;  // a policy's stray pick
    idle_.erase(peer);
    const auto seq = next_seq_++;
    tasks_[peer] = Held{seq, version_, clock_.now()};
    out.push_back(task_for(peer, seq, options_.kind == ScheduleKind::buffered));
  }
}

void AsyncSchedule::on_client_left(const std::string& peer, std::vector<Send>& out) {
  tasks_.erase(peer);
  idle_.erase(peer);
  hand_out(out);
}

void AsyncSchedule::tick_running(std::vector<Send>& out) {
  const auto now = clock_.now();
  std::vector<std::string> lost;
  for (auto it = tasks_.begin(); it != tasks_.end();) {
    if (now - it->second.sent_at >= options_.task_deadline) {
      logger("aggregator")->warn("{} sent no update for task {} within {} ms (aggregator.task-deadline); "
                                 "its slot goes to another client",
                                 it->first, it->second.seq, options_.task_deadline.count());
      emit(TaskLost{it->first, client_id_of(it->first), it->second.seq});
      lost.push_back(it->first);
      it = tasks_.erase(it);
      ++lost_in_a_row_;
    } else {
      ++it;
    }
  }
  // Counted against the clients there were, before those that lost their tasks are set aside.
  const std::uint64_t cap = options_.max_concurrency == 0 ? registry_.live_clients()
                                                          : options_.max_concurrency;
  const std::uint64_t give_up = std::max<std::uint64_t>(10, 3 * cap);
  if (lost_in_a_row_ >= give_up) {
    failure_ = fmt::format("{} tasks in a row brought no update by aggregator.task-deadline ({} ms); "
                           "are the clients training, and is the deadline long enough for them?",
                           lost_in_a_row_, options_.task_deadline.count());
    finish(out, failure_);
    return;
  }
  if (auto why = stop_reason()) {
    end_run(out, *why);
    return;
  }
  // A client whose task was lost may be gone (killed, off the network) and would lose every
  // task it is given: it gets no more until it is heard from (a live one sends heartbeats
  // between tasks, or its late update). Setting it aside hands its slot to another client
  // (on_client_left; a peer holding a task is always live, so each one frees its slot there).
  for (const auto& peer : lost) set_aside(peer, "lost its task", out);
}

Expected<TensorList> AsyncSchedule::rebase(const TensorList& delta) const {
  TensorList out;
  out.reserve(delta.size());
  at::NoGradGuard no_grad;
  for (const auto& d : delta) {
    auto it = std::find_if(model_.begin(), model_.end(),
                           [&](const NamedTensor& g) { return g.name == d.name; });
    if (it == model_.end()) {
      return Error{Errc::rejected, "delta for '" + d.name + "', which is not a tensor of the model"};
    }
    if (!it->tensor.sizes().equals(d.tensor.sizes())) {
      return Error{Errc::rejected, "delta for '" + d.name + "' has shape " +
                                       shape_string(d.tensor.sizes()) + ", the model's is " +
                                       shape_string(it->tensor.sizes())};
    }
    if (!at::isFloatingType(d.tensor.scalar_type())) {
      out.push_back({d.name, d.tensor});  // counters: the client's value
      continue;
    }
    out.push_back({d.name, it->tensor.add(d.tensor.to(it->tensor.device(), it->tensor.scalar_type()))});
  }
  return out;
}

void AsyncSchedule::step(double factor, std::vector<Send>& out) {
  const Label what{"model version", version_ + 1};
  (void)contain_version(version_ + 1, what, [&] { make_version(what, factor, out); });
}

void AsyncSchedule::make_version(Label what, double factor, std::vector<Send>& out) {
  auto next = finalize_aggregation(what);
  if (!next) {
    emit(VersionFailed{version_ + 1, "the aggregation method failed"});
    return;
  }
  if (factor != 1.0) {
    at::NoGradGuard no_grad;
    for (auto& t : *next) {
      auto it = std::find_if(model_.begin(), model_.end(),
                             [&](const NamedTensor& g) { return g.name == t.name; });
      if (it == model_.end() || !at::isFloatingType(t.tensor.scalar_type())) continue;
      if (t.tensor.is_same(it->tensor)) continue;  // the method left it (a frozen base weight)
      // w + f·(w_method − w), in the model's dtype.
      t.tensor = at::lerp(it->tensor, t.tensor.to(it->tensor.scalar_type()), factor);
    }
    aggregation_->set_global(*next);
  }
  const bool last = version_ + 1 >= options_.versions;
  produce_version(std::move(*next), version_ + 1, last, out);
  apply_pending_reload();  // between updates: nothing is folded in now
  version_point();
}

void AsyncSchedule::save_position(ScheduleSnapshot& snapshot) const {
  if (aggregation_->accepted() != 0) {
    throw Failure(Errc::internal, "a checkpoint with " + std::to_string(aggregation_->accepted()) +
                                      " update(s) folded in");
  }
  snapshot.step = version_;
  snapshot.next_task = next_seq_;
}

void AsyncSchedule::replay(const JournalEntry& entry) {
  std::vector<Send> out;  // nobody is connected while resuming
  apply(entry.accepted, entry.tensors, out);
  next_seq_ = std::max(next_seq_, entry.accepted.round + 1);
}

void AsyncSchedule::apply(UpdateAccepted accepted, const TensorList& tensors, std::vector<Send>& out) {
  const WeightedUpdate wu{&tensors, accepted.weight, accepted.staleness, accepted.client_id};
  const Label what{"task", accepted.round};
  lost_in_a_row_ = 0;
  emit(std::move(accepted));
  // An update the method fails to fold is counted as rejected; the model stays as it was.
  const bool folded = fold({&wu, 1}, what) == 0;
  if (folded && options_.kind != ScheduleKind::buffered) {
    step(options_.alpha * options_.staleness(wu.staleness), out);
  } else if (folded && aggregation_->accepted() >= options_.buffer_size) {
    step(options_.server_learning_rate, out);
  }
}

std::vector<Send> AsyncSchedule::handle_update(const std::string& peer, const Update& update) {
  std::vector<Send> out;
  heard(peer, out);  // a client set aside (e.g. its task was lost) is back, and idle
  if (phase_ != Phase::running) {
    reject(out, peer, update, RejectReason::late, "the run is no longer taking updates");
    return out;
  }
  auto held = tasks_.find(peer);
  if (held == tasks_.end() || held->second.seq != update.round) {
    if (update.round > 0 && update.round < next_seq_) {
      reject(out, peer, update, RejectReason::late,
             "task " + std::to_string(update.round) + " was given up on (aggregator.task-deadline)");
    } else {
      reject(out, peer, update, RejectReason::not_sampled,
             "holds no task " + std::to_string(update.round));
    }
    return out;
  }
  const auto task = held->second;
  // Whatever happens to this update, the client's task is over: it gets new work below.
  task_over(peer);
  const bool buffered = options_.kind == ScheduleKind::buffered;
  if (update.base_model_version != task.base_version) {
    reject(out, peer, update, RejectReason::wrong_version,
           "update is based on model version " + std::to_string(update.base_model_version) +
               ", its task carried version " + std::to_string(task.base_version));
    after_update(out);
    return out;
  }
  if (update.is_delta != buffered) {
    reject(out, peer, update, RejectReason::invalid,
           buffered ? "the buffered schedule takes deltas (the task asked for one), got weights"
                    : "the async schedule takes weights, got a delta");
    after_update(out);
    return out;
  }
  const std::uint64_t tau = version_ - task.base_version;
  if (options_.max_staleness > 0 && tau > options_.max_staleness) {
    reject(out, peer, update, RejectReason::stale,
           fmt::format("based on version {}, {} versions old (aggregator.max-staleness {})",
                       task.base_version, tau, options_.max_staleness));
    after_update(out);
    return out;
  }
  const auto client_id = client_id_of(peer);
  const auto claimed = weight_of(update);
  double weight = claimed.value;
  if (buffered && options_.staleness_weighted) weight *= options_.staleness(tau);
  TensorList rebased;
  const TensorList* tensors = &update.tensors;
  if (buffered) {
    auto r = rebase(update.tensors);
    if (!r) {
      reject(out, peer, update, RejectReason::invalid, r.error().message);
      after_update(out);
      return out;
    }
    rebased = std::move(r).value();
    tensors = &rebased;
  }
  if (auto ok = aggregation_->check(WeightedUpdate{tensors, weight, tau, client_id}); !ok) {
    reject(out, peer, update, RejectReason::invalid, ok.error().message);
    after_update(out);
    return out;
  }
  TensorList clipped;
  const auto valid = validate(out, peer, update, *tensors, clipped);
  if (!valid) {
    after_update(out);
    return out;
  }
  UpdateAccepted accepted{peer, client_id, update.round, update.base_model_version, tau, weight,
                          total_bytes(update.tensors), metric(update.metrics, "loss"),
                          metric(update.metrics, "accuracy"), claimed.capped, valid->clipped};
  journal(accepted, *valid->tensors);  // durable before it is folded
  apply(std::move(accepted), *valid->tensors, out);
  after_update(out);
  return out;
}

void AsyncSchedule::after_update(std::vector<Send>& out) {
  if (phase_ != Phase::running) return;
  if (version_ >= options_.versions) {
    end_run(out, "all versions done");
  } else if (auto why = stop_reason()) {
    end_run(out, *why);
  } else {
    hand_out(out);
  }
}

}  // namespace flotilla

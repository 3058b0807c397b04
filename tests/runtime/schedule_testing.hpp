#pragma once
/// Helpers for the schedule tests: what a schedule sent, by payload kind.
#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/server/async_schedule.hpp"
#include "runtime/server/schedule.hpp"
#include "runtime/server/sync_rounds.hpp"

#include <functional>
#include <map>

#include <stdexcept>

#include <string>
#include <utility>
#include <vector>

namespace flotilla::testing {

/// The payloads of kind T among `out`, with the peer each goes to.
template <class T>
std::vector<std::pair<std::string, T>> sent(const std::vector<Send>& out) {
  std::vector<std::pair<std::string, T>> r;
  for (const auto& s : out) {
    if (auto* p = std::get_if<T>(&s.payload)) r.emplace_back(s.peer, *p);
  }
  return r;
}

/// FedAvg that breaks as a buggy plugin would: every `fail_fold_every`-th fold call returns an
/// error (0 = never), and the first `throwing_finalizes` finalize calls throw a plain
/// std::runtime_error (as LibTorch's c10::Error is), not a Failure.
class BrokenAggregation final : public Aggregation {
 public:
  BrokenAggregation(const TensorList& global, int fail_fold_every, int throwing_finalizes = 0)
      : inner_(global), fail_fold_every_(fail_fold_every), throwing_finalizes_(throwing_finalizes) {}
  Expected<void> check(const WeightedUpdate& u) const override { return inner_.check(u); }
  Expected<void> accept(const WeightedUpdate& u) override {
    if (fold_fails()) return Error{Errc::internal, "broken fold"};
    return inner_.accept(u);
  }
  Expected<void> accept_batch(std::span<const WeightedUpdate> us) override {
    if (fold_fails()) return Error{Errc::internal, "broken fold"};
    return inner_.accept_batch(us);
  }
  std::size_t accepted() const override { return inner_.accepted(); }
  TensorList finalize() override {
    if (throwing_finalizes_ > 0) {
      --throwing_finalizes_;
      throw std::runtime_error("device copy failed (simulated)");
    }
    return inner_.finalize();
  }
  void discard() override { inner_.discard(); }
  std::string describe() const override { return "broken fedavg"; }

 private:
  bool fold_fails() { return fail_fold_every_ > 0 && ++folds_ % fail_fold_every_ == 0; }
  FedAvg inner_;
  int fail_fold_every_;
  int throwing_finalizes_;
  int folds_ = 0;
};

/// Drives a schedule with clients "client-0".."client-N-1", keeping the tasks each holds.
struct Fleet {
  /// `prepare` runs before the clients register (e.g. resumes the schedule from a checkpoint).
  Fleet(ScheduleOptions o, TensorList initial, int clients,
        std::unique_ptr<Aggregation> method = nullptr,
        const std::function<void(Schedule&)>& prepare = {}) {
    if (!method) method = std::make_unique<FedAvg>(initial);
    if (o.kind == ScheduleKind::sync) {
      schedule = std::make_unique<SyncRounds>(o, initial, std::move(method), clock, "run");
    } else {
      schedule = std::make_unique<AsyncSchedule>(o, initial, std::move(method), clock, "run");
    }
    if (prepare) prepare(*schedule);
    for (int i = 0; i < clients; ++i) {
      take(schedule->on_hello(peer(i), Hello{Role::client, std::uint32_t(i), {}, 100}));
    }
  }
  static std::string peer(int i) { return "client-" + std::to_string(i); }
  void take(const std::vector<Send>& out) {
    for (auto& [p, t] : sent<Task>(out)) tasks[p] = t;
    for (auto& [p, e] : sent<ErrorReply>(out)) errors.push_back(e.message);
  }
  /// `peer` answers its task with `tensors` (weights, or a delta when the task asked for one).
  /// `peer` is taken by value: callers pass the key of `tasks`, which this erases.
  void answer(const std::string p, TensorList tensors, std::uint64_t examples = 100) {
    const Task t = tasks.at(p);
    tasks.erase(p);
    Update u;
    u.round = t.round;
    u.base_model_version = t.model_version;
    u.num_examples = examples;
    u.is_delta = t.send_delta;
    u.tensors = std::move(tensors);
    take(schedule->on_update(p, u));
  }
  ManualClock clock;
  std::unique_ptr<Schedule> schedule;
  std::map<std::string, Task> tasks;
  std::vector<std::string> errors;
};

}  // namespace flotilla::testing

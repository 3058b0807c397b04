#pragma once
/// Helpers for the schedule tests: what a schedule sent, by payload kind.
#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/server/schedule.hpp"

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

}  // namespace flotilla::testing

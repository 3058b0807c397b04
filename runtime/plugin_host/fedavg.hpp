#pragma once
/// Weighted FedAvg as one running sum: each update is folded into a single accumulator the
/// moment it arrives, so memory does not grow with the number of clients (one accumulator,
/// about one model copy, however many updates a round has).
#include "runtime/plugin_host/aggregation.hpp"

#include <vector>

namespace flotilla {

class FedAvg final : public Aggregation {
 public:
  /// `global` fixes the names, order, shapes and dtypes updates must have.
  explicit FedAvg(const TensorList& global);

  [[nodiscard]] Expected<void> check(const WeightedUpdate& update) const override;
  [[nodiscard]] Expected<void> accept(const WeightedUpdate& update) override;
  [[nodiscard]] Expected<void> accept_batch(std::span<const WeightedUpdate> updates) override;
  [[nodiscard]] std::size_t accepted() const override { return accepted_; }
  [[nodiscard]] TensorList finalize() override;
  void discard() override;
  [[nodiscard]] std::string describe() const override { return "fedavg (built in)"; }
  /// Every update carries the whole model: no LoRA (clients with adapters send only those).
  [[nodiscard]] AggregationTraits traits() const override {
    AggregationTraits t;
    t.full_model = true;
    return t;
  }

  /// Total weight accepted since the last finalize.
  [[nodiscard]] double total_weight() const { return total_weight_; }

 private:
  void ensure_accumulators();

  /// Names, shapes and dtypes updates must have (meta tensors: no memory).
  TensorList reference_;
  /// float32 sums (float64 for float64 tensors) of weight × tensor; integer tensors instead
  /// keep the latest accepted value (counters, indices: averaging them means nothing).
  std::vector<at::Tensor> sums_;
  std::size_t accepted_ = 0;
  double total_weight_ = 0;
};

}  // namespace flotilla

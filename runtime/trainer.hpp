#pragma once
/// Local training and evaluation of a Model on a Dataset.
#include "runtime/data.hpp"
#include "runtime/message.hpp"
#include "runtime/model.hpp"

#include <cstdint>

namespace flotilla {

struct TrainStats {
  std::uint64_t num_examples = 0;  ///< examples in the client's training set
  std::uint64_t steps = 0;
  double loss = 0;      ///< mean training loss over the steps
  double accuracy = 0;  ///< training accuracy over the steps
  double seconds = 0;
};

/// Trains `model` in place with SGD (learning rate, momentum, weight decay from `config`) for
/// config.local_steps mini-batches (or config.local_epochs epochs when local_steps is 0),
/// shuffling with config.seed. Deterministic for a given seed on the CPU.
[[nodiscard]] TrainStats train_local(Model& model, const Dataset& data,
                                     const TrainingConfig& config);

struct EvalStats {
  std::uint64_t num_examples = 0;
  double loss = 0;
  double accuracy = 0;
  double seconds = 0;
};

/// Mean cross-entropy loss and accuracy of `model` on `data`, in batches, without gradients.
[[nodiscard]] EvalStats evaluate(Model& model, const Dataset& data, std::int64_t batch_size = 1000);

}  // namespace flotilla

#pragma once
/// Local training and evaluation of a Model on a Dataset.
#include "runtime/ml/data.hpp"
#include "runtime/protocol/message.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/plugin_host/plugin_optimizer.hpp"

#include <cstdint>
#include <memory>

namespace flotilla {

struct TrainStats {
  std::uint64_t num_examples = 0;  ///< examples in the client's training set
  std::uint64_t steps = 0;
  std::uint64_t examples_seen = 0;  ///< examples the steps trained on (steps x batch size)
  std::uint64_t optimizer_state_bytes = 0;  ///< the optimizer's state after the last step
  double loss = 0;      ///< mean training loss over the steps (per example, or per token)
  double accuracy = 0;  ///< training accuracy over the steps (of examples, or of next tokens)
  double seconds = 0;
};

/// One batch's loss as the model's objective defines it (ModelSpec::objective): cross-entropy of
/// logits [N, classes] against labels [N], or of a language model's logits [N, T, vocab] at
/// positions 0..T-2 against labels 1..T-1, skipping kIgnoreLabel.
struct BatchScore {
  at::Tensor loss;      ///< the mean over what is scored (0 when nothing is), with its graph
  at::Tensor loss_sum;  ///< the sum
  at::Tensor correct;   ///< argmax hits among what is scored (int64)
  at::Tensor counted;   ///< examples or tokens scored (int64)
};
[[nodiscard]] BatchScore score_batch(const at::Tensor& logits, const at::Tensor& labels, Objective objective);

/// The parameters an optimizer steps: `model`'s parameters that require gradients, by name
/// (frozen ones, e.g. LoRA's base weights, are left out).
[[nodiscard]] TensorList trainable_parameters(Model& model);

/// The options optimizer plugin `plugin` is created with for a task: `options` ([training.options])
/// plus `config`'s learning-rate, momentum and weight-decay as the plugin's options of those names,
/// where it declares them. Errc::invalid_config for a key of `options` that is one of those three
/// (set in [training]), and for a momentum or weight decay != 0 the plugin has no option for.
[[nodiscard]] Expected<PluginOptions> optimizer_options(const PluginInfo& plugin,
                                                        const PluginOptions& options,
                                                        const TrainingConfig& config);

/// A fresh optimizer (new state: each task restarts local optimization) from `plugin` over
/// `model`'s trainable parameters, with optimizer_options(); `where` names [training.options]
/// in errors (e.g. "run.toml: training.options").
[[nodiscard]] Expected<std::unique_ptr<PluginOptimizer>> make_optimizer(
    std::shared_ptr<PluginLibrary> plugin, const PluginOptions& options,
    const TrainingConfig& config, Model& model, const std::string& where = "training.options");

/// Trains `model` in place with `optimizer` (over `model`'s trainable parameters, e.g. from
/// make_optimizer) for config.local_steps mini-batches (or config.local_epochs epochs when
/// local_steps is 0), shuffling with config.seed. Deterministic for a given seed on the CPU.
[[nodiscard]] TrainStats train_local(Model& model, const Dataset& data, const TrainingConfig& config,
                                     PluginOptimizer& optimizer);

struct EvalStats {
  std::uint64_t num_examples = 0;
  double loss = 0;
  double accuracy = 0;
  double seconds = 0;
};

/// Mean cross-entropy loss and accuracy of `model` on `data`, in batches, without gradients.
[[nodiscard]] EvalStats evaluate(Model& model, const Dataset& data, std::int64_t batch_size = 1000);

}  // namespace flotilla

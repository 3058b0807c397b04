#pragma once
/// What a study needs around its federated runs: a base model pretrained centrally, and the
/// text metric of a final model (ROUGE-L of greedy answers).
#include "runtime/base/error.hpp"
#include "runtime/base/tensor.hpp"
#include "runtime/experiment/experiment.hpp"
#include "runtime/setup/config.hpp"

#include <filesystem>
#include <functional>

namespace flotilla {

struct PretrainReport {
  std::int64_t examples = 0;          ///< examples (or records) trained on
  double loss_before = 0, loss_after = 0;  ///< on what it trains on, per example (or token)
  double accuracy_after = 0;
  double seconds = 0;
  bool reused = false;                ///< `out` already held this pretraining's result
  std::string fingerprint;            ///< what made it (model, seed, data files, settings)
};

/// Trains `base`'s model (without LoRA, every parameter; from model.checkpoint when set) centrally from run.seed for
/// spec.steps mini-batches on the training data (images: only spec.classes; text: spec.data's
/// records when set), and writes it to `out` (safetensors, atomically; its metadata records
/// what produced it, so a later call with the same base model, data and spec reuses the file).
/// `progress(step, steps, loss)` is called every few steps.
[[nodiscard]] Expected<PretrainReport> pretrain_base(
    const Config& base, const PretrainSpec& spec, const std::filesystem::path& out,
    const std::function<void(std::int64_t, std::int64_t, double)>& progress = {});

/// ROUGE-L F1 (mean) of `model`'s greedy answers to the first `samples` held-out records of a
/// text run `config` (the evaluator's records), at most `max_tokens` each. `model` is the global
/// model's tensors (loaded by name over the config's initial model; adapters are merged).
[[nodiscard]] Expected<double> rouge_of_model(const Config& config, const TensorList& model, std::int64_t samples,
                                              std::int64_t max_tokens);

}  // namespace flotilla

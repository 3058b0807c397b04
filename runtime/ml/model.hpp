#pragma once
/// Models built with LibTorch, behind a small interface so torch/torch.h stays out of headers.
#include "runtime/base/error.hpp"
#include "runtime/base/tensor.hpp"

#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace flotilla {

/// Low-rank adapters (LoRA, Hu et al. 2021) on some of the model's linear layers: each target
/// computes y = W x + b + (alpha/rank)·B(A(dropout(x))) with A: rank×in (kaiming-uniform like
/// PEFT, from a seed derived from the model's seed and the layer's name, so every model built
/// with the same seed has the same A) and B: out×rank (zeros). With rank > 0 every other
/// parameter is frozen; parameters are "<layer>.lora_A.weight" and "<layer>.lora_B.weight".
struct LoraSpec {
  std::int64_t rank = 0;  ///< 0 = no adapters: the full weights are trained
  double alpha = 16;      ///< the adapter's output is scaled by alpha/rank
  double dropout = 0;     ///< on the adapter's input, while training
  std::vector<std::string> targets = {"fc1", "fc2"};  ///< linear layers adapted, by name
  bool freeze_a = false;  ///< FFA-LoRA: A stays at its seeded init; only B is trained

  [[nodiscard]] bool enabled() const { return rank > 0; }
  [[nodiscard]] double scale() const { return rank > 0 ? alpha / static_cast<double>(rank) : 0; }
};

struct ModelSpec {
  std::string name = "cnn";  ///< "mlp" or "cnn"
  std::int64_t hidden = 128; ///< width of the hidden layer(s)
  std::int64_t input_channels = 1;
  std::int64_t input_size = 28;  ///< square inputs
  std::int64_t num_classes = 10;
  LoraSpec lora;  ///< set from the config's [lora] (federation.hpp build_model), not [model]
};

/// Resolves "cpu", "cuda", "cuda:N" or "auto" (cuda:0 when a GPU is present, else cpu).
/// Asking for CUDA where none is available is Errc::invalid_config naming the device.
[[nodiscard]] Expected<c10::Device> resolve_device(const std::string& name);

class Model {
 public:
  /// Builds the model with weights initialised from `seed` (same seed, same weights).
  [[nodiscard]] static Expected<std::unique_ptr<Model>> create(const ModelSpec& spec,
                                                               c10::Device device,
                                                               std::uint64_t seed);
  virtual ~Model() = default;

  /// Parameters and buffers, by name, as contiguous CPU tensors (copies when on a GPU).
  [[nodiscard]] virtual TensorList state() const = 0;
  /// What training changes, as state() gives it: every tensor of state() without LoRA (what
  /// FedAvg sends), the adapters (A and B of each target) with LoRA, only the B matrices with
  /// freeze_a. What a client sends back.
  [[nodiscard]] virtual TensorList trainable_state() const = 0;
  /// Loads a state; names, count and shapes must match (Errc::rejected names the first
  /// mismatch), nothing is changed if they do not. A model with LoRA at rank r takes a state
  /// whose adapters have rank r.
  [[nodiscard]] virtual Expected<void> load_state(const TensorList& state) = 0;
  /// Loads some of the model's tensors, by name, in any order (what a task carries: the rest
  /// keep their value). Errc::rejected names the first that is not a tensor of the model or has
  /// another shape; nothing is changed then.
  [[nodiscard]] virtual Expected<void> load_tensors(const TensorList& tensors) = 0;
  /// Forward pass (inputs on any device; moved to the model's).
  [[nodiscard]] virtual at::Tensor forward(const at::Tensor& inputs) = 0;
  [[nodiscard]] virtual c10::Device device() const = 0;
  [[nodiscard]] virtual std::int64_t num_parameters() const = 0;
  [[nodiscard]] virtual const ModelSpec& spec() const = 0;
  /// Folds (alpha/r)·B·A into each adapted layer's W, and stops applying the adapters (for
  /// inference: one matmul per layer). No-op without LoRA or when already merged. While merged,
  /// state() holds the merged W: unmerge() before training or sending it.
  virtual void merge() = 0;
  /// Takes (alpha/r)·B·A back out of W (up to float rounding) and applies the adapters again.
  virtual void unmerge() = 0;
  [[nodiscard]] virtual bool merged() const = 0;
  /// The underlying torch::nn::Module (a torch::nn::Module*), for trainers.
  [[nodiscard]] virtual void* module() = 0;
};

}  // namespace flotilla

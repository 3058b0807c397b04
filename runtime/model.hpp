#pragma once
/// Models built with LibTorch, behind a small interface so torch/torch.h stays out of headers.
#include "runtime/error.hpp"
#include "runtime/tensor.hpp"

#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>

namespace flotilla {

struct ModelSpec {
  std::string name = "cnn";  ///< "mlp" or "cnn"
  std::int64_t hidden = 128; ///< width of the hidden layer(s)
  std::int64_t input_channels = 1;
  std::int64_t input_size = 28;  ///< square inputs
  std::int64_t num_classes = 10;
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
  /// Loads a state; names, count and shapes must match (Errc::rejected names the first
  /// mismatch), nothing is changed if they do not.
  [[nodiscard]] virtual Expected<void> load_state(const TensorList& state) = 0;
  /// Forward pass (inputs on any device; moved to the model's).
  [[nodiscard]] virtual at::Tensor forward(const at::Tensor& inputs) = 0;
  [[nodiscard]] virtual c10::Device device() const = 0;
  [[nodiscard]] virtual std::int64_t num_parameters() const = 0;
  /// The underlying torch::nn::Module (a torch::nn::Module*), for trainers.
  [[nodiscard]] virtual void* module() = 0;
};

}  // namespace flotilla

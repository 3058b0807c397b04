#pragma once
/// Named tensors: the unit every model, update and wire message is made of.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace flotilla {

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

/// An ordered list of named tensors (a model's state, an update). Order is significant: the
/// aggregator matches updates to the global model by position and checks names and shapes.
using TensorList = std::vector<NamedTensor>;

/// "[10, 784]": a shape as error messages print it.
[[nodiscard]] std::string shape_string(at::IntArrayRef shape);

/// Sum of the tensors' byte sizes.
[[nodiscard]] std::uint64_t total_bytes(const TensorList& tensors);

}  // namespace flotilla

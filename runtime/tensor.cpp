#include "runtime/tensor.hpp"

namespace flotilla {

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::uint64_t total_bytes(const TensorList& tensors) {
  std::uint64_t n = 0;
  for (const auto& t : tensors) n += t.tensor.nbytes();
  return n;
}

}  // namespace flotilla

#include "runtime/tensor.hpp"

namespace flotilla {

std::uint64_t total_bytes(const TensorList& tensors) {
  std::uint64_t n = 0;
  for (const auto& t : tensors) n += t.tensor.nbytes();
  return n;
}

}  // namespace flotilla

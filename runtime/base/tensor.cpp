#include "runtime/base/tensor.hpp"

namespace flotilla {

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

Expected<void> check_compatible(const TensorList& reference, const TensorList& candidate,
                                DtypeMatch dtypes) {
  if (reference.size() != candidate.size()) {
    return Error{Errc::rejected, "expected " + std::to_string(reference.size()) +
                                     " tensors, got " + std::to_string(candidate.size())};
  }
  for (std::size_t i = 0; i < reference.size(); ++i) {
    const auto& r = reference[i];
    const auto& c = candidate[i];
    const std::string where = "tensor " + std::to_string(i) + " '" + r.name + "'";
    if (r.name != c.name) return Error{Errc::rejected, where + ": got a tensor named '" + c.name + "'"};
    if (!c.tensor.defined()) return Error{Errc::rejected, where + ": undefined tensor"};
    if (r.tensor.sizes() != c.tensor.sizes()) {
      return Error{Errc::rejected, where + ": expected shape " + shape_string(r.tensor.sizes()) +
                                       ", got " + shape_string(c.tensor.sizes())};
    }
    const auto want = r.tensor.scalar_type();
    const auto got = c.tensor.scalar_type();
    const bool ok = dtypes == DtypeMatch::exact
                        ? want == got
                        : at::isFloatingType(want) == at::isFloatingType(got);
    if (!ok) {
      return Error{Errc::rejected, where + ": expected dtype " + std::string(c10::toString(want)) +
                                       ", got " + c10::toString(got)};
    }
  }
  return {};
}

std::uint64_t total_bytes(const TensorList& tensors) {
  std::uint64_t n = 0;
  for (const auto& t : tensors) n += t.tensor.nbytes();
  return n;
}

}  // namespace flotilla

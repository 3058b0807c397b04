#include "runtime/base/tensor.hpp"

#include <string_view>
#include <unordered_map>

namespace flotilla {

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

namespace {

/// `candidate`'s dtype against `reference`'s per `dtypes`: "" when it fits, else why not.
std::string dtype_problem(const at::Tensor& reference, const at::Tensor& candidate, DtypeMatch dtypes) {
  const auto want = reference.scalar_type();
  const auto got = candidate.scalar_type();
  const bool ok = dtypes == DtypeMatch::exact ? want == got
                                              : at::isFloatingType(want) == at::isFloatingType(got);
  if (ok) return "";
  return "expected dtype " + std::string(c10::toString(want)) + ", got " + c10::toString(got);
}

}  // namespace

Expected<std::vector<std::size_t>> match_subset(const TensorList& reference, const TensorList& candidate,
                                                DtypeMatch dtypes) {
  std::unordered_map<std::string_view, std::size_t> index;
  index.reserve(reference.size());
  for (std::size_t i = 0; i < reference.size(); ++i) index.emplace(reference[i].name, i);
  std::vector<std::size_t> at(candidate.size());
  std::vector<bool> seen(reference.size(), false);
  for (std::size_t k = 0; k < candidate.size(); ++k) {
    const auto& c = candidate[k];
    const auto it = index.find(c.name);
    if (it == index.end()) {
      return Error{Errc::rejected, "tensor '" + c.name + "' is not a tensor of this model"};
    }
    const auto& r = reference[it->second];
    const std::string where = "tensor '" + r.name + "'";
    if (seen[it->second]) return Error{Errc::rejected, where + " comes twice"};
    seen[it->second] = true;
    if (!c.tensor.defined()) return Error{Errc::rejected, where + ": undefined tensor"};
    if (r.tensor.sizes() != c.tensor.sizes()) {
      return Error{Errc::rejected, where + ": expected shape " + shape_string(r.tensor.sizes()) +
                                       ", got " + shape_string(c.tensor.sizes())};
    }
    if (auto why = dtype_problem(r.tensor, c.tensor, dtypes); !why.empty()) {
      return Error{Errc::rejected, where + ": " + why};
    }
    at[k] = it->second;
  }
  return at;
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
    if (auto why = dtype_problem(r.tensor, c.tensor, dtypes); !why.empty()) {
      return Error{Errc::rejected, where + ": " + why};
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

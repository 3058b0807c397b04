#pragma once
/// Named tensors: the unit every model, update and wire message is made of.
#include "runtime/base/error.hpp"

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

enum class DtypeMatch {
  exact,         ///< the same dtype (an aggregator folding updates)
  same_kind,     ///< floating for floating, integral for integral (loading into a model converts)
};

/// Checks `candidate` against `reference`: the same count, names in the same order, shapes and
/// dtypes (per `dtypes`). The first mismatch is Errc::rejected, named:
/// "tensor 3 'fc.weight': expected shape [10, 64], got [10, 32]".
[[nodiscard]] Expected<void> check_compatible(const TensorList& reference,
                                              const TensorList& candidate,
                                              DtypeMatch dtypes = DtypeMatch::exact);

/// Checks that every tensor of `candidate` (any order, each name once) is a tensor of
/// `reference` with its shape and a dtype per `dtypes`; returns, for each, its position in
/// `reference`. The first problem is Errc::rejected, named.
[[nodiscard]] Expected<std::vector<std::size_t>> match_subset(const TensorList& reference,
                                                              const TensorList& candidate,
                                                              DtypeMatch dtypes = DtypeMatch::exact);

/// Sum of the tensors' byte sizes.
[[nodiscard]] std::uint64_t total_bytes(const TensorList& tensors);

}  // namespace flotilla

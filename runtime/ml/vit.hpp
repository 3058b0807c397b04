#pragma once
/// The Vision Transformer image classifier (ModelSpec::name "vit"): its bounds and its network.
#include "runtime/base/error.hpp"
#include "runtime/ml/model.hpp"

namespace flotilla {

/// Errc::invalid_config unless every size is positive and bounded, the patch size divides the
/// image size, and the heads divide hidden_size.
[[nodiscard]] Expected<void> check_vit_spec(const ModelSpec& spec);

}  // namespace flotilla

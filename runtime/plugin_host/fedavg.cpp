#include "runtime/plugin_host/fedavg.hpp"

#include "flotilla/fold.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace flotilla {
namespace {

bool is_float(c10::ScalarType t) { return at::isFloatingType(t); }

}  // namespace

FedAvg::FedAvg(const TensorList& global) {
  reference_.reserve(global.size());
  for (const auto& t : global) {
    // Meta tensors: shapes and dtypes without memory, so the fold does not keep an old
    // global model alive.
    reference_.push_back(
        {t.name, at::empty(t.tensor.sizes(), t.tensor.options().device(at::kMeta))});
  }
}

Expected<void> FedAvg::check(const WeightedUpdate& update) const {
  if (update.tensors == nullptr) return Error{Errc::rejected, "update has no tensors"};
  if (!(update.weight > 0) || !std::isfinite(update.weight)) {
    return Error{Errc::rejected, "update weight must be > 0, got " + std::to_string(update.weight)};
  }
  return check_compatible(reference_, *update.tensors);
}

void FedAvg::ensure_accumulators() {
  if (!sums_.empty()) return;
  sums_.reserve(reference_.size());
  for (const auto& r : reference_) {
    const auto dtype = r.tensor.scalar_type();
    if (is_float(dtype)) {
      sums_.push_back(at::empty(r.tensor.sizes(),
                                at::TensorOptions().dtype(sdk::accumulator_type(dtype))));
    } else {
      sums_.emplace_back();  // set from the latest update
    }
  }
}

Expected<void> FedAvg::accept(const WeightedUpdate& update) {
  return accept_batch(std::span<const WeightedUpdate>(&update, 1));
}

Expected<void> FedAvg::accept_batch(std::span<const WeightedUpdate> updates) {
  for (const auto& u : updates) {
    if (auto ok = check(u); !ok) return ok;
  }
  if (updates.empty()) return {};
  const bool init = sums_.empty();  // the first fold of a version assigns (see fold_block_range)
  ensure_accumulators();
  at::NoGradGuard no_grad;
  std::vector<double> weights;
  for (const auto& u : updates) weights.push_back(u.weight);
  for (std::size_t i = 0; i < reference_.size(); ++i) {
    const auto dtype = reference_[i].tensor.scalar_type();
    std::vector<at::Tensor> srcs;
    srcs.reserve(updates.size());
    for (const auto& u : updates) srcs.push_back((*u.tensors)[i].tensor.to(at::kCPU).contiguous());
    auto& sum = sums_[i];
    if (!is_float(dtype)) {
      sum = srcs.back().clone();
      continue;
    }
    sdk::fold(sum, srcs, weights, init);
  }
  accepted_ += updates.size();
  for (double w : weights) total_weight_ += w;
  return {};
}

TensorList FedAvg::finalize() {
  TensorList out;
  out.reserve(reference_.size());
  if (accepted_ == 0) throw Failure(Errc::internal, "FedAvg::finalize with no accepted update");
  const double inv = 1.0 / total_weight_;
  for (std::size_t i = 0; i < reference_.size(); ++i) {
    const auto dtype = reference_[i].tensor.scalar_type();
    at::Tensor t = std::move(sums_[i]);
    if (is_float(dtype)) {
      t.mul_(inv);  // in place: the accumulator becomes the new model, no extra copy
      if (t.scalar_type() != dtype) t = t.to(dtype);
    }
    out.push_back({reference_[i].name, std::move(t)});
  }
  sums_.clear();
  accepted_ = 0;
  total_weight_ = 0;
  return out;
}

void FedAvg::discard() {
  sums_.clear();
  accepted_ = 0;
  total_weight_ = 0;
}

}  // namespace flotilla

#include "runtime/fedavg.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace flotilla {
namespace {

bool is_float(c10::ScalarType t) { return at::isFloatingType(t); }

/// Elements per block of the multi-update fold: the accumulator's block stays in L1 while
/// every waiting update streams through it once.
constexpr std::int64_t kBlock = 4096;

/// sum[i] += Σ_k w[k] · src[k][i], one pass over `sum` for all k. With `init` the sum is
/// uninitialised memory and the first update assigns instead of adding: no zero fill and no
/// read of the sum for the first update of a version.
template <class Acc, class Src>
void fold_block_range(Acc* sum, const std::vector<const Src*>& src, const std::vector<Acc>& w,
                      std::int64_t begin, std::int64_t end, bool init) {
  for (std::int64_t b = begin; b < end; b += kBlock) {
    const std::int64_t e = std::min(end, b + kBlock);
    for (std::size_t k = 0; k < src.size(); ++k) {
      const Src* __restrict s = src[k];
      Acc* __restrict a = sum;
      const Acc wk = w[k];
      if (init && k == 0) {
        for (std::int64_t i = b; i < e; ++i) a[i] = wk * static_cast<Acc>(s[i]);
      } else {
        for (std::int64_t i = b; i < e; ++i) a[i] += wk * static_cast<Acc>(s[i]);
      }
    }
  }
}

template <class Acc, class Src>
void fold(at::Tensor& sum, const std::vector<at::Tensor>& srcs, const std::vector<double>& weights,
          bool init) {
  std::vector<const Src*> ptrs;
  std::vector<Acc> w;
  for (std::size_t k = 0; k < srcs.size(); ++k) {
    ptrs.push_back(srcs[k].data_ptr<Src>());
    w.push_back(static_cast<Acc>(weights[k]));
  }
  Acc* acc = sum.data_ptr<Acc>();
  // Large tensors are split across LibTorch's intra-op threads (a no-op with 1 thread).
  at::parallel_for(0, sum.numel(), 1 << 16, [&](std::int64_t begin, std::int64_t end) {
    fold_block_range<Acc, Src>(acc, ptrs, w, begin, end, init);
  });
}

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
      const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
      sums_.push_back(at::empty(r.tensor.sizes(), at::TensorOptions().dtype(acc)));
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
    switch (dtype) {
      case at::kFloat: fold<float, float>(sum, srcs, weights, init); break;
      case at::kDouble: fold<double, double>(sum, srcs, weights, init); break;
      case at::kHalf: fold<float, at::Half>(sum, srcs, weights, init); break;
      case at::kBFloat16: fold<float, at::BFloat16>(sum, srcs, weights, init); break;
      default:  // other float types: a general (slower) path
        if (init) sum.zero_();
        for (std::size_t k = 0; k < srcs.size(); ++k) sum.add_(srcs[k].to(sum.scalar_type()), weights[k]);
    }
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

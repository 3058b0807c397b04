// The weighted fold, sum += Σ_k w_k · update_k, shared by the core's built-in FedAvg and the
// fedavg plugin (and free for any plugin to use): header-only, LibTorch only.
//
// On the CPU it is one blocked pass: a block of the accumulator stays in L1 while every waiting
// update streams through it once, split across LibTorch's intra-op threads. Elsewhere (a GPU) it
// is LibTorch's add_. Accumulators are float32 (float64 for float64 tensors; float16/bfloat16
// accumulate in float32).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace flotilla::sdk {

/// The dtype a sum of `t` is accumulated in.
inline at::ScalarType accumulator_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

namespace detail {

/// Elements per block of the multi-update fold.
constexpr std::int64_t kFoldBlock = 4096;

template <class Acc, class Src>
void fold_block_range(Acc* sum, const std::vector<const Src*>& src, const std::vector<Acc>& w,
                      std::int64_t begin, std::int64_t end, bool init) {
  for (std::int64_t b = begin; b < end; b += kFoldBlock) {
    const std::int64_t e = std::min(end, b + kFoldBlock);
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
void fold_cpu(at::Tensor& sum, const std::vector<at::Tensor>& srcs,
              const std::vector<double>& weights, bool init) {
  std::vector<const Src*> ptrs;
  std::vector<Acc> w;
  for (std::size_t k = 0; k < srcs.size(); ++k) {
    ptrs.push_back(srcs[k].data_ptr<Src>());
    w.push_back(static_cast<Acc>(weights[k]));
  }
  Acc* acc = sum.data_ptr<Acc>();
  at::parallel_for(0, sum.numel(), 1 << 16, [&](std::int64_t begin, std::int64_t end) {
    fold_block_range<Acc, Src>(acc, ptrs, w, begin, end, init);
  });
}

}  // namespace detail

/// sum (+)= Σ_k weights[k] · srcs[k]. `sum` is a contiguous accumulator of
/// accumulator_type(srcs' dtype) on the srcs' device; with `init` its contents are ignored and
/// the first source assigns (no zero fill, no read). Sources must be contiguous, of one
/// floating dtype and the sum's shape.
inline void fold(at::Tensor& sum, const std::vector<at::Tensor>& srcs,
                 const std::vector<double>& weights, bool init) {
  if (srcs.empty()) return;
  const auto dtype = srcs.front().scalar_type();
  if (sum.device().is_cpu()) {
    switch (dtype) {
      case at::kFloat: return detail::fold_cpu<float, float>(sum, srcs, weights, init);
      case at::kDouble: return detail::fold_cpu<double, double>(sum, srcs, weights, init);
      case at::kHalf: return detail::fold_cpu<float, at::Half>(sum, srcs, weights, init);
      case at::kBFloat16: return detail::fold_cpu<float, at::BFloat16>(sum, srcs, weights, init);
      default: break;
    }
  }
  // Other devices and dtypes: LibTorch's kernels.
  for (std::size_t k = 0; k < srcs.size(); ++k) {
    const auto src = srcs[k].to(sum.scalar_type());
    if (init && k == 0) {
      at::mul_out(sum, src, weights[k]);
    } else {
      sum.add_(src, weights[k]);
    }
  }
}

}  // namespace flotilla::sdk

// The weighted fold, sum += Σ_k w_k · update_k, shared by the core's built-in FedAvg and the
// aggregation plugins (and free for any plugin to use): header-only, LibTorch only. Also
// WeightedMean, the running example-weighted mean of a version's updates that the built-in
// plugins build on.
//
// On the CPU it is one blocked pass: a block of the accumulator stays in L1 while every waiting
// update streams through it once, split across LibTorch's intra-op threads. Elsewhere (a GPU) it
// is LibTorch's add_. Accumulators are float32 (float64 for float64 tensors; float16/bfloat16
// accumulate in float32).
#pragma once

#include "flotilla/plugin.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <string>
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

/// The running weighted mean of one version's updates, folded as they arrive (memory: one
/// accumulator per tensor, however many updates). Every update must carry the tensors the first
/// one carried, in the same order. Floating tensors accumulate weight · value (fold above) on the
/// host's device; integer tensors (counters, indices: averaging means nothing) keep the latest
/// update's value.
class WeightedMean {
 public:
  explicit WeightedMean(const Host& host) : host_(host) {}

  /// Rejected unless `update` carries the same tensors as this version's first (if any).
  void check_same(const NamedTensors& update) const {
    if (names_.empty()) return;
    bool same = names_.size() == update.size();
    for (std::size_t i = 0; same && i < update.size(); ++i) same = names_[i] == update[i].name;
    if (!same) throw Rejected("update carries other tensors than this version's first update");
  }

  void add(const NamedTensors& update, double weight) {
    const bool init = sums_.empty();
    if (init) {
      for (const auto& u : update) {
        names_.push_back(u.name);
        const auto dtype = u.tensor.scalar_type();
        if (!at::isFloatingType(dtype)) {
          sums_.emplace_back();
          lent_.emplace_back();
        } else if (host_.can_lend()) {
          // The host's memory: the mean is handed over at finalize without a copy.
          lent_.push_back(host_.lend(u.tensor.sizes(), accumulator_type(dtype)));
          sums_.push_back(lent_.back().tensor());
        } else {
          sums_.push_back(at::empty(u.tensor.sizes(), at::TensorOptions()
                                                          .dtype(accumulator_type(dtype))
                                                          .device(host_.device())));
          lent_.emplace_back();
        }
      }
    }
    for (std::size_t i = 0; i < update.size(); ++i) {
      const auto src = update[i].tensor.to(host_.device()).contiguous();
      if (!at::isFloatingType(src.scalar_type())) {
        sums_[i] = src.clone();  // owned: updates arrive as views valid only during the call
        continue;
      }
      fold(sums_[i], {src}, {weight}, init);
    }
    total_ += weight;
  }

  [[nodiscard]] bool empty() const { return sums_.empty(); }
  [[nodiscard]] const std::vector<std::string>& names() const { return names_; }

  /// The means, in the updates' order, computed in place the first time (the sums' memory
  /// becomes the means). Where the host lends memory (ABI 1.1) they are views of it, valid
  /// until emit() or clear(): clone what must outlive the version.
  std::vector<at::Tensor>& means() {
    if (!averaged_) {
      for (auto& s : sums_) {
        if (s.defined() && at::isFloatingType(s.scalar_type())) s.mul_(1.0 / total_);
      }
      averaged_ = true;
    }
    return sums_;
  }
  /// The mean of the tensor called `name` (see means()); nullptr if the updates lack it.
  const at::Tensor* mean(const std::string& name) {
    auto& m = means();
    for (std::size_t i = 0; i < names_.size(); ++i) {
      if (names_[i] == name) return &m[i];
    }
    return nullptr;
  }

  /// Emits every mean under its update name (the host's lent memory itself where it lent it:
  /// no copy), and clears.
  void emit(flotilla_output* out) {
    auto& m = means();
    for (std::size_t i = 0; i < m.size(); ++i) {
      if (lent_[i].held()) {
        m[i] = at::Tensor();
        lent_[i].emit(out, names_[i]);
      } else {
        host_.emit(out, names_[i], m[i]);
      }
    }
    clear();
  }

  void clear() {
    names_.clear();
    sums_.clear();
    lent_.clear();
    total_ = 0;
    averaged_ = false;
  }

 private:
  Host host_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> sums_;
  std::vector<Lent> lent_;  ///< per sum: the host's memory it lives in, where the host lends
  double total_ = 0;
  bool averaged_ = false;  ///< means() has divided the sums by total_
};

}  // namespace flotilla::sdk

// galore-adamw: AdamW with GaLore gradient low-rank projection (Zhao et al., "GaLore:
// Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024).
//
// For a 2-D parameter W (m x n) with min(m, n) > rank:
//  - at its steps 0, T, 2T, ... (T = update-interval) the projection P is recomputed from the
//    current gradient G's thin SVD: m >= n: P = the top-`rank` right singular vectors (n x r)
//    and R = G P (m x r); m < n: P = the top-`rank` left singular vectors (m x r) and
//    R = P^T G (r x n). Each column of P is signed so that its largest-magnitude entry is
//    positive (SVD signs are arbitrary and differ between libraries and devices; a fixed sign
//    keeps the moments meaningful across recomputations of a barely moving subspace).
//  - Adam's moments live in the projected space (the shape of R) and are kept when P is
//    recomputed (as in the paper's reference implementation).
//  - N = m_hat / (sqrt(v_hat) + eps) with torch's bias correction (as adamw); the update is
//    scale * (N P^T) or scale * (P N), projected back to W's shape:
//      W = W * (1 - lr * weight_decay);  W = W - lr * scale * back-projected N
//    The decoupled weight decay is applied first, to the weights before the step, exactly as in
//    torch::optim::AdamW and the adamw plugin (the paper's code decays after the step; the two
//    differ by lr^2 * weight_decay * update).
// Every other parameter (not 2-D, or min(m, n) <= rank, where a projection would save nothing)
// gets plain AdamW with full-size moments, identical to the adamw plugin.
//
// State: projected parameters hold 2 * r * max(m, n) moment entries plus the r * min(m, n)
// projection, instead of AdamW's 2 * m * n.
#include "adam.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

namespace {

using flotilla::sdk::Host;
using flotilla::sdk::Invalid;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;

using flotilla::optimizers::AdamMoments;
using flotilla::optimizers::AdamOptions;
using flotilla::sdk::bounded;

std::int64_t at_least_one(const Options& options, const char* key, std::int64_t fallback) {
  const auto v = options.integer(key, fallback);
  if (v < 1) throw Invalid("option '" + std::string(key) + "' is " + std::to_string(v) + ", expected >= 1");
  return v;
}

class GaloreAdamW final : public flotilla::sdk::Optimizer {
 public:
  GaloreAdamW(const Host& host, const Options& options, const NamedTensors& params)
      : host_(host),
        o_(options),
        rank_(at_least_one(options, "rank", 128)),
        interval_(at_least_one(options, "update-interval", 200)),
        scale_(bounded(options, "scale", 0.25, 0, INFINITY, true, true, "> 0")),
        randomized_(svd_kind(options)) {
    std::size_t projected = 0;
    for (const auto& p : params) {
      const auto& w = p.tensor;
      State s{p.name, {}, {}, false, false};
      if (w.dim() == 2 && std::min(w.size(0), w.size(1)) > rank_) {
        const auto m = w.size(0), n = w.size(1);
        s.projected = true;
        s.left = m < n;
        const auto opts = w.options();
        s.projection = at::zeros({s.left ? m : n, rank_}, opts);
        s.moments.exp_avg = at::zeros(
            s.left ? std::vector<std::int64_t>{rank_, n} : std::vector<std::int64_t>{m, rank_}, opts);
        s.moments.exp_avg_sq = at::zeros_like(s.moments.exp_avg);
        ++projected;
      } else {
        s.moments.exp_avg = at::zeros_like(w);
        s.moments.exp_avg_sq = at::zeros_like(w);
      }
      state_.push_back(std::move(s));
    }
    host_.log(FLOTILLA_LOG_DEBUG, "galore-adamw: " + std::to_string(projected) + " of " +
                                      std::to_string(params.size()) + " parameters projected at rank " +
                                      std::to_string(rank_));
  }

  void step(const NamedTensors& params, const NamedTensors& grads) override {
    if (params.size() != state_.size() || grads.size() != state_.size()) {
      throw Invalid("step: expected " + std::to_string(state_.size()) + " parameters and gradients");
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& g = grads[i].tensor;
      if (!g.defined()) continue;
      auto w = params[i].tensor;
      auto& s = state_[i];
      w.mul_(1 - o_.lr * o_.weight_decay);
      if (s.projected && s.moments.step % interval_ == 0) s.projection.copy_(project(g, s.left));
      const auto r = !s.projected ? g : s.left ? s.projection.t().mm(g) : g.mm(s.projection);
      const auto d = s.moments.advance(r, o_);
      if (!s.projected) {
        w.addcdiv_(s.moments.exp_avg, d.denom, -d.step_size);
        continue;
      }
      const auto n = s.moments.exp_avg / d.denom;
      w.add_(s.left ? s.projection.mm(n) : n.mm(s.projection.t()), -d.step_size * scale_);
    }
  }

  [[nodiscard]] std::uint64_t state_bytes() const override {
    std::uint64_t total = 0;
    for (const auto& s : state_) total += s.moments.bytes() + flotilla::sdk::bytes_of(s.projection);
    return total;
  }

  void save(flotilla_output* out) override {
    for (const auto& s : state_) {
      s.moments.save(host_, out, s.name);
      if (s.projected) host_.emit(out, s.name + "/projection", s.projection);
    }
  }

  void load(const NamedTensors& saved) override {
    auto next = state_;
    for (auto& s : next) {
      s.moments = s.moments.clone();
      if (s.projected) s.projection = s.projection.clone();
    }
    flotilla::optimizers::for_each_saved(saved, [&](const std::string& param, const std::string& field,
                                                    const flotilla::sdk::Named& t) {
      State* s = nullptr;
      for (auto& c : next) {
        if (c.name == param) s = &c;
      }
      if (s == nullptr) {
        throw Invalid("saved tensor '" + t.name + "' is not galore-adamw state of these parameters");
      }
      if (field == "projection" && s->projected) {
        flotilla::optimizers::load_into(s->projection, t);
      } else if (!s->moments.load(field, t)) {
        throw Invalid("saved tensor '" + t.name + "' is not galore-adamw state");
      }
    });
    state_ = std::move(next);
  }

 private:
  struct State {
    std::string name;
    AdamMoments moments;
    at::Tensor projection;
    bool projected;  ///< GaLore (else plain AdamW)
    bool left;       ///< P holds left singular vectors (m < n)
  };

  /// The top-rank singular vectors of `g` (right: n x r, or left when `left`: m x r), each
  /// signed so that its largest-magnitude entry is positive.
  [[nodiscard]] at::Tensor project(const at::Tensor& g, bool left) const {
    const auto a = g.scalar_type() == at::kDouble ? g : g.to(at::kFloat);
    at::Tensor u, sv, vh;
    if (randomized_) {
      // Randomized SVD (Halko, Martinsson & Tropp 2011): a basis Q of the range of a·Ω for a
      // Gaussian Ω with `rank` + 10 columns, sharpened by two power iterations, then the exact
      // SVD of the small Qᵀ·a. O(m·n·(r+10)) instead of the full SVD's O(m·n·min(m, n)); the
      // top-r subspace is exact up to the spectrum's tail beyond r + 10. Ω is drawn from a
      // fixed seed, so steps are reproducible.
      const auto l = std::min<std::int64_t>(rank_ + 10, std::min(a.size(0), a.size(1)));
      auto gen = at::detail::createCPUGenerator(0x6a10e);
      const auto omega =
          at::randn({a.size(1), l}, gen, at::TensorOptions().dtype(a.scalar_type())).to(a.device());
      auto q = std::get<0>(at::linalg_qr(a.mm(omega)));
      for (int i = 0; i < 2; ++i) {
        q = std::get<0>(at::linalg_qr(a.mm(std::get<0>(at::linalg_qr(a.t().mm(q))))));
      }
      std::tie(u, sv, vh) = at::linalg_svd(q.t().mm(a), /*full_matrices=*/false);
      u = q.mm(u);
    } else {
      std::tie(u, sv, vh) = at::linalg_svd(a, /*full_matrices=*/false);
    }
    auto p = left ? u.narrow(1, 0, rank_) : vh.narrow(0, 0, rank_).t();
    const auto peak = p.gather(0, p.abs().argmax(0, /*keepdim=*/true));
    const auto sign = at::where(peak < 0, at::full_like(peak, -1), at::full_like(peak, 1));
    return (p * sign).to(g.scalar_type());
  }

  static bool svd_kind(const Options& options) {
    const auto kind = options.text("svd", "exact");
    if (kind != "exact" && kind != "randomized") {
      throw Invalid("option 'svd' is \"" + kind + "\", expected \"exact\" or \"randomized\"");
    }
    return kind == "randomized";
  }

  Host host_;
  AdamOptions o_;
  std::int64_t rank_, interval_;
  double scale_;
  bool randomized_;  ///< randomized instead of exact SVD for the projection
  std::vector<State> state_;
};

const flotilla_option_spec kOptions[] = {
    {"learning-rate", "float", "0.001", "step size (>= 0)"},
    {"beta1", "float", "0.9", "decay of the first moment, in [0, 1)"},
    {"beta2", "float", "0.999", "decay of the second moment, in [0, 1)"},
    {"eps", "float", "1e-8", "added to the denominator (> 0)"},
    {"weight-decay", "float", "0.01", "decoupled weight decay: w -= learning-rate * weight-decay * w (>= 0)"},
    {"rank", "int", "128",
     "rank r of the gradient projection (>= 1); 2-D parameters with min(m, n) <= r get plain AdamW"},
    {"update-interval", "int", "200", "steps between recomputations of the projection (SVD) (>= 1)"},
    {"scale", "float", "0.25", "factor on the back-projected update (> 0)"},
    {"svd", "string", "exact",
     "how the projection is found: \"exact\" (full SVD) or \"randomized\" (rank+10 sketch, 2 power "
     "iterations: far cheaper on large weights, the same top-r subspace up to the tail)"},
};

}  // namespace

FLOTILLA_OPTIMIZER_PLUGIN(GaloreAdamW, "galore-adamw", "1.0.0",
                          "AdamW with GaLore gradient low-rank projection: Adam moments of 2-D "
                          "weights live in a rank-r subspace recomputed from the gradient's SVD",
                          kOptions)

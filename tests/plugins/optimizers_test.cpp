// The optimizer plugins (sgd, adamw, galore-adamw) against LibTorch's optimizers and against
// an independent projected-Adam reference computed here in float64.
#include "plugin_testing.hpp"

#include <gmock/gmock.h>
#include <torch/torch.h>

#include <cmath>

using namespace flotilla;
using namespace flotilla::testing;
using ::testing::HasSubstr;

namespace {

/// A random least-squares problem: y = x W^T + b, loss = mean((x W^T + b - y)^2).
struct Problem {
  at::Tensor x, y;
  explicit Problem(int seed) {
    at::manual_seed(seed);
    x = at::randn({32, 6});
    y = at::randn({32, 4});
  }
  [[nodiscard]] TensorList initial() const {
    at::manual_seed(99);
    return {{"fc.weight", at::randn({4, 6})}, {"fc.bias", at::randn({4})}};
  }
  /// Fresh leaf tensors requiring gradients, with `init`'s values.
  [[nodiscard]] static std::vector<at::Tensor> leaves(const TensorList& init) {
    std::vector<at::Tensor> out;
    for (const auto& t : init) out.push_back(t.tensor.clone().requires_grad_(true));
    return out;
  }
  /// Computes the loss's gradients into the leaves' .grad() (replacing older ones).
  void backward(const std::vector<at::Tensor>& p) const {
    for (auto t : p) t.mutable_grad() = at::Tensor();
    const auto loss = (at::matmul(x, p[0].t()) + p[1] - y).pow(2).mean();
    loss.backward();
  }
};

TensorList named(const TensorList& init, const std::vector<at::Tensor>& leaves) {
  TensorList out;
  for (std::size_t i = 0; i < init.size(); ++i) out.push_back({init[i].name, leaves[i]});
  return out;
}

void expect_close(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                  double rtol = 1e-5, double atol = 1e-6) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::allclose(a[i], b[i], rtol, atol))
        << "tensor " << i << ": max difference " << (a[i] - b[i]).abs().max().item<double>();
  }
}

/// Runs `steps` steps of plugin `name` and of the LibTorch optimizer `reference` (built over the
/// torch-side leaves) on the same problem, and compares the parameters after every step.
template <class MakeTorch>
void compare_with_torch(const std::string& name, const PluginOptions& options, MakeTorch make_torch,
                        int steps = 6) {
  const Problem problem(1);
  const auto init = problem.initial();
  auto ours = Problem::leaves(init);
  auto theirs = Problem::leaves(init);
  auto plugin = optimizer(name, named(init, ours), options);
  auto torch_opt = make_torch(theirs);
  for (int s = 0; s < steps; ++s) {
    problem.backward(ours);
    ASSERT_TRUE(plugin->step());
    problem.backward(theirs);
    torch_opt->step();
    expect_close(ours, theirs);
  }
  // The parameters moved (the comparison is not vacuous).
  EXPECT_FALSE(at::allclose(ours[0], init[0].tensor));
}

// ---- sgd ------------------------------------------------------------------------------------

TEST(SgdPlugin, EqualsTorchSgdWithMomentumAndWeightDecay) {
  compare_with_torch("sgd", {{"learning-rate", "0.05"}, {"momentum", "0.9"}, {"weight-decay", "0.01"}},
                     [](const std::vector<at::Tensor>& p) {
                       return std::make_unique<torch::optim::SGD>(
                           p, torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(0.01));
                     });
}

TEST(SgdPlugin, EqualsTorchSgdNesterovAndPlain) {
  compare_with_torch("sgd",
                     {{"learning-rate", "0.05"}, {"momentum", "0.8"}, {"weight-decay", "0.1"},
                      {"nesterov", "true"}},
                     [](const std::vector<at::Tensor>& p) {
                       return std::make_unique<torch::optim::SGD>(
                           p, torch::optim::SGDOptions(0.05).momentum(0.8).weight_decay(0.1).nesterov(true));
                     });
  compare_with_torch("sgd", {}, [](const std::vector<at::Tensor>& p) {
    return std::make_unique<torch::optim::SGD>(p, torch::optim::SGDOptions(0.01));
  });
}

TEST(SgdPlugin, StateIsTheMomentumBuffer) {
  const TensorList params = {{"w", at::zeros({10, 10})}, {"b", at::zeros({10})}};
  EXPECT_EQ(*optimizer("sgd", params)->state_bytes(), 0U);
  EXPECT_EQ(*optimizer("sgd", params, {{"momentum", "0.9"}})->state_bytes(), 110U * 4);
}

// ---- adamw ----------------------------------------------------------------------------------

TEST(AdamWPlugin, EqualsTorchAdamW) {
  compare_with_torch("adamw",
                     {{"learning-rate", "0.01"}, {"beta1", "0.8"}, {"beta2", "0.99"}, {"eps", "1e-6"},
                      {"weight-decay", "0.1"}},
                     [](const std::vector<at::Tensor>& p) {
                       return std::make_unique<torch::optim::AdamW>(
                           p, torch::optim::AdamWOptions(0.01).betas({0.8, 0.99}).eps(1e-6).weight_decay(0.1));
                     });
  compare_with_torch("adamw", {}, [](const std::vector<at::Tensor>& p) {
    return std::make_unique<torch::optim::AdamW>(p, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
  });
}

TEST(AdamWPlugin, StateIsTwoMoments) {
  const TensorList params = {{"w", at::zeros({10, 10})}, {"b", at::zeros({10})}};
  EXPECT_EQ(*optimizer("adamw", params)->state_bytes(), 2U * 110 * 4);
}

// ---- galore-adamw ---------------------------------------------------------------------------

/// Steps `opt` over `params` with explicit gradients; returns the parameters after each step.
std::vector<std::vector<at::Tensor>> run(PluginOptimizer& opt, const TensorList& params,
                                         const std::vector<TensorList>& grads) {
  std::vector<std::vector<at::Tensor>> out;
  for (const auto& g : grads) {
    auto ok = opt.step(g);
    if (!ok) throw Failure(ok.error());
    std::vector<at::Tensor> now;
    for (const auto& p : params) now.push_back(p.tensor.clone());
    out.push_back(now);
  }
  return out;
}

TensorList clone(const TensorList& list) {
  TensorList out;
  for (const auto& t : list) out.push_back({t.name, t.tensor.clone()});
  return out;
}

const PluginOptions kAdam = {{"learning-rate", "0.01"}, {"beta1", "0.8"}, {"beta2", "0.95"},
                             {"eps", "1e-8"}, {"weight-decay", "0.05"}};

PluginOptions with(PluginOptions base, const PluginOptions& more) {
  for (const auto& [k, v] : more) base[k] = v;
  return base;
}

/// A random orthogonal n x n matrix.
at::Tensor orthogonal(std::int64_t n) { return std::get<0>(at::linalg_qr(at::randn({n, n}, at::kDouble))); }

// "galore-adamw with rank equal to the full dimension matches adamw": true because a 2-D weight
// with min(m, n) <= rank is not projected at all and gets plain AdamW (a full-rank projection
// saves no memory: its moments alone are as large as AdamW's, plus the projection). Had it been
// projected, it would NOT match in general: with a full orthogonal P, Adam's elementwise
// operations (squares, square roots, division) do not commute with the rotation G -> G P; even
// the first step, sign(G P) P^T, differs from AdamW's sign(G). See the next test for when a
// projection does commute.
TEST(GaloreAdamWPlugin, AtFullRankIsAdamW) {
  at::manual_seed(3);
  const TensorList init = {{"a.weight", at::randn({12, 5})}, {"b.weight", at::randn({4, 9})},
                           {"b.bias", at::randn({4})}};
  std::vector<TensorList> grads;
  for (int s = 0; s < 5; ++s) {
    grads.push_back({{"a.weight", at::randn({12, 5})}, {"b.weight", at::randn({4, 9})}, {"b.bias", at::randn({4})}});
  }
  auto p1 = clone(init);
  auto p2 = clone(init);
  // rank 5 = min(12, 5) for a.weight; b.weight (min 4) is below the rank too.
  auto galore = optimizer("galore-adamw", p1, with(kAdam, {{"rank", "5"}, {"scale", "1"}, {"update-interval", "1"}}));
  auto adamw = optimizer("adamw", p2, kAdam);
  const auto a = run(*galore, p1, grads);
  const auto b = run(*adamw, p2, grads);
  for (std::size_t s = 0; s < a.size(); ++s) expect_close(a[s], b[s], 0, 0);
  EXPECT_EQ(*galore->state_bytes(), *adamw->state_bytes());
}

// When does the projected path equal AdamW exactly? Write R = G P. If P's columns are signed
// coordinate vectors (P = Pi S: r columns of a permutation, with signs S), then R just picks r
// columns of G and flips some signs. Adam's moments are linear in R (they flip with S and move
// with Pi), v is elementwise in R^2 (S cancels), so N(R) = N(G) Pi S and N P^T = N(G) Pi Pi^T:
// AdamW's update restricted to those r columns. If moreover every gradient is zero outside those
// columns, AdamW's update there is 0 / (0 + eps) = 0 too, and the two optimizers agree at every
// step (decoupled weight decay treats all of W the same in both). The SVD gives such a P when the
// first gradient's nonzero columns are orthogonal with distinct norms. The same holds on the left
// (m < n) with rows. This exercises the projected code path (rank < min(m, n)) end to end.
TEST(GaloreAdamWPlugin, EqualsAdamWWhenGradientsLieInASignedCoordinateSubspace) {
  at::manual_seed(4);
  for (const bool left : {false, true}) {
    const std::int64_t m = left ? 6 : 16, n = left ? 16 : 6, r = 3;
    const std::vector<std::int64_t> support = {4, 1, 2};  // columns (rows when left) with gradient
    auto on_support = [&](const at::Tensor& values) {     // values: m x r (r x n when left)
      auto g = at::zeros({m, n}, at::kDouble);
      for (std::int64_t k = 0; k < r; ++k) {
        if (left) g.select(0, support[k]).copy_(values.select(0, k));
        else g.select(1, support[k]).copy_(values.select(1, k));
      }
      return g.to(at::kFloat);
    };
    // First gradient: orthogonal columns (rows) with norms 3, 2, 1: V's top 3 are +-e_support.
    const auto q = orthogonal(left ? n : m).narrow(1, 0, r) * at::tensor({3.0, 2.0, 1.0}, at::kDouble);
    std::vector<TensorList> grads = {{{"w", on_support(left ? q.t() : q)}}};
    for (int s = 1; s < 6; ++s) grads.push_back({{"w", on_support(at::randn(left ? std::vector<std::int64_t>{r, n} : std::vector<std::int64_t>{m, r}, at::kDouble))}});
    const TensorList init = {{"w", at::randn({m, n})}};
    auto p1 = clone(init);
    auto p2 = clone(init);
    auto galore = optimizer("galore-adamw", p1,
                            with(kAdam, {{"rank", std::to_string(r)}, {"scale", "1"}, {"update-interval", "1000"}}));
    auto adamw = optimizer("adamw", p2, kAdam);
    const auto a = run(*galore, p1, grads);
    const auto b = run(*adamw, p2, grads);
    for (std::size_t s = 0; s < a.size(); ++s) {
      SCOPED_TRACE("left " + std::to_string(left) + " step " + std::to_string(s));
      expect_close(a[s], b[s], 1e-5, 1e-6);
    }
    EXPECT_LT(*galore->state_bytes(), *adamw->state_bytes());
  }
}

/// Projected Adam as the paper describes it, in float64, written independently of the plugin.
struct GaloreReference {
  std::int64_t rank, interval;
  double lr, beta1, beta2, eps, wd, scale;
  at::Tensor w, p, m, v;
  std::int64_t t = 0;

  void step(const at::Tensor& grad) {
    const auto g = grad.to(at::kDouble);
    const bool left = w.size(0) < w.size(1);
    if (t % interval == 0) {
      auto [u, s, vh] = at::linalg_svd(g, false);
      p = left ? u.narrow(1, 0, rank) : vh.narrow(0, 0, rank).t();
      for (std::int64_t k = 0; k < rank; ++k) {  // sign convention: largest entry positive
        auto col = p.select(1, k);
        const auto i = col.abs().argmax().item<std::int64_t>();
        if (col[i].item<double>() < 0) col.neg_();
      }
      p = p.contiguous();
      if (!m.defined()) {
        m = at::zeros(left ? std::vector<std::int64_t>{rank, w.size(1)} : std::vector<std::int64_t>{w.size(0), rank}, at::kDouble);
        v = at::zeros_like(m);
      }
    }
    const auto r = left ? p.t().mm(g) : g.mm(p);
    ++t;
    m = beta1 * m + (1 - beta1) * r;
    v = beta2 * v + (1 - beta2) * r * r;
    const auto m_hat = m / (1 - std::pow(beta1, t));
    const auto v_hat = v / (1 - std::pow(beta2, t));
    const auto n = m_hat / (v_hat.sqrt() + eps);
    w = w * (1 - lr * wd) - lr * scale * (left ? p.mm(n) : n.mm(p.t()));
  }
};

/// Gradients with a well-separated spectrum (so the top-r subspace is stable in float32).
at::Tensor spread_gradient(std::int64_t m, std::int64_t n) {
  const auto k = std::min(m, n);
  const auto s = at::pow(at::full({k}, 0.6, at::kDouble), at::arange(k, at::kDouble)) * 5;
  return (orthogonal(m).narrow(1, 0, k) * s).mm(orthogonal(n).narrow(1, 0, k).t()).to(at::kFloat);
}

TEST(GaloreAdamWPlugin, MatchesAProjectedAdamReference) {
  at::manual_seed(5);
  for (const auto& [m, n] : std::vector<std::pair<std::int64_t, std::int64_t>>{{20, 8}, {7, 18}}) {
    const TensorList init = {{"w", at::randn({m, n})}};
    auto params = clone(init);
    GaloreReference ref{3, 2, 0.01, 0.8, 0.95, 1e-8, 0.05, 0.25, init[0].tensor.to(at::kDouble)};
    auto galore = optimizer("galore-adamw", params,
                            with(kAdam, {{"rank", "3"}, {"update-interval", "2"}}));  // scale: default 0.25
    for (int s = 0; s < 7; ++s) {
      const auto g = spread_gradient(m, n);
      ASSERT_TRUE(galore->step({{"w", g}}));
      ref.step(g);
      SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n) + " step " + std::to_string(s));
      EXPECT_TRUE(at::allclose(params[0].tensor.to(at::kDouble), ref.w, 1e-5, 1e-6))
          << (params[0].tensor.to(at::kDouble) - ref.w).abs().max().item<double>();
    }
    // State: moments max(m, n) x r twice, projection min(m, n) x r, in float32.
    EXPECT_EQ(*galore->state_bytes(), 4U * (2 * std::max(m, n) * 3 + std::min(m, n) * 3));
  }
}

TEST(GaloreAdamWPlugin, OneStepUpdateHasRankAtMostR) {
  at::manual_seed(6);
  for (const std::int64_t r : {1, 4, 8}) {
    // From zero weights, so that the new weights are the update itself (no float cancellation).
    TensorList params = {{"w", at::zeros({48, 32})}, {"v", at::zeros({24, 40})}};
    const auto before = clone(params);
    auto galore = optimizer("galore-adamw", params,
                            with(kAdam, {{"rank", std::to_string(r)}, {"weight-decay", "0"}}));
    ASSERT_TRUE(galore->step({{"w", at::randn({48, 32})}, {"v", at::randn({24, 40})}}));
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto delta = (params[i].tensor - before[i].tensor).to(at::kDouble);
      const auto sv = at::linalg_svdvals(delta);
      const auto numerical_rank = (sv > sv[0] * 1e-4).sum().item<std::int64_t>();
      EXPECT_EQ(numerical_rank, r) << params[i].name << " rank " << r;
    }
  }
}

TEST(GaloreAdamWPlugin, StateShrinksInProportionToTheRank) {
  const std::int64_t d = 256;
  const TensorList params = {{"w", at::zeros({d, d})}};
  const auto adamw = *optimizer("adamw", params)->state_bytes();
  EXPECT_EQ(adamw, 2U * d * d * 4);
  for (const std::int64_t r : {8, 16, 32}) {
    const auto galore = *optimizer("galore-adamw", params, {{"rank", std::to_string(r)}})->state_bytes();
    // Moments: 2 * d * r; projection: d * r.
    EXPECT_EQ(galore, 3U * d * r * 4) << "rank " << r;
    EXPECT_DOUBLE_EQ(static_cast<double>(galore) / static_cast<double>(adamw), 3.0 * r / (2.0 * d));
  }
}

// ---- all three ------------------------------------------------------------------------------

TEST(GaloreAdamWPlugin, RandomizedProjectionFindsTheExactTopSubspace) {
  // A gradient with a clear spectral gap (singular values 8, 6, 4, 2, then 1e-3 noise): the
  // randomized SVD's top-4 subspace is the exact one, so one step gives the same update.
  at::manual_seed(7);
  const auto u = std::get<0>(at::linalg_qr(at::randn({96, 4}, at::kDouble)));
  const auto v = std::get<0>(at::linalg_qr(at::randn({64, 4}, at::kDouble)));
  const auto s = at::tensor({8.0, 6.0, 4.0, 2.0}, at::kDouble);
  const auto g = (u.mul(s).mm(v.t()) + 1e-3 * at::randn({96, 64}, at::kDouble)).to(at::kFloat);
  auto step_with = [&](const std::string& svd) {
    TensorList params = {{"w", at::zeros({96, 64})}};
    auto opt = optimizer("galore-adamw", params,
                         {{"rank", "4"}, {"svd", svd}, {"scale", "1"}, {"weight-decay", "0"}});
    EXPECT_TRUE(opt->step({{"w", g}}));
    return params[0].tensor.clone();
  };
  const auto exact = step_with("exact");
  const auto randomized = step_with("randomized");
  EXPECT_GT(exact.abs().max().item<float>(), 0);
  EXPECT_TRUE(at::allclose(randomized, exact, 1e-3, 1e-6))
      << "max difference " << (randomized - exact).abs().max().item<float>();
}

TEST(OptimizerPlugins, SaveAndLoadContinueTheSameTrajectory) {
  const std::vector<std::pair<std::string, PluginOptions>> cases = {
      {"sgd", {{"momentum", "0.9"}, {"weight-decay", "0.01"}}},
      {"adamw", kAdam},
      {"galore-adamw", with(kAdam, {{"rank", "2"}, {"update-interval", "3"}})}};
  for (const auto& [name, options] : cases) {
    SCOPED_TRACE(name);
    at::manual_seed(7);
    const TensorList init = {{"w", at::randn({10, 6})}, {"b", at::randn({6})}};
    std::vector<TensorList> grads;
    for (int s = 0; s < 6; ++s) grads.push_back({{"w", at::randn({10, 6})}, {"b", at::randn({6})}});
    auto p1 = clone(init);
    auto first = optimizer(name, p1, options);
    (void)run(*first, p1, {grads[0], grads[1], grads[2], grads[3]});
    const auto saved = first->save();
    ASSERT_TRUE(saved) << saved.error().message;
    for (const auto& t : *saved) {
      EXPECT_TRUE(t.name.rfind("w/", 0) == 0 || t.name.rfind("b/", 0) == 0) << t.name;
    }
    auto p2 = clone(p1);
    auto second = optimizer(name, p2, options);
    ASSERT_TRUE(second->load(*saved));
    EXPECT_EQ(*second->state_bytes(), *first->state_bytes());
    const auto a = run(*first, p1, {grads[4], grads[5]});
    const auto b = run(*second, p2, {grads[4], grads[5]});
    for (std::size_t s = 0; s < a.size(); ++s) expect_close(a[s], b[s], 0, 0);
    // State of other parameters is refused.
    TensorList wrong = {{"other/exp_avg", at::zeros({3})}};
    EXPECT_FALSE(second->load(wrong));
  }
}

TEST(OptimizerPlugins, ASkippedGradientLeavesTheParameterAlone) {
  for (const std::string name : {"sgd", "adamw", "galore-adamw"}) {
    TensorList params = {{"w", at::ones({4, 4})}, {"b", at::ones({4})}};
    auto opt = optimizer(name, params, {{"weight-decay", "0.5"}});
    ASSERT_TRUE(opt->step({{"w", at::ones({4, 4})}, {"b", at::Tensor()}}));
    EXPECT_TRUE(at::equal(params[1].tensor, at::ones({4}))) << name;
    EXPECT_FALSE(at::equal(params[0].tensor, at::ones({4, 4}))) << name;
  }
}

TEST(OptimizerPlugins, RefuseBadOptionsNamingThem) {
  const TensorList params = {{"w", at::zeros({4, 4})}};
  auto refused = [&](const std::string& name, const PluginOptions& options) {
    auto lib = load_builtin(name, FLOTILLA_KIND_OPTIMIZER);
    auto opt = PluginOptimizer::create(lib, options, params);
    EXPECT_FALSE(opt) << name;
    return opt ? std::string() : opt.error().message;
  };
  EXPECT_THAT(refused("galore-adamw", {{"rank", "0"}}), HasSubstr("option 'rank' is 0, expected >= 1"));
  EXPECT_THAT(refused("galore-adamw", {{"update-interval", "-3"}}), HasSubstr("'update-interval'"));
  EXPECT_THAT(refused("galore-adamw", {{"beta1", "1.5"}}), HasSubstr("option 'beta1' is 1.5"));
  EXPECT_THAT(refused("galore-adamw", {{"beta1", "1.5"}}), HasSubstr("in [0, 1)"));
  EXPECT_THAT(refused("adamw", {{"beta2", "1"}}), HasSubstr("option 'beta2'"));
  EXPECT_THAT(refused("adamw", {{"eps", "0"}}), HasSubstr("option 'eps' is 0, expected > 0"));
  EXPECT_THAT(refused("sgd", {{"momentum", "-0.1"}}), HasSubstr("option 'momentum'"));
  EXPECT_THAT(refused("sgd", {{"learning-rate", "nan"}}), HasSubstr("option 'learning-rate'"));
  EXPECT_THAT(refused("sgd", {{"nesterov", "true"}}), HasSubstr("'nesterov' needs option 'momentum'"));
  EXPECT_THAT(refused("galore-adamw", {{"svd", "fast"}}), HasSubstr("option 'svd' is \"fast\""));
  // Unknown keys and wrong types are the host's refusals (checked against the specs).
  EXPECT_THAT(refused("sgd", {{"betas", "0.9"}}), HasSubstr("unknown option 'betas'"));
  EXPECT_THAT(refused("galore-adamw", {{"rank", "1.5"}}), HasSubstr("expected an integer"));
}

}  // namespace

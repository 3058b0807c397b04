// fedyogi plugin against Reddi et al.'s Yogi update computed here step by step in float64, over
// versions where v both grows (Δ² > v) and shrinks (Δ² < v).
#include "plugin_testing.hpp"

using namespace flotilla;
using namespace flotilla::testing;

namespace {

/// Δ = mean − global; m = β1·m + (1−β1)·Δ; v = v − (1−β2)·Δ²·sign(v − Δ²) (v₀ = τ²);
/// global += η·m / (√v + τ). Per tensor, float64.
struct YogiReference {
  double lr, beta1, beta2, tau;
  TensorList global, m, v;
  TensorList step(const std::vector<TensorList>& updates, const std::vector<double>& weights) {
    const auto mean = weighted_mean64(updates, weights);
    for (std::size_t i = 0; i < global.size(); ++i) {
      auto& x = global[i].tensor;
      if (m.size() <= i) {
        m.push_back({global[i].name, at::zeros_like(x, at::kDouble)});
        v.push_back({global[i].name, at::full_like(x, tau * tau, at::kDouble)});
      }
      const auto delta = mean[i].tensor - x.to(at::kDouble);
      const auto d2 = delta * delta;
      m[i].tensor = beta1 * m[i].tensor + (1 - beta1) * delta;
      v[i].tensor = v[i].tensor - (1 - beta2) * d2 * at::sign(v[i].tensor - d2);
      x = x.to(at::kDouble) + lr * m[i].tensor / (v[i].tensor.sqrt() + tau);
    }
    return global;
  }
};

const PluginOptions kOptions = {
    {"server-learning-rate", "0.1"}, {"beta1", "0.8"}, {"beta2", "0.5"}, {"tau", "0.01"}};

/// Updates at `global` + `scale`·noise: a large scale first (Δ² > v, v grows), then a small one
/// (Δ² < v, v shrinks).
std::vector<TensorList> near(const TensorList& global, double scale, int seed) {
  std::vector<TensorList> updates;
  for (int k = 0; k < 2; ++k) {
    const auto noise = seeded_model(seed + k);
    TensorList u;
    for (std::size_t i = 0; i < global.size(); ++i) {
      u.push_back({global[i].name, global[i].tensor + scale * noise[i].tensor});
    }
    updates.push_back(std::move(u));
  }
  return updates;
}

TEST(FedYogiPlugin, TwoVersionsFollowTheFormula) {
  const auto global = seeded_model(0);
  auto yogi = aggregation("fedyogi", global, kOptions);
  auto adam = aggregation("fedadam", global, kOptions);
  YogiReference ref{0.1, 0.8, 0.5, 0.01, global, {}, {}};
  TensorList current = global;
  for (int version = 0; version < 2; ++version) {
    const auto updates = near(current, version == 0 ? 1.0 : 0.01, 10 * version);
    const auto out = aggregate(*yogi, updates, {1, 3});
    const auto expected = ref.step(updates, {1, 3});
    EXPECT_LT(max_difference(out, expected), 1e-5) << "version " << version;
    const auto adam_out = aggregate(*adam, updates, {1, 3});
    // Once v must shrink (small updates), Yogi shrinks it less than Adam: smaller steps.
    if (version == 1) EXPECT_GT(max_difference(out, adam_out), 1e-3);
    current = out;
  }
}

TEST(FedYogiPlugin, RefusesOutOfRangeOptions) {
  const auto global = seeded_model(0);
  const auto error = creation_error("fedyogi", global, {{"beta2", "1.5"}});
  EXPECT_NE(error.find("'beta2'"), std::string::npos) << error;
  EXPECT_EQ(creation_error("fedyogi", global, {{"beta2", "0.999"}}), "");
}

}  // namespace

// fedavgm plugin against FedAvg (β = 0, η = 1) and against the server-momentum formula computed
// here in float64 over several versions.
#include "plugin_testing.hpp"

using namespace flotilla;
using namespace flotilla::testing;

namespace {

/// The reference: m = β·m + (global − mean), global −= η·m, per tensor in float64.
struct MomentumReference {
  double lr, beta;
  TensorList global, m;
  TensorList step(const std::vector<TensorList>& updates, const std::vector<double>& weights) {
    const auto mean = weighted_mean64(updates, weights);
    for (std::size_t i = 0; i < global.size(); ++i) {
      const auto delta = global[i].tensor - mean[i].tensor;
      if (m.size() <= i) m.push_back({global[i].name, at::zeros_like(delta)});
      m[i].tensor = beta * m[i].tensor + delta;
      global[i].tensor = global[i].tensor - lr * m[i].tensor;
    }
    return global;
  }
};

TensorList to_double(const TensorList& list) {
  TensorList out;
  for (const auto& t : list) out.push_back({t.name, t.tensor.to(at::kDouble)});
  return out;
}

TEST(FedAvgMPlugin, WithoutMomentumIsFedAvg) {
  const auto global = seeded_model(0);
  const std::vector<TensorList> updates = {seeded_model(1), seeded_model(2), seeded_model(3)};
  const std::vector<double> weights = {1, 2, 5};
  auto fedavgm = aggregation("fedavgm", global, {{"momentum", "0"}, {"server-learning-rate", "1"}});
  auto fedavg = aggregation("fedavg", global);
  const auto a = aggregate(*fedavgm, updates, weights);
  const auto b = aggregate(*fedavg, updates, weights);
  EXPECT_LT(max_difference(a, b), 1e-5);
  EXPECT_GT(max_difference(a, global), 0.1);  // it did move
}

TEST(FedAvgMPlugin, FollowsTheMomentumFormulaOverVersions) {
  const auto global = seeded_model(0);
  auto agg = aggregation("fedavgm", global, {{"momentum", "0.9"}, {"server-learning-rate", "0.5"}});
  MomentumReference ref{0.5, 0.9, to_double(global), {}};
  TensorList plain = global;  // what β = 0 would give, to see the momentum matters
  for (int version = 0; version < 3; ++version) {
    const std::vector<TensorList> updates = {seeded_model(10 + version), seeded_model(20 + version)};
    const auto out = aggregate(*agg, updates, {3, 1});
    const auto expected = ref.step(updates, {3, 1});
    EXPECT_LT(max_difference(out, expected), 1e-5) << "version " << version;
    if (version == 2) EXPECT_GT(max_difference(out, weighted_mean64(updates, {3, 1})), 0.1);
  }
}

TEST(FedAvgMPlugin, StepsOnlyTheTensorsUpdatesCarry) {
  TensorList global = seeded_model(0);
  global.push_back({"steps", at::full({1}, 5, at::kLong)});
  auto agg = aggregation("fedavgm", global, {{"momentum", "0.5"}});
  TensorList u1 = {{"fc.weight", at::ones({10, 64})}, {"steps", at::full({1}, 7, at::kLong)}};
  TensorList u2 = {{"fc.weight", 3 * at::ones({10, 64})}, {"steps", at::full({1}, 9, at::kLong)}};
  const auto out = aggregate(*agg, {u1, u2}, {1, 1});
  // η = 1, m = global − 2 after the first version: the mean itself.
  EXPECT_TRUE(at::allclose(find(out, "fc.weight"), 2 * at::ones({10, 64}), 1e-5, 1e-5));
  EXPECT_EQ(find(out, "steps").item<std::int64_t>(), 9);  // latest, not averaged
  EXPECT_TRUE(at::equal(find(out, "conv.weight"), find(global, "conv.weight")));
  EXPECT_TRUE(at::equal(find(out, "fc.bias"), find(global, "fc.bias")));
  // Second version from 2: Δ = 2 − 4 = −2, m = 0.5·(global − 2) − 2, global = 2 − m.
  TensorList u3 = {{"fc.weight", 4 * at::ones({10, 64})}, {"steps", at::full({1}, 11, at::kLong)}};
  const auto next = aggregate(*agg, {u3}, {1});
  const auto m = 0.5 * (find(global, "fc.weight") - 2) - 2;
  EXPECT_TRUE(at::allclose(find(next, "fc.weight"), 2 - m, 1e-5, 1e-5));
}

TEST(FedAvgMPlugin, HotReloadKeepsTheMomentum) {
  const auto global = seeded_model(0);
  const PluginOptions options = {{"momentum", "0.9"}};
  const std::vector<TensorList> first = {seeded_model(1), seeded_model(2)};
  const std::vector<TensorList> second = {seeded_model(3), seeded_model(4)};
  auto straight = aggregation("fedavgm", global, options);
  (void)aggregate(*straight, first, {1, 1});
  const auto expected = aggregate(*straight, second, {1, 1});

  auto reloaded = aggregation("fedavgm", global, options);
  const auto after_first = aggregate(*reloaded, first, {1, 1});
  reload_builtin(*reloaded, "fedavgm");
  EXPECT_LT(max_difference(aggregate(*reloaded, second, {1, 1}), expected), 1e-6);

  // Without the momentum (a fresh instance at the same model) the result differs.
  auto fresh = aggregation("fedavgm", after_first, options);
  EXPECT_GT(max_difference(aggregate(*fresh, second, {1, 1}), expected), 0.1);
}

TEST(FedAvgMPlugin, RefusesOutOfRangeOptions) {
  const auto global = seeded_model(0);
  const auto momentum = creation_error("fedavgm", global, {{"momentum", "1"}});
  EXPECT_NE(momentum.find("'momentum'"), std::string::npos) << momentum;
  EXPECT_NE(momentum.find("[0, 1)"), std::string::npos) << momentum;
  const auto lr = creation_error("fedavgm", global, {{"server-learning-rate", "0"}});
  EXPECT_NE(lr.find("'server-learning-rate'"), std::string::npos) << lr;
  EXPECT_EQ(creation_error("fedavgm", global, {{"momentum", "0.99"}}), "");
}

}  // namespace

// fedavg plugin against an independent reference (the weighted mean computed here in float64)
// and against the core's built-in fold.
#include "plugin_testing.hpp"

#include "runtime/plugin_host/fedavg.hpp"

using namespace flotilla;
using namespace flotilla::testing;

namespace {

TensorList random_model(int seed) {
  at::manual_seed(seed);
  return {{"conv.weight", at::randn({8, 1, 3, 3})},
          {"fc.weight", at::randn({10, 64})},
          {"fc.bias", at::randn({10})}};
}

TEST(FedAvgPlugin, EqualsTheWeightedMean) {
  std::vector<TensorList> updates = {random_model(1), random_model(2), random_model(3)};
  const std::vector<double> weights = {100, 300, 600};
  auto agg = aggregation("fedavg", random_model(0));
  const auto out = aggregate(*agg, updates, weights);
  ASSERT_EQ(out.size(), 3U);
  for (std::size_t i = 0; i < out.size(); ++i) {
    at::Tensor expected = at::zeros_like(updates[0][i].tensor, at::kDouble);
    for (std::size_t k = 0; k < updates.size(); ++k) {
      expected += updates[k][i].tensor.to(at::kDouble) * (weights[k] / 1000.0);
    }
    EXPECT_EQ(out[i].name, updates[0][i].name);
    EXPECT_TRUE(at::allclose(out[i].tensor.to(at::kDouble), expected, 1e-6, 1e-6)) << out[i].name;
  }
}

TEST(FedAvgPlugin, MatchesTheBuiltInFold) {
  std::vector<TensorList> updates = {random_model(4), random_model(5)};
  auto plugin = aggregation("fedavg", random_model(0));
  FedAvg builtin(random_model(0));
  const auto a = aggregate(*plugin, updates, {1, 3});
  const auto b = aggregate(builtin, updates, {1, 3});
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].tensor, b[i].tensor));
}

TEST(FedAvgPlugin, AveragesASubsetAndLeavesTheRest) {
  // Updates carrying only some tensors (e.g. adapters): the others keep their global value.
  const auto global = random_model(0);
  TensorList u1 = {{"fc.weight", at::ones({10, 64})}};
  TensorList u2 = {{"fc.weight", 3 * at::ones({10, 64})}};
  auto agg = aggregation("fedavg", global);
  const auto out = aggregate(*agg, {u1, u2}, {1, 1});
  EXPECT_TRUE(at::allclose(find(out, "fc.weight"), 2 * at::ones({10, 64})));
  EXPECT_TRUE(at::equal(find(out, "conv.weight"), find(global, "conv.weight")));
  // A later update of the same version with another subset is refused.
  auto agg2 = aggregation("fedavg", global);
  ASSERT_TRUE(agg2->accept({&u1, 1.0, 0, 0}));
  TensorList other = {{"fc.bias", at::ones({10})}};
  EXPECT_FALSE(agg2->accept({&other, 1.0, 0, 1}));
}

TEST(FedAvgPlugin, DiscardForgetsTheRound) {
  auto agg = aggregation("fedavg", random_model(0));
  const auto junk = random_model(9);
  ASSERT_TRUE(agg->accept({&junk, 5.0, 0, 0}));
  agg->discard();
  const auto u = random_model(1);
  const auto out = aggregate(*agg, {u}, {1});
  EXPECT_TRUE(at::allclose(find(out, "fc.weight"), find(u, "fc.weight")));
}

}  // namespace

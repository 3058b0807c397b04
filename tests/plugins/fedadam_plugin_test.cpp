// fedadam plugin against Reddi et al.'s update computed here step by step in float64, and its
// state (m, v) carried through export_state/import_state.
#include "plugin_testing.hpp"

using namespace flotilla;
using namespace flotilla::testing;

namespace {

/// Δ = mean − global; m = β1·m + (1−β1)·Δ; v = β2·v + (1−β2)·Δ² (v₀ = τ²);
/// global += η·m / (√v + τ). Per tensor, float64.
struct AdamReference {
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
      m[i].tensor = beta1 * m[i].tensor + (1 - beta1) * delta;
      v[i].tensor = beta2 * v[i].tensor + (1 - beta2) * delta * delta;
      x = x.to(at::kDouble) + lr * m[i].tensor / (v[i].tensor.sqrt() + tau);
    }
    return global;
  }
};

const PluginOptions kOptions = {
    {"server-learning-rate", "0.1"}, {"beta1", "0.8"}, {"beta2", "0.95"}, {"tau", "0.01"}};

TEST(FedAdamPlugin, TwoVersionsFollowTheFormula) {
  const auto global = seeded_model(0);
  auto agg = aggregation("fedadam", global, kOptions);
  AdamReference ref{0.1, 0.8, 0.95, 0.01, global, {}, {}};
  for (int version = 0; version < 2; ++version) {
    const std::vector<TensorList> updates = {seeded_model(10 + version), seeded_model(20 + version),
                                             seeded_model(30 + version)};
    const std::vector<double> weights = {1, 2, 3};
    const auto out = aggregate(*agg, updates, weights);
    const auto expected = ref.step(updates, weights);
    EXPECT_LT(max_difference(out, expected), 1e-5) << "version " << version;
  }
}

TEST(FedAdamPlugin, DiscardedUpdatesLeaveNoTrace) {
  const auto global = seeded_model(0);
  auto agg = aggregation("fedadam", global, kOptions);
  const auto junk = seeded_model(99);
  ASSERT_TRUE(agg->accept({&junk, 100.0, 0, 0}));
  agg->discard();
  AdamReference ref{0.1, 0.8, 0.95, 0.01, global, {}, {}};
  const std::vector<TensorList> updates = {seeded_model(1)};
  EXPECT_LT(max_difference(aggregate(*agg, updates, {1}), ref.step(updates, {1})), 1e-5);
}

TEST(FedAdamPlugin, ExportedStateContinuesIdenticallyInAFreshInstance) {
  const auto global = seeded_model(0);
  const std::vector<TensorList> first = {seeded_model(1), seeded_model(2)};
  const std::vector<TensorList> second = {seeded_model(3), seeded_model(4)};
  auto straight = aggregation("fedadam", global, kOptions);
  (void)aggregate(*straight, first, {1, 2});
  const auto expected = aggregate(*straight, second, {1, 2});

  auto moved = aggregation("fedadam", global, kOptions);
  const auto after_first = aggregate(*moved, first, {1, 2});
  reload_builtin(*moved, "fedadam");  // export_state → new instance → import_state
  const auto continued = aggregate(*moved, second, {1, 2});
  for (const auto& t : expected) EXPECT_TRUE(at::equal(t.tensor, find(continued, t.name))) << t.name;

  // The state is what makes the difference: a fresh instance at the same model differs.
  auto fresh = aggregation("fedadam", after_first, kOptions);
  EXPECT_GT(max_difference(aggregate(*fresh, second, {1, 2}), expected), 1e-3);
}

TEST(FedAdamPlugin, ExportsMomentsNamedByTensor) {
  // Through the C ABI, as a checkpoint would see them: "m/<tensor>" and "v/<tensor>".
  auto lib = load_builtin("fedadam", FLOTILLA_KIND_AGGREGATOR);
  const auto& api = *lib->plugin().aggregator;
  const auto global = seeded_model(0);
  const DlTensors g(global);
  void* state = nullptr;
  ASSERT_TRUE(lib->call("create", [&] { return api.create(lib->host(), nullptr, g.get(), &state); }));
  const TensorList update = {{"fc.bias", find(global, "fc.bias") + 1}};
  const DlTensors u(update);
  flotilla_update_info info{sizeof(info), 1.0, 0, 0};
  ASSERT_TRUE(lib->call("accept", [&] { return api.accept(state, u.get(), &info); }));
  flotilla_output next, saved;
  ASSERT_TRUE(lib->call("finalize", [&] { return api.finalize(state, &next); }));
  ASSERT_TRUE(lib->call("export_state", [&] { return api.export_state(state, &saved); }));
  api.destroy(state);
  ASSERT_EQ(saved.tensors.size(), 2U);
  EXPECT_EQ(saved.tensors[0].name, "m/fc.bias");
  EXPECT_EQ(saved.tensors[1].name, "v/fc.bias");
  // Δ = 1 everywhere: m = (1 − β1)·1, v = β2·τ² + (1 − β2)·1 with the defaults.
  EXPECT_TRUE(at::allclose(saved.tensors[0].tensor.cpu(), at::full({10}, 0.1), 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(saved.tensors[1].tensor.cpu(), at::full({10}, 0.99 * 1e-6 + 0.01), 1e-6, 1e-7));
}

TEST(FedAdamPlugin, RefusesOutOfRangeOptions) {
  const auto global = seeded_model(0);
  for (const auto& [key, value] : PluginOptions{{"beta1", "-0.1"}, {"beta2", "1"}, {"tau", "0"},
                                                {"server-learning-rate", "-1"}}) {
    const auto error = creation_error("fedadam", global, {{key, value}});
    EXPECT_NE(error.find("'" + key + "'"), std::string::npos) << key << ": " << error;
  }
}

}  // namespace

#pragma once
// Helpers for plugin tests: load a built-in or fixture plugin through the real host, and run
// an aggregation over updates.
#include "runtime/plugin_host/plugin_aggregation.hpp"
#include "runtime/plugin_host/plugin_host.hpp"
#include "runtime/plugin_host/plugin_optimizer.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

namespace flotilla::testing {

/// The device plugin tests compute on: $FLOTILLA_TEST_DEVICE ("cuda") or the CPU.
inline c10::Device test_device() {
  const char* d = std::getenv("FLOTILLA_TEST_DEVICE");
  return d != nullptr && *d != '\0' ? c10::Device(d) : c10::Device(c10::kCPU);
}

/// The LoRA alpha the plugin tests' host passes (flotilla_host.lora_alpha).
inline constexpr double kTestLoraAlpha = 16;

inline PluginRegistry builtin_registry(PluginHostFacts facts = {kTestLoraAlpha}) {
  return PluginRegistry({FLOTILLA_PLUGIN_DIR}, test_device(), facts);
}

inline std::shared_ptr<PluginLibrary> load_builtin(const std::string& name, flotilla_plugin_kind kind,
                                                   PluginHostFacts facts = {kTestLoraAlpha}) {
  auto registry = builtin_registry(facts);
  auto lib = registry.load(name, kind);
  if (!lib) throw Failure(lib.error());
  return *lib;
}

inline std::unique_ptr<PluginAggregation> aggregation(const std::string& name,
                                                      const TensorList& global,
                                                      PluginOptions options = {},
                                                      PluginHostFacts facts = {kTestLoraAlpha}) {
  auto agg = PluginAggregation::create(load_builtin(name, FLOTILLA_KIND_AGGREGATOR, facts),
                                       std::move(options), global);
  if (!agg) throw Failure(agg.error());
  return std::move(agg).value();
}

inline std::unique_ptr<PluginOptimizer> optimizer(const std::string& name, const TensorList& params,
                                                  PluginOptions options = {}) {
  auto opt = PluginOptimizer::create(load_builtin(name, FLOTILLA_KIND_OPTIMIZER), options, params);
  if (!opt) throw Failure(opt.error());
  return std::move(opt).value();
}

/// The fixture plugin file `name` (build/test-plugins/<name>.so).
inline std::string fixture(const std::string& name) {
  return std::string(FLOTILLA_FIXTURE_DIR) + "/" + name + ".so";
}

/// Feeds `updates` (with weights) to `agg` and returns the finalized model.
inline TensorList aggregate(Aggregation& agg, const std::vector<TensorList>& updates,
                            const std::vector<double>& weights) {
  for (std::size_t i = 0; i < updates.size(); ++i) {
    WeightedUpdate u{&updates[i], weights[i], 0, static_cast<std::uint32_t>(i)};
    auto ok = agg.accept(u);
    if (!ok) throw Failure(ok.error());
  }
  return agg.finalize();
}

inline const at::Tensor& find(const TensorList& list, const std::string& name) {
  for (const auto& t : list) {
    if (t.name == name) return t.tensor;
  }
  throw std::out_of_range("no tensor " + name);
}


// ---- Shared by the tests of the built-in aggregation plugins ----------------------------------

/// A small model (conv, fc weight and bias), standard normal values, reproducible by `seed`.
inline TensorList seeded_model(int seed) {
  at::manual_seed(seed);
  return {{"conv.weight", at::randn({8, 1, 3, 3})},
          {"fc.weight", at::randn({10, 64})},
          {"fc.bias", at::randn({10})}};
}

/// The weighted mean of `updates`, tensor by tensor, in float64 (the reference the methods'
/// outputs are compared against).
inline TensorList weighted_mean64(const std::vector<TensorList>& updates,
                                  const std::vector<double>& weights) {
  double total = 0;
  for (double w : weights) total += w;
  TensorList mean;
  for (std::size_t i = 0; i < updates.front().size(); ++i) {
    at::Tensor sum = at::zeros_like(updates.front()[i].tensor, at::kDouble);
    for (std::size_t k = 0; k < updates.size(); ++k) {
      sum += updates[k][i].tensor.to(at::kDouble) * (weights[k] / total);
    }
    mean.push_back({updates.front()[i].name, sum});
  }
  return mean;
}

/// The largest absolute difference between same-named tensors of `a` and `b`.
inline double max_difference(const TensorList& a, const TensorList& b) {
  double worst = 0;
  for (const auto& t : a) {
    worst = std::max(worst, (t.tensor.to(at::kDouble) - find(b, t.name).to(at::kDouble))
                                .abs().max().item<double>());
  }
  return worst;
}

/// Why creating aggregation `name` with `options` fails ("" if it does not).
inline std::string creation_error(const std::string& name, const TensorList& global,
                                  PluginOptions options) {
  try {
    (void)aggregation(name, global, std::move(options));
  } catch (const Failure& e) {
    return e.what();
  }
  return "";
}

/// Hot-reloads `agg` with a new load of built-in plugin `name`: its state between versions goes
/// through export_state, a fresh state for the current global model, and import_state.
inline void reload_builtin(Aggregation& agg, const std::string& name) {
  auto library = PluginLibrary::open(builtin_registry().find(name).value(), test_device());
  agg.reload(library.value()).value();
}

/// Six honest updates near 1.0 and one (the last) scaled ×1000, all of weight 1.
struct OutlierRound {
  TensorList global;
  std::vector<TensorList> updates;
  std::vector<double> weights;
  TensorList honest_mean;  ///< of the six honest updates
};

inline OutlierRound outlier_round() {
  OutlierRound r;
  r.global = seeded_model(0);
  at::manual_seed(42);
  for (int k = 0; k < 6; ++k) {
    TensorList u;
    for (const auto& t : r.global) u.push_back({t.name, 1.0 + 0.005 * at::randn(t.tensor.sizes())});
    r.updates.push_back(std::move(u));
  }
  r.honest_mean = weighted_mean64(r.updates, std::vector<double>(6, 1.0));
  TensorList outlier;
  for (const auto& t : r.updates.front()) outlier.push_back({t.name, t.tensor * 1000});
  r.updates.push_back(std::move(outlier));
  r.weights.assign(7, 1.0);
  return r;
}

/// Asserts that `name` (with `options`) ends the outlier round close to the honest mean, where
/// fedavg is dragged far away.
inline void expect_withstands_outlier(const std::string& name, PluginOptions options = {}) {
  const auto r = outlier_round();
  auto robust = aggregation(name, r.global, std::move(options));
  auto fedavg = aggregation("fedavg", r.global);
  EXPECT_LT(max_difference(aggregate(*robust, r.updates, r.weights), r.honest_mean), 0.05) << name;
  EXPECT_GT(max_difference(aggregate(*fedavg, r.updates, r.weights), r.honest_mean), 100.0);
}

}  // namespace flotilla::testing

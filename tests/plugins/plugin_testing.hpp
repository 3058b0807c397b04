#pragma once
// Helpers for plugin tests: load a built-in or fixture plugin through the real host, and run
// an aggregation over updates.
#include "runtime/plugin_aggregation.hpp"
#include "runtime/plugin_host.hpp"
#include "runtime/plugin_optimizer.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace flotilla::testing {

/// The device plugin tests compute on: $FLOTILLA_TEST_DEVICE ("cuda") or the CPU.
inline c10::Device test_device() {
  const char* d = std::getenv("FLOTILLA_TEST_DEVICE");
  return d != nullptr && *d != '\0' ? c10::Device(d) : c10::Device(c10::kCPU);
}

inline PluginRegistry builtin_registry() {
  return PluginRegistry({FLOTILLA_PLUGIN_DIR}, test_device());
}

inline std::shared_ptr<PluginLibrary> load_builtin(const std::string& name,
                                                   flotilla_plugin_kind kind) {
  auto registry = builtin_registry();
  auto lib = registry.load(name, kind);
  if (!lib) throw Failure(lib.error());
  return *lib;
}

inline std::unique_ptr<PluginAggregation> aggregation(const std::string& name,
                                                      const TensorList& global,
                                                      PluginOptions options = {}) {
  auto agg = PluginAggregation::create(load_builtin(name, FLOTILLA_KIND_AGGREGATOR),
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

}  // namespace flotilla::testing

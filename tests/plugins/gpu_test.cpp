// Plugins compute on the configured device: with a GPU, the fedavg, flexlora and galore-adamw
// plugins run on it and give what they give on the CPU. Skips with a message without one.
#include "plugin_testing.hpp"

#include <ATen/Context.h>

using namespace flotilla;
using namespace flotilla::testing;

namespace {

bool have_gpu() { return at::globalContext().hasCUDA(); }

TEST(PluginsOnGpu, FedAvgOnTheGpuEqualsTheCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU (this LibTorch has no CUDA or none is present)";
  at::manual_seed(1);
  const TensorList global = {{"w", at::randn({256, 128})}, {"b", at::randn({256})}};
  std::vector<TensorList> updates;
  for (int k = 0; k < 3; ++k) updates.push_back({{"w", at::randn({256, 128})}, {"b", at::randn({256})}});
  auto on = [&](c10::Device d) {
    PluginRegistry registry({FLOTILLA_PLUGIN_DIR}, d);
    auto lib = registry.load("fedavg", FLOTILLA_KIND_AGGREGATOR);
    EXPECT_TRUE(lib);
    EXPECT_EQ((*lib)->host()->device.device_type, d.is_cuda() ? kDLCUDA : kDLCPU);
    auto agg = PluginAggregation::create(*lib, {}, global);
    return aggregate(**agg, updates, {1, 2, 3});
  };
  const auto gpu = on(c10::Device(c10::kCUDA, 0));
  const auto cpu = on(c10::Device(c10::kCPU));
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_TRUE(gpu[i].tensor.device().is_cpu());  // the host hands models over on the CPU
    EXPECT_TRUE(at::allclose(gpu[i].tensor, cpu[i].tensor, 1e-5, 1e-6)) << cpu[i].name;
  }
}

TEST(PluginsOnGpu, GaloreStepsParametersOnTheGpu) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU (this LibTorch has no CUDA or none is present)";
  at::manual_seed(2);
  const auto dev = c10::Device(c10::kCUDA, 0);
  TensorList params = {{"w", at::randn({64, 48}, at::TensorOptions().device(dev))}};
  const auto before = params[0].tensor.clone();
  PluginRegistry registry({FLOTILLA_PLUGIN_DIR}, dev);
  auto lib = registry.load("galore-adamw", FLOTILLA_KIND_OPTIMIZER);
  ASSERT_TRUE(lib) << lib.error().message;
  auto opt = PluginOptimizer::create(*lib, {{"rank", "4"}}, params);
  ASSERT_TRUE(opt) << opt.error().message;
  TensorList grads = {{"w", at::randn({64, 48}, at::TensorOptions().device(dev))}};
  ASSERT_TRUE((*opt)->step(grads));
  const auto delta = (params[0].tensor - before).cpu();
  EXPECT_GT(delta.abs().max().item<float>(), 0);
  EXPECT_LE(at::linalg_matrix_rank(delta.to(at::kDouble)).item<std::int64_t>(), 4);
}

}  // namespace

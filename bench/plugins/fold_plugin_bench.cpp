/// Plugin overhead benchmark: the fedavg plugin, loaded and called through the C ABI as the
/// runtime does (PluginRegistry, PluginAggregation), against the core's built-in FedAvg,
/// folding the same updates one at a time into a running sum.
///   fold_plugin_bench [--mb 256] [--updates 8] [--repeats 3] [--device cpu|cuda]
/// Prints `fold plugin_vs_builtin ratio=...` (plugin throughput / built-in throughput; both
/// share the fold kernel, so what remains is the ABI's cost: update checks, DLPack views, the
/// output) and the same for whole versions (folds plus finalize: since ABI 1.1 the plugin's
/// running mean lives in memory the host lent it and is handed over without a copy, as the
/// built-in hands its accumulator over in place).
/// Runs are interleaved and the best of --repeats is kept, so drift in machine load hits both
/// alike. One LibTorch thread, so on the CPU the time measured is the thread's CPU time: on a
/// shared machine wall time also counts the time other processes held the core. The built-in
/// FedAvg always folds on the CPU; with --device cuda the plugin folds on the GPU (wall time),
/// which measures the device, not the ABI.
#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/plugin_host/plugin_aggregation.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

using namespace flotilla;
using Clock = std::chrono::steady_clock;

namespace {

/// Seconds on the clock the benchmark uses (see above).
bool g_cpu_clock = true;
double now() {
  if (!g_cpu_clock) {
    torch::cuda::synchronize();  // the device's queued work is part of the time
    return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  }
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// A model-shaped list, `bytes` of float32 in all: a few large layers and small ones.
TensorList make_model(std::size_t bytes, int seed) {
  torch::manual_seed(seed);
  const auto floats = static_cast<std::int64_t>(bytes / 4);
  TensorList t;
  t.push_back({"embed.weight", torch::randn({floats / 2})});
  t.push_back({"block.0.weight", torch::randn({floats / 8})});
  t.push_back({"block.1.weight", torch::randn({floats / 8})});
  t.push_back({"head.weight", torch::randn({floats / 4 - 2048})});
  t.push_back({"block.0.bias", torch::randn({1024})});
  t.push_back({"head.bias", torch::randn({1024})});
  return t;
}

struct Times {
  double fold = 0;     ///< the accepts
  double version = 0;  ///< the accepts and finalize
};

/// One version: `n` updates accepted one at a time, then finalize.
Times run_version(Aggregation& agg, const std::vector<TensorList>& pool, int n) {
  Times t;
  const double start = now();
  for (int i = 0; i < n; ++i) {
    const WeightedUpdate u{&pool[static_cast<std::size_t>(i) % pool.size()], 1.0 + i, 0,
                           static_cast<std::uint32_t>(i)};
    if (!agg.accept(u)) {
      std::cerr << "accept failed\n";
      std::exit(1);
    }
  }
  t.fold = now() - start;
  const auto next = agg.finalize();
  t.version = now() - start;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t mb = 256;
  int updates = 8, repeats = 3;
  std::string device = "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--mb") mb = std::stoul(argv[i + 1]);
    else if (a == "--updates") updates = std::stoi(argv[i + 1]);
    else if (a == "--repeats") repeats = std::stoi(argv[i + 1]);
    else if (a == "--device") device = argv[i + 1];
    else {
      std::cerr << "usage: fold_plugin_bench [--mb N] [--updates N] [--repeats N] [--device cpu|cuda]\n";
      return 2;
    }
  }
  if (argc % 2 == 0 || updates < 1 || repeats < 1) {
    std::cerr << "usage: fold_plugin_bench [--mb N] [--updates N] [--repeats N] [--device cpu|cuda]\n";
    return 2;
  }
  const c10::Device dev(device);
  if (dev.is_cuda() && !torch::cuda::is_available()) {
    std::cout << "fold plugin_vs_builtin skipped: --device " << device << " but no CUDA device\n";
    return 0;
  }
  at::set_num_threads(1);
  g_cpu_clock = dev.is_cpu();

  const std::size_t bytes = mb << 20;
  const auto global = make_model(bytes, 0);
  const auto model_bytes = static_cast<double>(total_bytes(global));
  // Distinct updates reused cyclically (they stand for the update in flight; a pool keeps the
  // memory at a few model copies whatever --updates is).
  std::vector<TensorList> pool;
  for (int k = 0; k < std::min(updates, 4); ++k) pool.push_back(make_model(bytes, k + 1));

  PluginRegistry registry({FLOTILLA_PLUGIN_DIR}, dev);
  auto library = registry.load("fedavg", FLOTILLA_KIND_AGGREGATOR);
  if (!library) {
    std::cerr << library.error().message << "\n";
    return 1;
  }
  auto plugin = PluginAggregation::create(*library, {}, global);
  if (!plugin) {
    std::cerr << plugin.error().message << "\n";
    return 1;
  }
  FedAvg builtin(global);

  // Warm-up (page faults of the accumulators, lazy CUDA init), then interleaved repeats.
  (void)run_version(**plugin, pool, 1);
  (void)run_version(builtin, pool, 1);
  Times best_plugin{1e30, 1e30}, best_builtin{1e30, 1e30};
  for (int r = 0; r < repeats; ++r) {
    const auto p = run_version(**plugin, pool, updates);
    const auto b = run_version(builtin, pool, updates);
    best_plugin = {std::min(best_plugin.fold, p.fold), std::min(best_plugin.version, p.version)};
    best_builtin = {std::min(best_builtin.fold, b.fold), std::min(best_builtin.version, b.version)};
  }

  const double folded = model_bytes * updates / 1e9;
  std::printf("model_bytes=%.0f updates=%d repeats=%d device=%s threads=1 clock=%s plugin=%s\n",
              model_bytes, updates, repeats, device.c_str(), g_cpu_clock ? "thread-cpu" : "wall",
              (*plugin)->describe().c_str());
  std::printf("fold plugin_vs_builtin ratio=%.3f plugin_GBps=%.3f builtin_GBps=%.3f\n",
              best_builtin.fold / best_plugin.fold, folded / best_plugin.fold,
              folded / best_builtin.fold);
  std::printf("version plugin_vs_builtin ratio=%.3f plugin_GBps=%.3f builtin_GBps=%.3f\n",
              best_builtin.version / best_plugin.version, folded / best_plugin.version,
              folded / best_builtin.version);
  return 0;
}

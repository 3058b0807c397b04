/// galore-adamw vs adamw on one square weight (default 4096 x 4096): optimizer step time and
/// optimizer-state memory at several ranks, as ratios galore/adamw measured in one run. The
/// projection is computed (SVD) at galore's first step only (update-interval larger than the
/// run), and that step's time is reported on its own (svd_step_seconds).
///
///   galore_bench [--device cpu|cuda] [--threads N] [--steps N] [--dim N] [--ranks 16,64,256]
#include "runtime/plugin_host/plugin_host.hpp"
#include "runtime/plugin_host/plugin_optimizer.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using namespace flotilla;

struct Options {
  std::string device = "cpu";
  int threads = 2;
  int steps = 5;
  std::int64_t dim = 4096;
  std::vector<std::int64_t> ranks = {16, 64, 256};
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "galore_bench: " << why << "\n"
            << "usage: galore_bench [--device cpu|cuda] [--threads N] [--steps N] [--dim N] "
               "[--ranks 16,64,256]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage("missing value for " + a);
    const std::string v = argv[++i];
    try {
      if (a == "--device") o.device = v;
      else if (a == "--threads") o.threads = std::stoi(v);
      else if (a == "--steps") o.steps = std::stoi(v);
      else if (a == "--dim") o.dim = std::stoll(v);
      else if (a == "--ranks") {
        o.ranks.clear();
        std::stringstream ss(v);
        for (std::string r; std::getline(ss, r, ',');) o.ranks.push_back(std::stoll(r));
      } else usage("unknown option " + a);
    } catch (const std::logic_error&) {
      usage("bad value '" + v + "' for " + a);
    }
  }
  if (o.device != "cpu" && o.device != "cuda") usage("--device is cpu or cuda");
  if (o.threads < 1 || o.steps < 1 || o.dim < 2 || o.ranks.empty()) usage("values must be positive");
  return o;
}

void sync(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

double seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Measured {
  double first_step = 0;  ///< seconds (galore: includes the SVD)
  double step = 0;        ///< mean seconds of the later steps
  std::uint64_t state_bytes = 0;
};

Measured measure(const std::shared_ptr<PluginLibrary>& lib, const PluginOptions& options,
                 const Options& o, const c10::Device& device) {
  at::manual_seed(1);
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  TensorList params = {{"w", at::randn({o.dim, o.dim}, opts)}};
  const TensorList grads = {{"w", at::randn({o.dim, o.dim}, opts) * 1e-3}};
  auto opt = PluginOptimizer::create(lib, options, params).value();
  Measured m;
  sync(device);
  auto start = Clock::now();
  opt->step(grads).value();
  sync(device);
  m.first_step = seconds(start);
  start = Clock::now();
  for (int s = 0; s < o.steps; ++s) opt->step(grads).value();
  sync(device);
  m.step = seconds(start) / o.steps;
  m.state_bytes = opt->state_bytes().value();
  return m;
}

}  // namespace

int main(int argc, char** argv) try {
  const auto o = parse(argc, argv);
  if (o.device == "cuda" && !torch::cuda::is_available()) {
    std::printf("galore_bench: skipped: --device cuda but LibTorch sees no CUDA device\n");
    return 0;
  }
  at::set_num_threads(o.threads);
  const c10::Device device(o.device);
  PluginRegistry registry({FLOTILLA_PLUGIN_DIR}, device);
  const auto adamw = registry.load("adamw", FLOTILLA_KIND_OPTIMIZER).value();
  const auto galore = registry.load("galore-adamw", FLOTILLA_KIND_OPTIMIZER).value();

  std::printf("galore_bench device=%s threads=%d dim=%lld steps=%d\n", o.device.c_str(), o.threads,
              static_cast<long long>(o.dim), o.steps);
  const auto base = measure(adamw, {}, o, device);
  std::printf("adamw step_seconds=%.4f first_step_seconds=%.4f state_bytes=%llu\n", base.step,
              base.first_step, static_cast<unsigned long long>(base.state_bytes));
  for (const auto r : o.ranks) {
    const auto g = measure(galore, {{"rank", std::to_string(r)}, {"update-interval", "1000000000"}},
                           o, device);
    std::printf("galore rank=%lld step_time_ratio=%.3f state_bytes_ratio=%.4f svd_step_seconds=%.3f "
                "step_seconds=%.4f state_bytes=%llu\n",
                static_cast<long long>(r), g.step / base.step,
                static_cast<double>(g.state_bytes) / static_cast<double>(base.state_bytes),
                g.first_step, g.step, static_cast<unsigned long long>(g.state_bytes));
    const auto q = measure(galore, {{"rank", std::to_string(r)}, {"update-interval", "1000000000"},
                                    {"svd", "randomized"}},
                           o, device);
    std::printf("galore rank=%lld svd=randomized svd_step_seconds=%.3f svd_step_vs_exact=%.3f\n",
                static_cast<long long>(r), q.first_step, q.first_step / g.first_step);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "galore_bench: %s\n", e.what());
  return 1;
}

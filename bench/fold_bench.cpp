/// Aggregation benchmark: bytes of updates folded per second by the FedAvg running sum,
/// against memcpy of the same bytes, in one run; plus the extra memory aggregation holds.
///   fold_bench [--mb 64 | --kb 204] [--threads 1]
/// A fold of one update at a time moves 3 bytes per update byte (read sum, read update,
/// write sum) against memcpy's 2, so 0.67 of memcpy is its bound; folding k waiting updates
/// in one pass moves (k+2)/k and can beat memcpy.
#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/base/clock.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <malloc.h>

using namespace flotilla;

namespace {

/// Heap bytes in use now (glibc's own count: exact, unlike RSS, which misses freed memory
/// that malloc reuses).
std::size_t rss_bytes() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

/// A model-shaped list: a few large layers and some small ones, `bytes` in all.
TensorList make_model(std::size_t bytes, int seed) {
  torch::manual_seed(seed);
  const auto floats = static_cast<std::int64_t>(bytes / 4);
  TensorList t;
  t.push_back({"embed.weight", torch::randn({floats / 2})});
  t.push_back({"block.weight", torch::randn({floats / 4})});
  t.push_back({"head.weight", torch::randn({floats / 4 - 1024})});
  t.push_back({"head.bias", torch::randn({1024})});
  return t;
}

double best_of(int reps, const std::function<double()>& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) best = std::min(best, f());
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t mb = 64;
  std::size_t kb = 0;  ///< a small model (e.g. the quick-start CNN's 204 KiB); overrides --mb
  int threads = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--mb") mb = std::stoul(argv[i + 1]);
    else if (a == "--kb") kb = std::stoul(argv[i + 1]);
    else if (a == "--threads") threads = std::stoi(argv[i + 1]);
    else {
      std::cerr << "usage: fold_bench [--mb N | --kb N] [--threads N]\n";
      return 2;
    }
  }
  at::set_num_threads(threads);
  const std::size_t bytes = kb > 0 ? kb << 10 : mb << 20;
  const auto global = make_model(bytes, 0);
  const std::size_t model_bytes = total_bytes(global);
  // A pool of distinct updates, reused cyclically: in a real run each update arrives from
  // the network, is folded and freed, so the pool stands in for "the update in flight".
  std::vector<TensorList> pool;
  for (int k = 0; k < 4; ++k) pool.push_back(make_model(bytes, k + 1));

  // The copy bound, measured into warm memory: the destination is written once before timing
  // (its pages faulted in and its TLB entries hot, as the fold's accumulator is after its
  // first update), sources cycle through the pool as the fold's do, and the faster of glibc's
  // memcpy (non-temporal stores at this size, slow on some VMs) and ATen's copy_ (ordinary
  // stores, what the fold itself does) is the reference.
  TensorList dst;
  for (const auto& nt : pool[0]) dst.push_back({nt.name, at::empty_like(nt.tensor)});
  for (auto& d : dst) d.tensor.fill_(1);
  int cycle = 0;
  const double memcpy_s = best_of(5, [&] {
    const auto& src = pool[static_cast<std::size_t>(cycle++ % 4)];
    auto t = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < src.size(); ++i) {
      std::memcpy(dst[i].tensor.data_ptr(), src[i].tensor.data_ptr(), src[i].tensor.nbytes());
    }
    return seconds_since(t);
  });
  const double copy_s = best_of(5, [&] {
    const auto& src = pool[static_cast<std::size_t>(cycle++ % 4)];
    auto t = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < src.size(); ++i) dst[i].tensor.copy_(src[i].tensor);
    return seconds_since(t);
  });
  const double memcpy_only_gbps = static_cast<double>(model_bytes) / memcpy_s / 1e9;
  const double copy_gbps = static_cast<double>(model_bytes) / copy_s / 1e9;
  const double memcpy_gbps = std::max(memcpy_only_gbps, copy_gbps);

  auto fold_rate = [&](int n_updates, int batch) {
    std::size_t extra_peak = 0;
    const double s = best_of(3, [&] {
      FedAvg fold(global);
      const std::size_t before = rss_bytes();
      auto t = std::chrono::steady_clock::now();
      for (int i = 0; i < n_updates; i += batch) {
        std::vector<WeightedUpdate> ups;
        for (int k = 0; k < batch && i + k < n_updates; ++k) {
          ups.push_back({&pool[static_cast<std::size_t>((i + k) % 4)], 1.0 + k, 0});
        }
        if (!fold.accept_batch(ups)) std::abort();
        extra_peak = std::max(extra_peak, rss_bytes() - std::min(rss_bytes(), before));
      }
      auto result = fold.finalize();
      extra_peak = std::max(extra_peak, rss_bytes() - std::min(rss_bytes(), before));
      return seconds_since(t);
    });
    const double gbps = static_cast<double>(model_bytes) * n_updates / s / 1e9;
    return std::pair{gbps, static_cast<double>(extra_peak) / static_cast<double>(model_bytes)};
  };

  std::cout << "model_bytes=" << model_bytes << " threads=" << threads << "\n";
  std::cout << "warm copy: memcpy GBps=" << memcpy_only_gbps << " aten_copy GBps=" << copy_gbps
            << " reference (the faster) GBps=" << memcpy_gbps << "\n";
  for (int n : {4, 64}) {
    auto [gbps, extra] = fold_rate(n, 1);
    std::cout << "fold one-at-a-time N=" << n << " GBps=" << gbps << " ratio_vs_memcpy="
              << gbps / memcpy_gbps << " extra_model_copies=" << extra << "\n";
  }
  for (int batch : {2, 4}) {
    auto [gbps, extra] = fold_rate(64, batch);
    std::cout << "fold batched-" << batch << " N=64 GBps=" << gbps << " ratio_vs_memcpy="
              << gbps / memcpy_gbps << " extra_model_copies=" << extra << "\n";
  }

  // The usual Python way: a weighted copy of every update, then a reduce-add per layer.
  {
    const int n = 4;
    std::size_t before = rss_bytes(), peak = 0;
    const double s = best_of(2, [&] {
      before = rss_bytes();
      auto t = std::chrono::steady_clock::now();
      std::vector<TensorList> weighted;
      for (int k = 0; k < n; ++k) {
        TensorList w;
        for (const auto& nt : pool[static_cast<std::size_t>(k)]) w.push_back({nt.name, nt.tensor * (1.0 + k)});
        weighted.push_back(std::move(w));
        peak = std::max(peak, rss_bytes() - std::min(rss_bytes(), before));
      }
      TensorList out;
      for (std::size_t i = 0; i < global.size(); ++i) {
        auto sum = weighted[0][i].tensor.clone();
        for (int k = 1; k < n; ++k) sum = sum + weighted[static_cast<std::size_t>(k)][i].tensor;
        out.push_back({global[i].name, sum / 10.0});
      }
      peak = std::max(peak, rss_bytes() - std::min(rss_bytes(), before));
      return seconds_since(t);
    });
    const double gbps = static_cast<double>(model_bytes) * n / s / 1e9;
    std::cout << "naive copies-then-reduce N=" << n << " GBps=" << gbps << " ratio_vs_memcpy="
              << gbps / memcpy_gbps << " extra_model_copies="
              << static_cast<double>(peak) / static_cast<double>(model_bytes) << "\n";
  }
  return 0;
}

/// What the BLAS under LibTorch is worth: 1024² float matmul GFLOP/s and the quick start's CNN
/// training throughput. scripts/bench.sh runs it with the installed OpenBLAS and again with
/// Debian's reference BLAS (LD_LIBRARY_PATH) and prints the ratio.
///   blas_bench [--threads 2]
#include "runtime/ml/model.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <string>

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int threads = 2;
  if (argc == 3 && std::string(argv[1]) == "--threads") threads = std::stoi(argv[2]);
  at::set_num_threads(threads);
  torch::manual_seed(0);

  auto a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  (void)torch::mm(a, b);
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    auto t = Clock::now();
    auto c = torch::mm(a, b);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t).count());
  }
  std::cout << "matmul1024 GFLOPs=" << 2.0 * 1024 * 1024 * 1024 / best / 1e9 << "\n";

  flotilla::ModelSpec spec;
  spec.name = "cnn";
  spec.hidden = 64;
  auto model = flotilla::Model::create(spec, c10::Device(c10::kCPU), 0).value();
  auto* module = static_cast<torch::nn::Module*>(model->module());
  torch::optim::SGD opt(module->parameters(), torch::optim::SGDOptions(0.01));
  auto x = torch::randn({32, 1, 28, 28});
  auto y = torch::randint(0, 10, {32}, torch::kLong);
  auto step = [&] {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    loss.backward();
    opt.step();
  };
  for (int i = 0; i < 5; ++i) step();
  const int steps = 50;
  auto t = Clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double s = std::chrono::duration<double>(Clock::now() - t).count();
  std::cout << "cnn_train samples_per_s=" << steps * 32 / s << "\n";
  return 0;
}

/// Tokens per second of local training of the LLaMA-layout language model through Flotilla's
/// trainer (train_local: the optimizer plugin behind the C ABI, the objective, the shuffling
/// and the bookkeeping) against a bare LibTorch loop over the same model, batches and
/// optimizer rule (SGD with momentum). Prints the ratio; both are timed in this one run,
/// alternating, best of --repeats.
#include "bench/lm_shape.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

namespace {

struct Options {
  flotilla::bench::LmShape shape{256, 128, 344, 4, 4, 2, 128, 8};
  std::int64_t steps = 20, examples = 256;
  int repeats = 3, threads = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const auto v = std::stoll(argv[i + 1]);
    if (o.shape.take(f, v)) continue;
    if (f == "--steps") o.steps = v;
    else if (f == "--repeats") o.repeats = static_cast<int>(v);
    else if (f == "--threads") o.threads = static_cast<int>(v);
    else {
      std::cerr << "lm_bench: unknown flag " << f << "\n";
      std::exit(2);
    }
  }
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace flotilla;
  const auto o = parse(argc, argv);
  at::set_num_threads(o.threads);
  const ModelSpec spec = o.shape.spec();
  const c10::Device cpu(c10::kCPU);
  torch::manual_seed(3);
  Dataset data;
  data.inputs = torch::randint(o.shape.vocab, {o.examples, o.shape.seq}, torch::kInt64);
  data.labels = data.inputs.clone();
  TrainingConfig config;
  config.local_steps = static_cast<std::uint32_t>(o.steps);
  config.batch_size = static_cast<std::uint32_t>(o.shape.batch);
  config.learning_rate = 0.01F;
  config.momentum = 0.9F;
  PluginRegistry registry({}, cpu);
  auto sgd = registry.load("sgd", FLOTILLA_KIND_OPTIMIZER);
  if (!sgd) {
    std::cerr << sgd.error().message << "\n";
    return 1;
  }
  auto flotilla_model = Model::create(spec, cpu, 1).value();
  auto bare_model = Model::create(spec, cpu, 1).value();
  const double tokens = static_cast<double>(o.steps * o.shape.batch * (o.shape.seq - 1));

  auto run_flotilla = [&] {
    auto opt = make_optimizer(*sgd, {}, config, *flotilla_model).value();
    const auto start = std::chrono::steady_clock::now();
    (void)train_local(*flotilla_model, data, config, *opt);
    return seconds_since(start);
  };
  auto run_bare = [&] {
    auto* module = static_cast<torch::nn::Module*>(bare_model->module());
    module->train();
    std::vector<torch::Tensor> params;
    for (auto& p : module->parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    torch::optim::SGD opt(params, torch::optim::SGDOptions(config.learning_rate).momentum(config.momentum));
    const auto start = std::chrono::steady_clock::now();
    for (std::int64_t s = 0; s < o.steps; ++s) {
      const auto begin = (s * o.shape.batch) % (o.examples - o.shape.batch + 1);
      const auto x = data.inputs.narrow(0, begin, o.shape.batch);
      opt.zero_grad();
      const auto logits = bare_model->forward(x);
      const auto v = logits.size(2);
      auto loss = torch::nn::functional::cross_entropy(logits.narrow(1, 0, o.shape.seq - 1).reshape({-1, v}),
                                                       x.narrow(1, 1, o.shape.seq - 1).reshape({-1}));
      loss.backward();
      opt.step();
    }
    return seconds_since(start);
  };
  (void)run_bare();  // warm-up: allocator, kernels
  (void)run_flotilla();
  double best_bare = 1e30, best_flotilla = 1e30;
  for (int r = 0; r < o.repeats; ++r) {
    best_bare = std::min(best_bare, run_bare());
    best_flotilla = std::min(best_flotilla, run_flotilla());
  }
  std::printf("llama %lld layers, hidden %lld, %lld parameters; batch %lld x %lld tokens, %lld steps, %d thread(s)\n",
              static_cast<long long>(o.shape.layers), static_cast<long long>(o.shape.hidden),
              static_cast<long long>(flotilla_model->num_parameters()), static_cast<long long>(o.shape.batch),
              static_cast<long long>(o.shape.seq), static_cast<long long>(o.steps), o.threads);
  std::printf("bare LibTorch loop:    %10.0f tokens/s\n", tokens / best_bare);
  std::printf("flotilla train_local:  %10.0f tokens/s\n", tokens / best_flotilla);
  std::printf("ratio (flotilla/bare): %10.3f\n", best_bare / best_flotilla);
  return 0;
}

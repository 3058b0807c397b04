/// Memory one client needs to train, by method, on a LLaMA-layout LM: the weights, the
/// gradients of what it trains, the optimizer's state (as the optimizer plugin reports it after a
/// step), and the activations one batch keeps for its backward pass (the C heap grown by the
/// forward pass while its graph is alive, measured). Also what the client sends per round. The
/// study's point in bytes: LoRA and GaLore both shrink the optimizer state; only LoRA shrinks
/// what is sent; full fine-tuning of one module (`up_proj`) sits in between.
#include "bench/lm_shape.hpp"
#include "runtime/base/process.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace {

struct Options {
  flotilla::bench::LmShape shape{32000, 512, 1376, 4, 8, 4, 256, 4};
  std::int64_t rank = 16;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const auto v = std::stoll(argv[i + 1]);
    if (o.shape.take(f, v)) continue;
    if (f == "--rank") o.rank = v;
    else {
      std::cerr << "memory_bench: unknown flag " << f << "\n";
      std::exit(2);
    }
  }
  return o;
}

std::string mib(double bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f", bytes / (1024.0 * 1024.0));
  return s;
}

struct Method {
  const char* name;
  const char* optimizer;
  std::int64_t rank;  // LoRA rank; 0 = full weights
  bool freeze_a;
  std::vector<std::string> trainable;  // without LoRA: these layers only; empty = all
};

}  // namespace

int main(int argc, char** argv) {
  using namespace flotilla;
  const auto o = parse(argc, argv);
  at::set_num_threads(1);
  const c10::Device cpu(c10::kCPU);
  PluginRegistry registry({}, cpu);
  const std::vector<Method> methods = {
      {"full fine-tuning, all weights (AdamW)", "adamw", 0, false, {}},
      {"full fine-tuning of up_proj (FedAvg, AdamW)", "adamw", 0, false, {"up_proj"}},
      {"GaLore on up_proj (galore-adamw)", "galore-adamw", 0, false, {"up_proj"}},
      {"LoRA on up_proj (FedIT, FedEx-LoRA, FLoRA...)", "adamw", o.rank, false, {}},
      {"FFA-LoRA on up_proj (B only)", "adamw", o.rank, true, {}},
  };
  torch::manual_seed(3);
  const auto batch = torch::randint(o.shape.vocab, {o.shape.batch, o.shape.seq}, torch::kInt64);
  std::printf("llama %lld layers, hidden %lld, intermediate %lld, vocab %lld; batch %lld x %lld tokens; rank %lld\n",
              static_cast<long long>(o.shape.layers), static_cast<long long>(o.shape.hidden), static_cast<long long>(o.shape.intermediate),
              static_cast<long long>(o.shape.vocab), static_cast<long long>(o.shape.batch), static_cast<long long>(o.shape.seq),
              static_cast<long long>(o.rank));
  std::printf("%-46s %12s %10s %10s %10s %12s %10s %12s\n", "method (MiB)", "trainable", "weights", "gradients",
              "optimizer", "activations", "total", "sent/round");
  for (const auto& m : methods) {
    ModelSpec spec = o.shape.spec();
    spec.lora.rank = m.rank;
    spec.lora.alpha = 2.0 * static_cast<double>(m.rank);
    spec.lora.targets = {"up_proj"};
    spec.lora.freeze_a = m.freeze_a;
    spec.trainable = m.trainable;
    auto model = Model::create(spec, cpu, 1);
    if (!model) {
      std::cerr << model.error().message << "\n";
      return 1;
    }
    auto library = registry.load(m.optimizer, FLOTILLA_KIND_OPTIMIZER);
    if (!library) {
      std::cerr << library.error().message << "\n";
      return 1;
    }
    TrainingConfig config;
    config.learning_rate = 1e-4F;
    PluginOptions options;
    if (std::string(m.optimizer) == "galore-adamw") options = {{"rank", std::to_string(o.rank)}, {"update-interval", "200"}};
    auto opt = make_optimizer(*library, options, config, **model);
    if (!opt) {
      std::cerr << opt.error().message << "\n";
      return 1;
    }
    double weights = 0, trainable = 0;
    for (const auto& p : static_cast<torch::nn::Module*>((*model)->module())->parameters()) {
      weights += static_cast<double>(p.numel() * p.element_size());
      if (p.requires_grad()) trainable += static_cast<double>(p.numel() * p.element_size());
    }
    // One step: the forward pass's graph held while the heap is read, then backward and the step.
    auto* module = static_cast<torch::nn::Module*>((*model)->module());
    module->train();
    const auto before = static_cast<double>(heap_bytes_in_use());
    auto logits = (*model)->forward(batch);
    auto score = score_batch(logits, batch, Objective::causal_lm);
    const auto activations = static_cast<double>(heap_bytes_in_use()) - before;
    score.loss.backward();
    if (auto ok = (*opt)->step(); !ok) {
      std::cerr << ok.error().message << "\n";
      return 1;
    }
    const auto state_bytes = (*opt)->state_bytes();
    const auto state = state_bytes ? static_cast<double>(*state_bytes) : 0.0;
    double sent = 0;
    for (const auto& t : (*model)->trainable_state()) sent += static_cast<double>(t.tensor.numel() * t.tensor.element_size());
    std::printf("%-46s %12s %10s %10s %10s %12s %10s %12s\n", m.name, mib(trainable).c_str(), mib(weights).c_str(),
                mib(trainable).c_str(), mib(state).c_str(), mib(activations).c_str(),
                mib(weights + trainable + state + activations).c_str(), mib(sent).c_str());
  }
  return 0;
}

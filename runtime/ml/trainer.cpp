#include "runtime/ml/trainer.hpp"

#include "runtime/base/clock.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>

namespace flotilla {
namespace {

torch::nn::Module& as_module(Model& model) {
  return *static_cast<torch::nn::Module*>(model.module());
}

/// Restores a module's train/eval mode on scope exit.
class ModeGuard {
 public:
  ModeGuard(torch::nn::Module& m, bool train) : module_(m), was_training_(m.is_training()) {
    module_.train(train);
  }
  ~ModeGuard() { module_.train(was_training_); }
  ModeGuard(const ModeGuard&) = delete;
  ModeGuard& operator=(const ModeGuard&) = delete;

 private:
  torch::nn::Module& module_;
  bool was_training_;
};

/// `v` as text that parses back to exactly the same double.
std::string exact(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

/// `v` as a person writes it ("0.9").
std::string shown(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

BatchScore score_batch(const at::Tensor& logits, const at::Tensor& labels, Objective objective) {
  namespace F = torch::nn::functional;
  at::Tensor flat_logits = logits, flat_labels = labels;
  if (objective == Objective::causal_lm) {
    // Token t predicts token t + 1: the last position predicts nothing, the first is not predicted.
    const auto t = logits.size(1);
    flat_logits = logits.narrow(1, 0, t - 1).reshape({-1, logits.size(2)});
    flat_labels = labels.narrow(1, 1, t - 1).reshape({-1});
  }
  const auto sum = F::cross_entropy(flat_logits, flat_labels,
                                    F::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(kIgnoreLabel));
  const auto scored = flat_labels.ne(kIgnoreLabel);
  BatchScore out;
  out.counted = scored.sum();
  out.loss_sum = sum;
  out.loss = sum / out.counted.clamp_min(1);
  out.correct = flat_logits.detach().argmax(1).eq(flat_labels).logical_and(scored).sum();
  return out;
}

TensorList trainable_parameters(Model& model) {
  TensorList out;
  for (const auto& p : as_module(model).named_parameters(/*recurse=*/true)) {
    if (p.value().requires_grad()) out.push_back({p.key(), p.value()});
  }
  return out;
}

Expected<PluginOptions> optimizer_options(const PluginInfo& plugin, const PluginOptions& options,
                                          const TrainingConfig& config) {
  const std::pair<const char*, double> from_training[] = {
      {"learning-rate", config.learning_rate},
      {"momentum", config.momentum},
      {"weight-decay", config.weight_decay}};
  PluginOptions out = options;
  for (const auto& [key, value] : from_training) {
    if (options.count(key) != 0) {
      return Error{Errc::invalid_config, std::string("training.options.") + key +
                                             " duplicates training." + key + "; set it in [training]"};
    }
    if (plugin.option(key) != nullptr) {
      out[key] = exact(value);
    } else if (value != 0 && std::string(key) != "learning-rate") {
      return Error{Errc::invalid_config,
                   std::string("training.") + key + " is " + shown(value) +
                       ", but training.optimizer '" + plugin.name + "' has no option '" + key +
                       "'; set training." + key + " = 0 or use an optimizer with " + key};
    }
  }
  return out;
}

Expected<std::unique_ptr<PluginOptimizer>> make_optimizer(std::shared_ptr<PluginLibrary> plugin,
                                                          const PluginOptions& options,
                                                          const TrainingConfig& config, Model& model,
                                                          const std::string& where) {
  auto opts = optimizer_options(plugin->info(), options, config);
  if (!opts) return opts.error();
  return PluginOptimizer::create(std::move(plugin), *opts, trainable_parameters(model), where);
}

TrainStats train_local(Model& model, const Dataset& data, const TrainingConfig& config,
                       PluginOptimizer& optimizer) {
  if (config.batch_size == 0) throw Failure(Errc::invalid_config, "batch-size must be > 0, got 0");
  if (!(config.learning_rate > 0)) {
    throw Failure(Errc::invalid_config,
                  "learning-rate must be > 0, got " + std::to_string(config.learning_rate));
  }
  const auto start = std::chrono::steady_clock::now();
  TrainStats stats;
  const std::int64_t n = data.size();
  stats.num_examples = static_cast<std::uint64_t>(n);
  if (n == 0) return stats;

  auto& module = as_module(model);
  const ModeGuard mode(module, true);
  const auto device = model.device();
  // Client datasets are small: one transfer up front beats one per batch.
  const auto inputs = data.inputs.to(device);
  const auto labels = data.labels.to(device);

  const auto batch = static_cast<std::int64_t>(config.batch_size);
  const std::int64_t batches_per_epoch = (n + batch - 1) / batch;
  const std::int64_t total_steps = config.local_steps > 0
                                       ? static_cast<std::int64_t>(config.local_steps)
                                       : batches_per_epoch * config.local_epochs;

  std::mt19937_64 rng(config.seed);
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  torch::Tensor order_tensor;
  std::int64_t pos = n;  // forces a shuffle before the first batch
  // Summed on the device and read once at the end: a per-step .item() would sync a GPU.
  auto loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  auto correct = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  auto counted = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  std::int64_t seen = 0;
  const auto objective = model.spec().objective();

  for (std::int64_t step = 0; step < total_steps; ++step) {
    if (pos >= n) {
      std::iota(order.begin(), order.end(), std::int64_t{0});
      shuffle(order, rng);  // runtime/ml/data.hpp: the same order on every LibTorch version
      order_tensor =
          torch::from_blob(order.data(), {n}, torch::kInt64).to(device, torch::kInt64, false, true);
      pos = 0;
    }
    const std::int64_t len = std::min(batch, n - pos);
    const auto index = order_tensor.narrow(0, pos, len);
    pos += len;
    const auto x = inputs.index_select(0, index);
    const auto y = labels.index_select(0, index);

    for (const auto& p : optimizer.params()) p.tensor.mutable_grad().reset();
    const auto logits = model.forward(x);
    auto score = score_batch(logits, y, objective);
    score.loss.backward();
    if (auto ok = optimizer.step(); !ok) throw Failure(ok.error());

    loss_sum += score.loss.detach().to(torch::kFloat64);
    correct += score.correct;
    counted += score.counted;
    seen += len;
  }
  stats.steps = static_cast<std::uint64_t>(total_steps);
  stats.examples_seen = static_cast<std::uint64_t>(seen);
  if (auto bytes = optimizer.state_bytes()) stats.optimizer_state_bytes = *bytes;
  if (total_steps > 0) {
    stats.loss = loss_sum.item<double>() / static_cast<double>(total_steps);
    stats.accuracy = static_cast<double>(correct.item<std::int64_t>()) /
                     static_cast<double>(std::max<std::int64_t>(1, counted.item<std::int64_t>()));
  }
  stats.seconds = seconds_since(start);
  return stats;
}

EvalStats evaluate(Model& model, const Dataset& data, std::int64_t batch_size) {
  if (batch_size < 1) {
    throw Failure(Errc::invalid_argument,
                  "evaluation batch size must be > 0, got " + std::to_string(batch_size));
  }
  const auto start = std::chrono::steady_clock::now();
  EvalStats stats;
  const std::int64_t n = data.size();
  stats.num_examples = static_cast<std::uint64_t>(n);
  if (n == 0) return stats;

  torch::NoGradGuard no_grad;
  const ModeGuard mode(as_module(model), false);
  const auto device = model.device();
  auto loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  auto correct = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  auto counted = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  const auto objective = model.spec().objective();
  for (std::int64_t begin = 0; begin < n; begin += batch_size) {
    const std::int64_t len = std::min(batch_size, n - begin);
    const auto logits = model.forward(data.inputs.narrow(0, begin, len));
    const auto y = data.labels.narrow(0, begin, len).to(device);
    const auto score = score_batch(logits, y, objective);
    loss_sum += score.loss_sum.to(torch::kFloat64);
    correct += score.correct;
    counted += score.counted;
  }
  // Per example (classification) or per predicted token (a language model: exp(loss) is the
  // held-out perplexity).
  const auto scored = static_cast<double>(std::max<std::int64_t>(1, counted.item<std::int64_t>()));
  stats.loss = loss_sum.item<double>() / scored;
  stats.accuracy = static_cast<double>(correct.item<std::int64_t>()) / scored;
  stats.seconds = seconds_since(start);
  return stats;
}

}  // namespace flotilla

#pragma once
/// Local training in tests: the built-in adamw plugin through the trainer, as a client runs it.
#include "runtime/base/error.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

namespace flotilla {

/// Trains `model` on `data` for `steps` mini-batches of `batch` with AdamW at `learning_rate`.
/// Throws Failure when the plugin cannot be loaded or created (the test then fails with it).
inline TrainStats train_with_adamw(Model& model, const Dataset& data, std::uint32_t steps, std::uint32_t batch,
                                   float learning_rate) {
  PluginRegistry registry({}, c10::Device(c10::kCPU));
  auto adamw = registry.load("adamw", FLOTILLA_KIND_OPTIMIZER);
  if (!adamw) throw Failure(adamw.error());
  TrainingConfig config;
  config.local_steps = steps;
  config.batch_size = batch;
  config.learning_rate = learning_rate;
  auto opt = make_optimizer(*adamw, {}, config, model);
  if (!opt) throw Failure(opt.error());
  return train_local(model, data, config, **opt);
}

}  // namespace flotilla

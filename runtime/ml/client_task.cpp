#include "runtime/ml/client_task.hpp"

#include <ATen/ATen.h>

#include <algorithm>

namespace flotilla {

Expected<TensorList> delta_against(const TensorList& trained, const TensorList& received) {
  TensorList out;
  out.reserve(trained.size());
  for (const auto& t : trained) {
    auto it = std::find_if(received.begin(), received.end(),
                           [&](const NamedTensor& r) { return r.name == t.name; });
    if (it == received.end()) {
      return Error{Errc::internal, "the task carried no '" + t.name + "' to compute a delta against"};
    }
    if (!at::isFloatingType(t.tensor.scalar_type())) {
      out.push_back(t);
      continue;
    }
    out.push_back({t.name, t.tensor.sub(it->tensor.to(t.tensor.device(), t.tensor.scalar_type()))});
  }
  return out;
}

namespace {
bool named(const NamedTensor& t, const std::vector<std::string>& names) {
  return std::find(names.begin(), names.end(), t.name) != names.end();
}
}  // namespace

TensorList shared_part(TensorList trained, const std::vector<std::string>& keep_local) {
  if (keep_local.empty()) return trained;
  std::erase_if(trained, [&](const NamedTensor& t) { return named(t, keep_local); });
  return trained;
}

TensorList local_part(TensorList trained, const std::vector<std::string>& keep_local) {
  std::erase_if(trained, [&](const NamedTensor& t) { return !named(t, keep_local); });
  return trained;
}

TensorList restore_uncarried(const TensorList& initial, std::set<std::string>& loaded,
                             const TensorList& carried, const std::vector<std::string>& keep_local) {
  std::set<std::string> now;
  for (const auto& t : carried) now.insert(t.name);
  TensorList out;
  for (const auto& t : initial) {
    if (loaded.count(t.name) != 0 && now.count(t.name) == 0 && !named(t, keep_local)) {
      out.push_back(t);
    }
  }
  loaded.insert(now.begin(), now.end());
  return out;
}

Expected<TaskResult> run_task(Model& model, const Dataset& data, const Task& task,
                              std::shared_ptr<PluginLibrary> optimizer_plugin,
                              const PluginOptions& optimizer_options, const std::string& where) {
  // A task carries what changed since the run's initial model and what this client trains;
  // the rest keep their value (the initial one, or this client's own: keep_local).
  if (auto ok = model.load_tensors(task.tensors); !ok) {
    return Error{Errc::rejected, "cannot use the model of task " + std::to_string(task.round) + ": " +
                                     ok.error().message};
  }
  auto optimizer = make_optimizer(std::move(optimizer_plugin), optimizer_options, task.config, model, where);
  if (!optimizer) return optimizer.error();
  TaskResult result;
  result.stats = train_local(model, data, task.config, **optimizer);
  auto& u = result.update;
  u.round = task.round;
  u.base_model_version = task.model_version;
  u.num_examples = result.stats.num_examples;
  u.metrics = {{"loss", result.stats.loss},
               {"accuracy", result.stats.accuracy},
               {"seconds", result.stats.seconds},
               {"steps", static_cast<double>(result.stats.steps)}};
  // Exactly what was trained (the full weights, or only the LoRA adapters), less what the
  // method keeps on the client.
  u.tensors = shared_part(model.trainable_state(), task.keep_local);
  if (task.send_delta) {
    auto delta = delta_against(u.tensors, task.tensors);
    if (!delta) return delta.error();
    u.tensors = std::move(delta).value();
    u.is_delta = true;
  }
  return result;
}

}  // namespace flotilla

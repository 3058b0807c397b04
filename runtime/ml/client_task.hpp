#pragma once
/// What a client does with one task, as plain code (no actor, no socket): load the task's
/// model, train it with a fresh optimizer from the plugin, and build the update (the trained
/// tensors, or their delta against what the task carried when it asks for one). The client
/// actor calls it; so can a test, and a simulator.
#include "runtime/ml/data.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/protocol/message.hpp"

#include <memory>
#include <set>
#include <string>

namespace flotilla {

struct TaskResult {
  Update update;
  TrainStats stats;
};

/// Runs `task` on `model` with `data`. `optimizer_plugin` and `optimizer_options` make a fresh
/// optimizer ([training.options]; `where` names them in errors). Errc::rejected if the task's
/// model does not fit this client's model; the optimizer's errors as make_optimizer reports them.
[[nodiscard]] Expected<TaskResult> run_task(Model& model, const Dataset& data, const Task& task,
                                            std::shared_ptr<PluginLibrary> optimizer_plugin,
                                            const PluginOptions& optimizer_options,
                                            const std::string& where = "training.options");

/// `trained` without the tensors named in `keep_local` (what a client sends).
[[nodiscard]] TensorList shared_part(TensorList trained, const std::vector<std::string>& keep_local);
/// Only the tensors of `trained` named in `keep_local` (what a client keeps to itself).
[[nodiscard]] TensorList local_part(TensorList trained, const std::vector<std::string>& keep_local);

/// For a model several peers share (the simulator's workers): the tensors to put back before
/// loading `carried` (a task's or an evaluation request's tensors): each one an earlier load
/// brought in (`loaded`) that `carried` neither carries nor keeps (`keep_local`), at its value in
/// `initial` (the model as built). Adds `carried`'s names to `loaded`. Without it a task of an
/// older version would train on what a newer one left, where a client process would not.
[[nodiscard]] TensorList restore_uncarried(const TensorList& initial, std::set<std::string>& loaded,
                                           const TensorList& carried,
                                           const std::vector<std::string>& keep_local);

/// `trained` minus the tensors of the same names in `received` (floating tensors; others are
/// sent as they are). Errc::internal if `received` lacks one of them.
[[nodiscard]] Expected<TensorList> delta_against(const TensorList& trained, const TensorList& received);

}  // namespace flotilla

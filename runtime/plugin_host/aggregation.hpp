#pragma once
/// The aggregator's seam: accept one update at a time, then finalize a new model version.
/// FedAvg is built in (runtime/plugin_host/fedavg.hpp); aggregation plugins will implement this same
/// interface behind the C ABI, and asynchronous schedules call it with a staleness.
#include "runtime/base/error.hpp"
#include "runtime/base/tensor.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace flotilla {

class PluginLibrary;

struct WeightedUpdate {
  const TensorList* tensors = nullptr;
  double weight = 0;            ///< e.g. the client's number of training examples
  std::uint64_t staleness = 0;  ///< versions between the update's base and the current model
  std::uint32_t client_id = 0;
};

/// What a method declares about itself (a plugin: its flags), so that a schedule can refuse a
/// combination that makes no sense, by what the method says rather than by its name.
struct AggregationTraits {
  /// Its finalize needs many updates at once to mean anything, or costs a decomposition per
  /// version (robust rules, FlexLoRA's SVD): refused where every update is a version (async).
  bool needs_cohort = false;
  /// It keeps the global model between versions and steps it itself (server optimizers):
  /// refused where the schedule moves the model on its own (async mixing, a buffered η_g ≠ 1).
  bool tracks_global = false;
  /// Since ABI 1.2, what a LoRA method needs (FLOTILLA_AGG_LORA_*): it aggregates adapters
  /// (the run's model must have them)...
  bool lora_adapters = false;
  /// ... keeps A frozen at its shared initialisation (clients train and send only B) ...
  bool lora_frozen_a = false;
  /// ... leaves B with each client (clients keep theirs and send only A) ...
  bool lora_local_b = false;
  /// ... needs A trained too (it multiplies each client's B·A).
  bool lora_trains_a = false;
  /// It may write into tensors clients do not train (e.g. fold a residual into base weights).
  bool writes_base = false;
  /// It serves each client a model of its own (client_model: e.g. at the client's LoRA rank).
  bool per_client = false;
  /// Every update must carry every tensor of the global model (the built-in FedAvg fold).
  bool full_model = false;

  bool operator==(const AggregationTraits&) const = default;
};

class Aggregation {
 public:
  virtual ~Aggregation() = default;

  /// Whether `accept` would take this update: the method decides what an update must look
  /// like (FedAvg: the global model's names, order, shapes and dtypes; a LoRA method: only
  /// the adapters). Errc::rejected names the first problem. Cheap: metadata only.
  [[nodiscard]] virtual Expected<void> check(const WeightedUpdate& update) const = 0;

  /// Folds one update in. An update `check` refuses is Errc::rejected, and nothing already
  /// accepted changes.
  [[nodiscard]] virtual Expected<void> accept(const WeightedUpdate& update) = 0;

  /// Folds several waiting updates in one pass over memory (faster than one at a time).
  /// All are validated first; if any is bad, none is folded.
  [[nodiscard]] virtual Expected<void> accept_batch(std::span<const WeightedUpdate> updates) = 0;

  /// Updates accepted since the last finalize.
  [[nodiscard]] virtual std::size_t accepted() const = 0;

  /// The new global model from the updates accepted so far; resets for the next version.
  /// Requires accepted() > 0.
  [[nodiscard]] virtual TensorList finalize() = 0;

  /// Drops the updates accepted so far (a failed round) without producing a version.
  virtual void discard() = 0;

  /// What client `client_id` loads instead of the global model's tensors of the same names
  /// (methods with per-client models, e.g. FlexLoRA at each client's rank), shaped like
  /// `client_template`; nothing = the global model as it is.
  [[nodiscard]] virtual std::optional<TensorList> client_model(std::uint32_t client_id,
                                                               const TensorList& client_template) {
    return std::nullopt;
  }

  [[nodiscard]] virtual AggregationTraits traits() const { return {}; }

  /// The schedule's model after it moved it (mixing): what finalize overlays from now on.
  virtual void set_global(const TensorList& global) {}

  /// For logs: "fedavg (built in)", "fedadam 1.0.0 (/path/flotilla-fedadam.so)".
  [[nodiscard]] virtual std::string describe() const = 0;

  /// The plugin behind it, if any ("" for a built-in method).
  [[nodiscard]] virtual std::string plugin_name() const { return ""; }

  /// The method's state between versions (server moments, ...), for checkpoints: empty for a
  /// method that keeps none. Only at a safe point: accepted() == 0.
  [[nodiscard]] virtual Expected<TensorList> export_state() { return TensorList{}; }
  /// Continues from what export_state() returned (a checkpoint's, maybe of an older build).
  [[nodiscard]] virtual Expected<void> import_state(const TensorList& saved) {
    if (saved.empty()) return {};
    return Error{Errc::invalid_argument, describe() + " keeps no state, but the checkpoint has " +
                                             std::to_string(saved.size()) + " tensor(s) of it"};
  }

  /// Switches to a new build of the same plugin, keeping the method's state between versions.
  /// Only at a safe point: accepted() == 0. On failure the old version keeps running.
  [[nodiscard]] virtual Expected<void> reload(std::shared_ptr<PluginLibrary> library) {
    return Error{Errc::invalid_argument, describe() + " is not a plugin and cannot be reloaded"};
  }
};

}  // namespace flotilla

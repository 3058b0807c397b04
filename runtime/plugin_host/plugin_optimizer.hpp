#pragma once
/// An optimizer plugin over a model's parameters (client side): LibTorch computes the
/// gradients, the plugin steps the parameters in place.
#include "runtime/plugin_host/plugin_host.hpp"

#include <memory>

namespace flotilla {

class PluginOptimizer {
 public:
  /// Creates the plugin's state for `params` (the live parameter tensors, which steps update in
  /// place) with `options` (checked against its specs, named `where` in errors).
  [[nodiscard]] static Expected<std::unique_ptr<PluginOptimizer>> create(
      std::shared_ptr<PluginLibrary> library, const PluginOptions& options, const TensorList& params,
      const std::string& where = "training.options");
  ~PluginOptimizer();
  PluginOptimizer(const PluginOptimizer&) = delete;
  PluginOptimizer& operator=(const PluginOptimizer&) = delete;

  /// One step from the parameters' current .grad() (a parameter without one is skipped).
  [[nodiscard]] Expected<void> step();
  /// One step with explicit gradients (same order as the parameters; undefined = none).
  [[nodiscard]] Expected<void> step(const TensorList& grads);
  /// Bytes of optimizer state the plugin holds.
  [[nodiscard]] Expected<std::uint64_t> state_bytes() const;
  [[nodiscard]] Expected<TensorList> save() const;
  [[nodiscard]] Expected<void> load(const TensorList& saved);

  [[nodiscard]] const PluginLibrary& library() const { return *library_; }
  [[nodiscard]] const TensorList& params() const { return params_; }

 private:
  PluginOptimizer(std::shared_ptr<PluginLibrary> library, TensorList params)
      : library_(std::move(library)), params_(std::move(params)), dl_params_(params_) {}
  [[nodiscard]] const flotilla_optimizer_api& api() const { return *library_->plugin().optimizer; }

  std::shared_ptr<PluginLibrary> library_;
  TensorList params_;
  DlTensors dl_params_;
  void* state_ = nullptr;
};

}  // namespace flotilla

#pragma once
/// An aggregation plugin behind the core's Aggregation seam (runtime/plugin_host/aggregation.hpp): the round
/// logic calls it exactly as it calls the built-in FedAvg.
#include "runtime/plugin_host/aggregation.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

#include <memory>
#include <set>
#include <optional>

namespace flotilla {

/// What an aggregator plugin declares (its aggregator_flags) as the seam's traits.
[[nodiscard]] AggregationTraits traits_of(const PluginInfo& info);

class PluginAggregation final : public Aggregation {
 public:
  /// Creates the plugin's state for `global` with `options` (checked against its specs).
  [[nodiscard]] static Expected<std::unique_ptr<PluginAggregation>> create(
      std::shared_ptr<PluginLibrary> library, PluginOptions options, const TensorList& global);
  ~PluginAggregation() override;

  [[nodiscard]] Expected<void> check(const WeightedUpdate& update) const override;
  [[nodiscard]] Expected<void> accept(const WeightedUpdate& update) override;
  /// Folds one update after the other; a failing one is left out (the others stay folded) and
  /// the first failure is returned. accepted() tells how many were taken.
  [[nodiscard]] Expected<void> accept_batch(std::span<const WeightedUpdate> updates) override;
  [[nodiscard]] std::size_t accepted() const override { return accepted_; }
  /// Throws Failure if the plugin fails (the round then fails; the global model is unchanged).
  [[nodiscard]] TensorList finalize() override;
  void discard() override;
  [[nodiscard]] std::optional<TensorList> client_model(std::uint32_t client_id,
                                                       const TensorList& client_template) override;
  [[nodiscard]] std::string describe() const override;
  [[nodiscard]] AggregationTraits traits() const override;
  void set_global(const TensorList& global) override { global_ = global; }
  [[nodiscard]] Expected<void> reload(std::shared_ptr<PluginLibrary> library) override;
  [[nodiscard]] Expected<TensorList> export_state() override;
  [[nodiscard]] Expected<void> import_state(const TensorList& saved) override;
  [[nodiscard]] std::string plugin_name() const override { return library_->info().name; }

  [[nodiscard]] const PluginLibrary& library() const { return *library_; }

 private:
  PluginAggregation(std::shared_ptr<PluginLibrary> library, PluginOptions options, TensorList global)
      : library_(std::move(library)), options_(std::move(options)), global_(std::move(global)) {}
  [[nodiscard]] const flotilla_aggregator_api& api() const { return *library_->plugin().aggregator; }
  /// Creates a state of `library` for the current global model.
  [[nodiscard]] static Expected<void*> create_state(const PluginLibrary& library,
                                                    const PluginOptions& options,
                                                    const TensorList& global);
  void destroy_state();
  /// Hands `saved` (export_state's) to `state` of `library`.
  [[nodiscard]] static Expected<void> import_into(const PluginLibrary& library, void* state,
                                                  const TensorList& saved);

  std::shared_ptr<PluginLibrary> library_;
  PluginOptions options_;
  TensorList global_;  ///< the current global model (shares storage with the round logic's)
  void* state_ = nullptr;
  std::size_t accepted_ = 0;
  /// Names the updates accepted since the last finalize carried: what a method that does not
  /// declare FLOTILLA_AGG_WRITES_BASE may emit.
  std::set<std::string> carried_;
};

}  // namespace flotilla

#pragma once
/// What every role derives from the shared config: a client's slice of the data, the initial
/// model, the run id. Every process of a run computes the same values from the same file.
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/aggregation.hpp"
#include "runtime/model.hpp"
#include "runtime/plugin_host.hpp"
#include "runtime/transport.hpp"

#include <memory>

namespace flotilla {

/// Client `id`'s training examples under the config's partition (its held-out share removed).
/// Errc::invalid_argument if `id` is not below data.clients.
[[nodiscard]] Expected<Dataset> client_train_data(const Config& config, const Dataset& full_train,
                                                  std::uint32_t id);

/// The evaluator's held-out set: the first evaluator.examples of the test split (all if 0).
[[nodiscard]] Dataset evaluation_data(const Config& config, const Dataset& full_test);

/// The model every role builds, initialised from run.seed.
[[nodiscard]] Expected<std::unique_ptr<Model>> build_model(const Config& config);

/// The plugin search path the config asks for (run.plugin-path, then $FLOTILLA_PLUGIN_PATH,
/// then the built-in plugins), on the config's device.
[[nodiscard]] Expected<std::unique_ptr<PluginRegistry>> plugin_registry(const Config& config);

/// The aggregation method aggregator.strategy names ("builtin": the core's FedAvg fold; else a
/// plugin loaded through `registry`, created with aggregator.options for `initial`).
/// Errc::invalid_config or invalid_argument naming the config file and the plugin's problem.
[[nodiscard]] Expected<std::unique_ptr<Aggregation>> build_aggregation(const Config& config,
                                                                       PluginRegistry& registry,
                                                                       const TensorList& initial);

/// Transport options every role of the run uses (the message size limit).
[[nodiscard]] EndpointOptions endpoint_options(const Config& config);

/// "<run.name>-<seed>": identifies the run in every message.
[[nodiscard]] std::string run_id(const Config& config);

}  // namespace flotilla

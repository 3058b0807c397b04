#pragma once
/// What every role derives from the shared config: a client's slice of the data, the initial
/// model, the run id. Every process of a run computes the same values from the same file.
#include "runtime/setup/config.hpp"
#include "runtime/ml/data.hpp"
#include "runtime/plugin_host/aggregation.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/ml/text.hpp"
#include "runtime/plugin_host/plugin_host.hpp"
#include "runtime/net/transport.hpp"
#include "runtime/base/clock.hpp"
#include "runtime/server/schedule.hpp"

#include <functional>
#include <memory>

namespace flotilla {

/// Client `id`'s training examples under the config's partition (its held-out share removed),
/// normalized (`full_train` may hold images as bytes: load_dataset's ImageForm::bytes).
/// Errc::invalid_argument if `id` is not below data.clients.
/// `parts`: the config's partition of `full_train` (client_partitions), computed once for many
/// clients; nullptr computes it for this call.
[[nodiscard]] Expected<Dataset> client_train_data(
    const Config& config, const Dataset& full_train, std::uint32_t id,
    const std::vector<std::vector<std::int64_t>>* parts = nullptr);

/// Client `id`'s training indices within its share `parts[id]` (its held-out share removed).
[[nodiscard]] std::vector<std::int64_t> client_train_indices(
    const Config& config, const std::vector<std::vector<std::int64_t>>& parts, std::uint32_t id);

/// The indices of `full_train` each client holds under the config's partition.
[[nodiscard]] std::vector<std::vector<std::int64_t>> client_partitions(const Config& config,
                                                                      const Dataset& full_train);

/// The evaluator's held-out set: the first evaluator.examples of the test split (all if 0).
[[nodiscard]] Dataset evaluation_data(const Config& config, const Dataset& full_test);

/// The run's data (data.dataset): Fashion-MNIST's training or test set, or, for "instructions",
/// the JSON-lines file at data.path tokenized into causal-LM examples (text.hpp), its records
/// split once by run.seed into a training part and a held-out part (data.held-out) for the
/// evaluator. Every process of the run reads the same split. `form`: images normalized, or as
/// bytes for a process that keeps only clients' slices (client_train_data normalizes those).
[[nodiscard]] Expected<Dataset> load_dataset(const Config& config, bool train,
                                             ImageForm form = ImageForm::normalized);
/// data.tokenizer (and data.tokenizer-model): Errc::invalid_config for a file that cannot be
/// read, or a vocabulary larger than model.vocab-size.
[[nodiscard]] Expected<std::unique_ptr<Tokenizer>> run_tokenizer(const Config& config);
/// data.dataset "instructions": the records of data.path the clients train on (`train`) or the
/// evaluator holds out, split once by run.seed (data.held-out), each part in file order.
[[nodiscard]] Expected<std::vector<InstructionRecord>> instruction_records(const Config& config, bool train);

/// The global model (what the aggregator holds and the evaluator scores), initialised from
/// run.seed, with LoRA adapters at lora.rank when lora.rank > 0.
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

/// The clients' optimizer plugin (training.optimizer on run.plugin-path), checked with the
/// run's [training] and [training.options] by creating it once over a model like the clients'.
/// Errc::invalid_config naming the config file and the problem.
[[nodiscard]] Expected<std::shared_ptr<WatchedPlugin>> client_optimizer(const Config& config);

/// The cores a run's compute may use in one process: run.threads, or every core.
[[nodiscard]] int run_cores(const Config& config);

/// LoRA rank of client `id`: lora.ranks[id] when lora.ranks is set, else lora.rank.
[[nodiscard]] std::int64_t client_lora_rank(const Config& config, std::uint32_t id);

/// The model client `id` trains: the global model's, with adapters at the client's own rank
/// (client_lora_rank). Same seed: same base weights, and A's rows are a prefix of the global A's.
[[nodiscard]] Expected<std::unique_ptr<Model>> build_client_model(const Config& config,
                                                                  std::uint32_t id);

/// The ModelSpec (with its LoRA settings at `rank`) the config describes.
[[nodiscard]] ModelSpec model_spec(const Config& config, std::int64_t rank);

/// The names and shapes (meta tensors, no data) of what client `id` trains and sends:
/// its model's trainable_state(). Built once per distinct rank and cached by the returned
/// function; for the aggregator's per-client models (Aggregation::client_model).
[[nodiscard]] std::function<TensorList(std::uint32_t)> client_templates(const Config& config);

/// What the host tells every plugin of the run (flotilla_host.lora_alpha: the adapters' scale
/// alpha/r needs alpha; 0 without adapters).
[[nodiscard]] PluginHostFacts plugin_host_facts(const Config& config);

/// Options the config passes to an aggregation plugin on top of [aggregator.options]: for a
/// plugin built before ABI 1.2 (which has no flotilla_host.lora_alpha) that declares an option
/// "alpha" the user did not set, lora.alpha. Returns [aggregator.options] with those added.
[[nodiscard]] PluginOptions lora_plugin_options(const Config& config, const PluginLibrary& library);

/// Whether the run's config gives the method what it declares it needs (AggregationTraits:
/// adapters, a frozen A, a trainable A, one rank for all clients, full models), whatever the
/// method is called. Errc::invalid_config naming the config file, the method and the fix.
[[nodiscard]] Expected<void> check_method_needs(const Config& config, const AggregationTraits& traits,
                                                const std::string& method);

/// Transport options every role of the run uses (the message size limit).
[[nodiscard]] EndpointOptions endpoint_options(const Config& config);

/// security.mode = "curve": what peer `name` (its routing id: "client-3", "evaluator") needs
/// to reach the aggregator: its key <key-dir>/<name>.key and the aggregator's public key.
/// Nothing under "none". Errc::invalid_config / io naming the file and what is wrong with it.
[[nodiscard]] Expected<void> secure_client(const Config& config, const std::string& name,
                                           EndpointOptions& options);
/// The aggregator's side for its `domain` endpoint: "clients" (security.authorized) or "admin"
/// (security.admins), with its key <key-dir>/aggregator.key.
[[nodiscard]] Expected<void> secure_server(const Config& config, const std::string& domain,
                                           EndpointOptions& options);

/// The schedule's options the config asks for ([aggregator] schedule keys, run.rounds /
/// versions / max-time / target-accuracy), with versions and evaluate-every derived when unset.
[[nodiscard]] ScheduleOptions schedule_options(const Config& config);

/// The schedule aggregator.schedule names over `aggregation`, starting from `initial`.
/// Errc::invalid_config when the method declares it cannot work under that schedule.
[[nodiscard]] Expected<std::unique_ptr<Schedule>> make_schedule(const Config& config,
                                                                TensorList initial,
                                                                std::unique_ptr<Aggregation> aggregation,
                                                                const Clock& clock);

/// The checkpoint to continue from when config.checkpoint.resume (--resume DIR): read, its
/// warnings logged; nothing when not resuming. Errc::io when there is none to read.
[[nodiscard]] Expected<std::optional<Resumption>> resumption(const Config& config);

/// Continues `schedule` from `resumed` (if any), then, when config.checkpoint.dir is set, has
/// it write checkpoints there (and journal accepted updates): the first one at once for a new
/// run, so that the journal always follows one. Nothing (null) when checkpoints are off.
[[nodiscard]] Expected<std::shared_ptr<CheckpointStore>> attach_checkpoints(
    const Config& config, Schedule& schedule, const std::optional<Resumption>& resumed);

/// Sends plugins' log lines to the run's logging ("plugin:<name>" components).
void route_plugin_logs();

/// "<run.name>-<seed>": identifies the run in every message.
[[nodiscard]] std::string run_id(const Config& config);

}  // namespace flotilla

#pragma once
/// Each role of a federation as a whole process: set up (errors reported before anything is
/// spawned), spawn the actor(s), wait until they are done, report how it ended.
#include "actors/aggregator_actor.hpp"
#include "monitoring/aggregator_metrics.hpp"
#include "runtime/setup/config.hpp"

#include <optional>
#include <string>

namespace flotilla::actors {

struct RoleResult {
  int code = 0;
  std::string message;  ///< one line saying what went wrong (empty on success)
};

// Each role adds its metrics to `metrics` (this process's; null = metrics off).

/// The aggregator, listening on `listen` (default: aggregator.listen).
[[nodiscard]] RoleResult run_aggregator(const Config& config, AggregatorHooks hooks,
                                        std::optional<std::string> listen = std::nullopt,
                                        monitoring::Metrics* metrics = nullptr);

/// Client `id`, connecting to `connect`.
[[nodiscard]] RoleResult run_client(const Config& config, std::uint32_t id,
                                    const std::string& connect,
                                    monitoring::Metrics* metrics = nullptr);

/// The evaluator, connecting to `connect`.
[[nodiscard]] RoleResult run_evaluator(const Config& config, const std::string& connect,
                                       monitoring::Metrics* metrics = nullptr);

/// Every role in this process (aggregator, evaluator, data.clients clients), talking over the
/// transport aggregator.listen names (tcp, ipc or inproc).
[[nodiscard]] RoleResult run_all(const Config& config, AggregatorHooks hooks,
                                 monitoring::Metrics* metrics = nullptr);

/// The aggregator's metrics for a run of `config`, fed by `hooks`' on_events from now on (the
/// hook it had is still called after them). Also used for a simulated run.
[[nodiscard]] std::shared_ptr<monitoring::AggregatorMetrics> watch_schedule(
    const Config& config, monitoring::Metrics& metrics, ScheduleHooks& hooks);

}  // namespace flotilla::actors

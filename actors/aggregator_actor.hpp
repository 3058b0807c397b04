#pragma once
/// The aggregator: registers clients and evaluators, runs the rounds (runtime/server/sync_rounds.hpp)
/// and sends what they say to send. All decisions are the round logic's; this only routes.
#include "actors/bridge.hpp"
#include "monitoring/aggregator_metrics.hpp"
#include "runtime/plugin_host/plugin_host.hpp"
#include "runtime/server/schedule.hpp"

#include <functional>
#include <optional>

namespace flotilla::actors {

/// What the aggregator reports as the run goes (the schedule's records, its end, its events).
using AggregatorHooks = ScheduleHooks;

struct AggregatorSetup {
  std::unique_ptr<PluginRegistry> plugins;  ///< loads new builds of the aggregation plugin
  std::unique_ptr<Schedule> rounds;
  /// Where its checkpoints and journal go (checkpoint.dir); null when off.
  std::shared_ptr<CheckpointStore> checkpoints;
  /// Watches the aggregation plugin's file (aggregator.watch-plugins); none for "builtin".
  std::optional<PluginWatcher> watcher;
  std::shared_ptr<Endpoint> endpoint;
  std::shared_ptr<Mailbox> mailbox;
  /// Operators' commands (aggregator.admin-listen), delivered to the same mailbox on
  /// kAdminChannel; none when admin commands are off.
  std::shared_ptr<Endpoint> admin_endpoint;
  std::shared_ptr<Outcome> outcome;
  AggregatorHooks hooks;
  /// Reads the schedule's events through `hooks` (metrics.listen); null = metrics off.
  std::shared_ptr<monitoring::AggregatorMetrics> metrics;
  std::chrono::milliseconds tick{100};
};

/// Inbound::channel of messages from the admin endpoint.
inline constexpr int kAdminChannel = 1;

struct AggregatorState {
  std::shared_ptr<AggregatorSetup> setup;
  SteadyClock clock;
  std::uint64_t next_message_id = 1;
  std::uint64_t ticks = 0;
  static inline const char* name = "aggregator";
};

caf::behavior aggregator_actor(caf::stateful_actor<AggregatorState>* self,
                               std::shared_ptr<AggregatorSetup> setup);

}  // namespace flotilla::actors

#pragma once
/// Each role of a federation as a whole process: set up (errors reported before anything is
/// spawned), spawn the actor(s), wait until they are done, report how it ended.
#include "actors/aggregator_actor.hpp"
#include "runtime/setup/config.hpp"

#include <optional>
#include <string>

namespace flotilla::actors {

struct RoleResult {
  int code = 0;
  std::string message;  ///< one line saying what went wrong (empty on success)
};

/// The aggregator, listening on `listen` (default: aggregator.listen).
[[nodiscard]] RoleResult run_aggregator(const Config& config, AggregatorHooks hooks,
                                        std::optional<std::string> listen = std::nullopt);

/// Client `id`, connecting to `connect`.
[[nodiscard]] RoleResult run_client(const Config& config, std::uint32_t id,
                                    const std::string& connect);

/// The evaluator, connecting to `connect`.
[[nodiscard]] RoleResult run_evaluator(const Config& config, const std::string& connect);

/// Every role in this process (aggregator, evaluator, data.clients clients), talking over the
/// transport aggregator.listen names (tcp, ipc or inproc).
[[nodiscard]] RoleResult run_all(const Config& config, AggregatorHooks hooks);

}  // namespace flotilla::actors

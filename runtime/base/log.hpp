#pragma once
/// One logger per component ("aggregator", "client-3", "transport", ...), all writing to
/// stderr with the component's name; progress lines for people go to stdout from the CLI.
#include <spdlog/spdlog.h>

#include "runtime/base/log_throttle.hpp"

#include <memory>
#include <string>

namespace flotilla {

[[nodiscard]] std::shared_ptr<spdlog::logger> logger(const std::string& component);

/// "trace", "debug", "info", "warn", "error", "off"; false if the name is unknown.
bool set_log_level(const std::string& level);

/// Says `what` as a warning on `log` unless `throttle` holds it back at `now`; then at debug.
void warn_throttled(spdlog::logger& log, LogThrottle& throttle, LogThrottle::time_point now,
                    const std::string& what);

}  // namespace flotilla

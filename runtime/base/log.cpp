#include "runtime/base/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>

namespace flotilla {
namespace {
std::mutex mutex;
spdlog::level::level_enum level = spdlog::level::info;
}  // namespace

std::shared_ptr<spdlog::logger> logger(const std::string& component) {
  std::lock_guard lock(mutex);
  if (auto existing = spdlog::get(component)) return existing;
  auto made = spdlog::stderr_color_mt(component);
  made->set_pattern("%^[%H:%M:%S.%e] %l [%n]%$ %v");
  made->set_level(level);
  return made;
}

bool set_log_level(const std::string& name) {
  const auto parsed = spdlog::level::from_str(name);
  if (parsed == spdlog::level::off && name != "off") return false;
  std::lock_guard lock(mutex);
  level = parsed;
  spdlog::set_level(parsed);
  return true;
}

void warn_throttled(spdlog::logger& log, LogThrottle& throttle, LogThrottle::time_point now,
                    const std::string& what) {
  if (auto more = throttle.admit(now)) {
    log.warn("{}{}", what, *more);
  } else {
    log.debug("{}", what);
  }
}

}  // namespace flotilla

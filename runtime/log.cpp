#include "runtime/log.hpp"

#include "runtime/plugin_host.hpp"

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

void route_plugin_logs() {
  set_plugin_log_sink([](flotilla_log_level lvl, const std::string& plugin, const std::string& msg) {
    auto log = logger("plugin:" + plugin);
    switch (lvl) {
      case FLOTILLA_LOG_DEBUG: log->debug("{}", msg); break;
      case FLOTILLA_LOG_INFO: log->info("{}", msg); break;
      case FLOTILLA_LOG_WARN: log->warn("{}", msg); break;
      default: log->error("{}", msg); break;
    }
  });
}

bool set_log_level(const std::string& name) {
  const auto parsed = spdlog::level::from_str(name);
  if (parsed == spdlog::level::off && name != "off") return false;
  std::lock_guard lock(mutex);
  level = parsed;
  spdlog::set_level(parsed);
  return true;
}

}  // namespace flotilla

#include "runtime/protocol/message.hpp"

namespace flotilla {

double metric(const Metrics& metrics, const std::string& name, double fallback) {
  for (const auto& m : metrics) {
    if (m.name == name) return m.value;
  }
  return fallback;
}

const char* payload_name(const Payload& payload) noexcept {
  static constexpr const char* names[] = {"hello",     "welcome",  "task",
                                          "update",    "evaluation-request",
                                          "evaluation-result", "heartbeat",
                                          "shutdown",  "error",
                                          "admin-command", "admin-reply"};
  return names[payload.index()];
}

}  // namespace flotilla

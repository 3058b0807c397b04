#pragma once
/// The operator's side of admin commands (`flotilla admin reload|status --connect ENDPOINT`):
/// one command to the aggregator's endpoint, one reply.
#include "runtime/base/error.hpp"
#include "runtime/net/security.hpp"
#include "runtime/protocol/message.hpp"

#include <chrono>
#include <string>
#include <vector>

namespace flotilla {

/// Under CurveZMQ: who sends it (the id its key is authorized for) and with which keys.
struct AdminCredentials {
  std::string name;
  CurveClient curve;
};

/// Sends `command` to the aggregator at `address` and waits up to `timeout` for its reply.
/// Errc::unreachable if none comes; an error reply is Errc::rejected with its message.
[[nodiscard]] Expected<AdminReply> send_admin(const std::string& address, const std::string& command,
                                              std::vector<std::string> args,
                                              std::chrono::milliseconds timeout,
                                              const std::optional<AdminCredentials>& credentials = {});

}  // namespace flotilla

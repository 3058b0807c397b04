#pragma once
/// The bridge between ZeroMQ and CAF: the transport's I/O thread hands each received message
/// to an actor's mailbox, so blocking socket work never runs on the actor scheduler.
#include "runtime/net/transport.hpp"

#include <caf/all.hpp>

#include <memory>
#include <mutex>
#include <vector>

namespace flotilla::actors {

using InboundPtr = std::shared_ptr<Inbound>;

/// Inbound::channel of the message that says an endpoint's I/O thread stopped on an error:
/// the role cannot talk any more and ends with that reason.
inline constexpr int kTransportFailedChannel = -1;

using tick_atom = caf::atom_constant<caf::atom("tick")>;
using timeout_atom = caf::atom_constant<caf::atom("timeout")>;
using hello_atom = caf::atom_constant<caf::atom("hello")>;

/// Forwards inbound messages to an actor. Created before the actor (the endpoint must exist,
/// and its bind errors be reported, before anything is spawned); holds messages until the
/// actor is attached, so none is lost in between.
class Mailbox {
 public:
  void deliver(Inbound in);
  void attach(caf::actor target);
  void detach();
  /// An Endpoint handler that delivers here, tagging each message with `channel`.
  [[nodiscard]] static Endpoint::Handler handler(const std::shared_ptr<Mailbox>& box, int channel = 0);
  /// An EndpointOptions::on_failure that delivers the failure here, on
  /// kTransportFailedChannel, as an Errc::io error naming the endpoint.
  [[nodiscard]] static std::function<void(const std::string&)> failure_handler(
      const std::shared_ptr<Mailbox>& box, std::string what);

 private:
  std::mutex mutex_;
  caf::actor target_;
  bool detached_ = false;
  std::vector<InboundPtr> held_;
};

/// Wraps a payload into an envelope from `sender`.
[[nodiscard]] Message envelope(const std::string& run_id, const std::string& sender,
                               std::uint64_t message_id, Payload payload,
                               std::uint64_t reply_to = 0);

/// How a role ended: exit code and a one-line reason, set by the actor before it quits.
struct Outcome {
  std::mutex mutex;
  int code = 0;
  std::string message;
  void fail(int c, std::string m) {
    std::lock_guard lock(mutex);
    if (code == 0) {
      code = c;
      message = std::move(m);
    }
  }
};

}  // namespace flotilla::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(flotilla::actors::InboundPtr)

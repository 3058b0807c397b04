#pragma once
/// ZeroMQ transport: one socket per Endpoint, owned and served by the Endpoint's own I/O
/// thread, so blocking socket work never runs on the actor scheduler. The aggregator binds a
/// ROUTER; clients and evaluators connect DEALERs. Endpoints are `tcp://`, `ipc://` or
/// `inproc://` (inproc endpoints share one process-wide ZeroMQ context).
#include "runtime/base/error.hpp"
#include "runtime/protocol/message.hpp"
#include "runtime/protocol/wire.hpp"

#include <functional>
#include <memory>
#include <string>

namespace flotilla {

struct Inbound {
  std::string peer;             ///< ROUTER: the sender's routing id; DEALER: empty
  Expected<Message> message;    ///< the decoded message, or why it could not be decoded
  std::size_t bytes = 0;        ///< bytes received (all frames)
  /// Which of a process's endpoints received it, as its receiver tags it (e.g. the
  /// aggregator's clients' endpoint 0, its admin endpoint 1); the transport leaves it 0.
  int channel = 0;
};

struct EndpointOptions {
  WireLimits limits;
  /// Messages queued for a peer that is slow or gone before sends block; 0 = unlimited.
  int send_high_water_mark = 0;
  /// How long close() waits for queued messages to leave (ZMQ_LINGER).
  int linger_ms = 2000;
  /// bind(): an ipc:// socket file is created readable and writable by this user only (so
  /// only this user's processes can connect; other users get EACCES).
  bool owner_only = false;
};

class Endpoint {
 public:
  using Handler = std::function<void(Inbound)>;

  /// Binds a ROUTER at `address` (e.g. "tcp://127.0.0.1:5555", "tcp://127.0.0.1:*" for any
  /// free port, "ipc:///tmp/x", "inproc://x"). A port in use is Errc::address_in_use.
  /// `handler` runs on the I/O thread for every received message: keep it short (forward it).
  [[nodiscard]] static Expected<std::unique_ptr<Endpoint>> bind(const std::string& address,
                                                                Handler handler,
                                                                EndpointOptions options = {});

  /// Connects a DEALER with routing id `identity` (unique per peer, e.g. "client-3").
  [[nodiscard]] static Expected<std::unique_ptr<Endpoint>> connect(const std::string& address,
                                                                   const std::string& identity,
                                                                   Handler handler,
                                                                   EndpointOptions options = {});

  virtual ~Endpoint() = default;

  /// The address actually bound or connected (a wildcard port resolved).
  [[nodiscard]] virtual std::string address() const = 0;

  /// Queues `message` for `peer` (a ROUTER's routing id; ignored by a DEALER). Thread-safe and
  /// non-blocking; encoding and the zero-copy send happen on the I/O thread. The tensors are
  /// not copied: they are read after send() returns, so modifying one in place afterwards
  /// races with the send (send a clone of a tensor that is still being trained).
  virtual void send(const std::string& peer, Message message) = 0;

  /// Flushes what is queued (up to linger), stops the I/O thread and closes the socket.
  virtual void close() = 0;

  [[nodiscard]] virtual std::uint64_t bytes_sent() const = 0;
  [[nodiscard]] virtual std::uint64_t bytes_received() const = 0;
};

}  // namespace flotilla

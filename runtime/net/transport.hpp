#pragma once
/// ZeroMQ transport: one socket per Endpoint, owned and served by the Endpoint's own I/O
/// thread, so blocking socket work never runs on the actor scheduler. The aggregator binds a
/// ROUTER; clients and evaluators connect DEALERs. Endpoints are `tcp://`, `ipc://` or
/// `inproc://` (inproc endpoints share one process-wide ZeroMQ context).
#include "runtime/base/error.hpp"
#include "runtime/protocol/message.hpp"
#include "runtime/protocol/wire.hpp"
#include "runtime/net/security.hpp"

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace flotilla {

struct Inbound {
  std::string peer;             ///< ROUTER: the sender's routing id; DEALER: empty
  Expected<Message> message;    ///< the decoded message, or why it could not be decoded
  std::size_t bytes = 0;        ///< bytes received (all frames)
  /// Which of a process's endpoints received it, as its receiver tags it (e.g. the
  /// aggregator's clients' endpoint 0, its admin endpoint 1); the transport leaves it 0.
  int channel = 0;
  /// While any copy of this is alive, the message counts against EndpointOptions::max_in_flight
  /// (drop it, or the Inbound, once the message is handled); empty when there is no limit.
  std::shared_ptr<void> hold;
};

struct EndpointOptions {
  WireLimits limits;
  /// Messages queued for one peer that is slow or gone (ZMQ_SNDHWM). A ROUTER (the
  /// aggregator) drops and counts what comes beyond it for that peer, so a peer that stops
  /// reading cannot pin old model versions in memory; a DEALER waits (back-pressure). 0 would
  /// be unlimited.
  int send_high_water_mark = 16;
  /// How long close() waits for queued messages to leave (ZMQ_LINGER).
  int linger_ms = 2000;
  /// bind(): an ipc:// socket file is created readable and writable by this user only (so
  /// only this user's processes can connect; other users get EACCES).
  bool owner_only = false;
  /// Back-pressure: messages received and not yet handled (their Inbound::hold alive) at most;
  /// at the limit the endpoint stops reading, so peers' sends wait in their queues and the
  /// kernel's buffers instead of in this process's memory. 0 = no limit.
  std::size_t max_in_flight = 0;
  /// Messages ZeroMQ takes off the network per peer before this endpoint reads them
  /// (ZMQ_RCVHWM); beyond it that peer's connection waits (TCP back-pressure).
  int receive_high_water_mark = 1000;
  /// Called once, on the I/O thread, if it stops on an error (the endpoint then sends and
  /// receives nothing more; send() drops and counts). Keep it short: hand it to the owner.
  std::function<void(const std::string& why)> on_failure;
  /// CurveZMQ: bind() as this server (its key; who may connect, and under which id), connect()
  /// as this client (its key, the server's public key). Unset: plaintext.
  std::optional<CurveServer> curve_server;
  std::optional<CurveClient> curve_client;
  /// The ZeroMQ context the socket lives in; unset: the process-wide one. An application that
  /// embeds endpoints in its own context may pass it (not with curve_server: the ZAP handler
  /// lives in the process-wide context). Shutting that context down stops the endpoint as a
  /// failure (on_failure, failure()), as any error of its I/O thread does. The context must
  /// outlive bind()/connect(); shut it down from another thread than the endpoint's handler
  /// (closing a context waits for its sockets, which the handler's thread closes). inproc://
  /// addresses reach only endpoints in the same context.
  zmq::context_t* context = nullptr;
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
  /// Messages given to send() that never left: unencodable (logged), for a peer that is not
  /// connected, for a peer whose queue is full (send_high_water_mark), or after a failure.
  [[nodiscard]] virtual std::uint64_t messages_dropped() const = 0;
  /// Messages given to send() that have not left yet (queued, or waiting for the peer): a
  /// DEALER whose aggregator is unreachable has some.
  [[nodiscard]] virtual std::size_t pending() const = 0;
  /// Why the I/O thread stopped, if it stopped on an error.
  [[nodiscard]] virtual std::optional<std::string> failure() const = 0;
  /// Under CurveZMQ: connections whose handshake failed (a key not authorized, a wrong server
  /// key, a plaintext peer) and messages from a peer using another id than its key's (dropped).
  [[nodiscard]] virtual std::uint64_t peers_refused() const = 0;
};

}  // namespace flotilla

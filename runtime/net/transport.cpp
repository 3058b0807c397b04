#include "runtime/net/transport.hpp"

#include "runtime/base/log.hpp"
#include "runtime/base/tsan.hpp"
#include "runtime/net/context.hpp"

#include <malloc.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdint>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace flotilla {
namespace {

/// ZeroMQ I/O threads shared by every endpoint. Two let a process that both sends and
/// receives large messages (the aggregator) move bytes in both directions at once.
constexpr int kZmqIoThreads = 2;

/// Frames up to this size are copied into ZeroMQ's own message: setting up a zero-copy frame
/// (an owner reference and a free callback run on ZeroMQ's thread) costs more than copying.
constexpr std::size_t kCopyFrameBytes = 4096;

/// Messages taken from the socket per wake-up, so that a flood of inbound messages cannot
/// starve queued sends.
constexpr int kReceiveBatch = 64;

/// ZeroMQ mallocs a fresh buffer for every received frame. Frames of at least glibc's mmap
/// threshold are mmap'd and unmapped again on free, so every large message was faulted in and
/// zeroed by the kernel page by page (most of a 1 GiB transfer's time). Tensor chunks
/// (WireLimits::chunk_bytes, 16 MiB) are therefore kept under a fixed 32 MiB threshold (the
/// most glibc allows; fixing it also stops glibc's dynamic threshold from moving), so frames
/// come from malloc's heaps; a large top pad keeps a thread arena's freed heaps (ZeroMQ's I/O
/// threads allocate from their own arenas) mapped instead of deleting them, so the next
/// message reuses memory that is already faulted in. The cost: an arena's freed heaps are not
/// returned to the system, so the peak of frames held at once (e.g. the updates of one round
/// not yet folded in) stays resident, for reuse. Process-wide, set once when the first endpoint is
/// created; values the application set through GLIBC_TUNABLES or mallopt before are
/// overridden. Other allocators (jemalloc, tcmalloc) ignore mallopt.
constexpr int kMallocMmapThreshold = 32 << 20;
constexpr int kMallocTopPad = 64 << 20;

void tune_malloc() noexcept {
  static const bool tuned = [] {
    ::mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold);
    ::mallopt(M_TOP_PAD, kMallocTopPad);
    return true;
  }();
  (void)tuned;
}

/// The process-wide context, so that inproc:// works between any two endpoints. Never
/// destroyed on purpose: zmq_ctx_term blocks until every socket is closed, which would hang
/// process exit if an endpoint were still alive during static destruction.
zmq::context_t& context_of(const EndpointOptions& options) {
  return options.context != nullptr ? *options.context : detail::zmq_context();
}

/// ZeroMQ's free callback for zero-copy frames: drops one reference to the encoded message's
/// owner (builder + tensors), which ZeroMQ may do on its own I/O thread long after send().
/// (Under ThreadSanitizer the frames' hand-overs through libzmq are marked: runtime/base/tsan.hpp.)
void release_owner(void* /*data*/, void* hint) noexcept {
  tsan_taken_over(hint);
  delete static_cast<std::shared_ptr<void>*>(hint);
}

zmq::message_t frame_message(std::span<const std::byte> frame, const std::shared_ptr<void>& owner) {
  if (frame.size() <= kCopyFrameBytes) {
    zmq::message_t msg(frame.data(), frame.size());
    tsan_handed_over(msg.data());
    return msg;
  }
  auto hint = std::make_unique<std::shared_ptr<void>>(owner);
  tsan_handed_over(hint.get());
  tsan_handed_over(frame.data());
  zmq::message_t msg(const_cast<std::byte*>(frame.data()), frame.size(), release_owner, hint.get());
  hint.release();  // now owned by the message's free callback
  return msg;
}

/// An eventfd that send() writes to so the I/O thread, blocked in zmq_poll, wakes up.
class WakeFd {
 public:
  WakeFd() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  WakeFd(const WakeFd&) = delete;
  WakeFd& operator=(const WakeFd&) = delete;
  ~WakeFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int fd() const noexcept { return fd_; }
  void notify() const noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(fd_, &one, sizeof one);  // EAGAIN: already signalled
  }
  void clear() const noexcept {
    std::uint64_t value = 0;
    [[maybe_unused]] auto n = ::read(fd_, &value, sizeof value);
  }

 private:
  int fd_;
};

struct Outgoing {
  std::string peer;
  Message message;
};

/// A message being sent: its frames and how many of them ZeroMQ has taken so far.
struct InFlight {
  std::string peer;
  EncodedFrames encoded;
  std::size_t next = 0;
  bool peer_sent = false;
  bool counted = false;  ///< whether bytes_sent_ includes it
};

/// Handshake failures ZeroMQ reports on a Curve socket (ZMQ_EVENT_HANDSHAKE_FAILED_*).
constexpr int kHandshakeEvents =
    ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;

/// Starts reporting `socket`'s handshake failures to a new inproc address, returned.
std::string monitor(zmq::socket_t& socket) {
  static std::atomic<std::uint64_t> next{0};
  const auto address = "inproc://flotilla-monitor-" + std::to_string(next.fetch_add(1));
  if (zmq_socket_monitor(socket.handle(), address.c_str(), kHandshakeEvents) != 0) {
    throw zmq::error_t();
  }
  return address;
}

class ZmqEndpoint final : public Endpoint {
 public:
  ZmqEndpoint(zmq::socket_t socket, bool router, std::string address, Handler handler,
              EndpointOptions options, std::string monitor_address = {})
      : socket_(std::move(socket)),
        router_(router),
        address_(std::move(address)),
        handler_(std::move(handler)),
        options_(options) {
    if (!monitor_address.empty()) {
      monitor_.emplace(context_of(options_), zmq::socket_type::pair);
      monitor_->connect(monitor_address);
    }
    thread_ = std::thread([this] { run(); });
  }

  ZmqEndpoint(const ZmqEndpoint&) = delete;
  ZmqEndpoint& operator=(const ZmqEndpoint&) = delete;

  ~ZmqEndpoint() override { close(); }

  [[nodiscard]] std::string address() const override { return address_; }

  void send(const std::string& peer, Message message) override {
    {
      std::lock_guard lock(mutex_);
      // Checked under the lock fail() takes, so no message slips into a queue it has cleared.
      if (stopping_ || failed_.load(std::memory_order_relaxed)) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      queue_.push_back(Outgoing{peer, std::move(message)});
      pending_.fetch_add(1, std::memory_order_relaxed);
    }
    shared_->wake.notify();
  }

  void close() override {
    std::lock_guard close_lock(close_mutex_);
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    shared_->wake.notify();
    // From the handler (the I/O thread itself) close() can only ask: joining would deadlock.
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

  [[nodiscard]] std::uint64_t bytes_sent() const override {
    return bytes_sent_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t bytes_received() const override {
    return bytes_received_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t messages_dropped() const override {
    return dropped_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::size_t pending() const override {
    return pending_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::optional<std::string> failure() const override {
    std::lock_guard lock(mutex_);
    return failure_;
  }
  [[nodiscard]] std::uint64_t peers_refused() const override {
    return refused_.load(std::memory_order_relaxed);
  }

 private:
  using Clock = std::chrono::steady_clock;

  /// The I/O thread: the only code that touches socket_ after construction.
  void run() noexcept {
    std::optional<std::string> why;
    while (true) {
      try {
        loop();
        break;
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;  // a signal interrupted zmq_poll: nothing is lost
        why = std::string("ZeroMQ: ") + e.what();
        break;
      } catch (const std::exception& e) {
        why = e.what();
        break;
      } catch (...) {
        why = "an unknown exception";
        break;
      }
    }
    if (why) fail(*why);
    try {
      if (monitor_) {
        zmq_socket_monitor(socket_.handle(), nullptr, 0);
        monitor_->close();
      }
      socket_.close();
    } catch (...) {
    }
  }

  /// The I/O thread stopped on an error: said (logged, on_failure), and from now on send()
  /// drops and counts instead of queueing for a thread that will never send.
  void fail(const std::string& why) noexcept {
    try {
      std::size_t abandoned = 0;
      {
        std::lock_guard lock(mutex_);
        failure_ = why;
        failed_.store(true, std::memory_order_release);
        pending_.store(0, std::memory_order_relaxed);
        abandoned = queue_.size() + outgoing_.size() + (in_flight_ ? 1 : 0);
        queue_.clear();
      }
      outgoing_.clear();
      in_flight_.reset();
      dropped_.fetch_add(abandoned, std::memory_order_relaxed);
      logger("transport")->error("the endpoint {} stopped: {} ({} queued messages dropped)",
                                 address_, why, abandoned);
      if (options_.on_failure) options_.on_failure(why);
    } catch (...) {
    }
  }

  void loop() {
    auto& deadline = close_deadline_;
    while (true) {
      bool stopping = false;
      {
        std::lock_guard lock(mutex_);
        while (!queue_.empty()) {
          outgoing_.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        stopping = stopping_;
      }
      const bool blocked = !send_pending();
      if (stopping) {
        if (!deadline) deadline = Clock::now() + std::chrono::milliseconds(options_.linger_ms);
        if (!blocked || Clock::now() >= *deadline) return;
      }

      // At the in-flight limit, nothing is read until a handled message's token wakes us.
      const short in = may_receive() ? ZMQ_POLLIN : 0;
      zmq::pollitem_t items[] = {
          {socket_.handle(), 0, static_cast<short>(in | (blocked ? ZMQ_POLLOUT : 0)), 0},
          {nullptr, shared_->wake.fd(), ZMQ_POLLIN, 0},
          {monitor_ ? monitor_->handle() : nullptr, -1, static_cast<short>(monitor_ ? ZMQ_POLLIN : 0), 0},
      };
      long timeout_ms = -1;
      if (deadline) {
        timeout_ms = std::max<long>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                           *deadline - Clock::now())
                                           .count());
      }
      zmq::poll(items, monitor_ ? 3 : 2, std::chrono::milliseconds(timeout_ms));
      if ((items[1].revents & ZMQ_POLLIN) != 0) shared_->wake.clear();
      if (monitor_ && (items[2].revents & ZMQ_POLLIN) != 0) handshake_failed();
      if ((items[0].revents & ZMQ_POLLIN) != 0) receive_some();
    }
  }

  /// Encodes and hands queued messages to ZeroMQ; false when the socket would block (a DEALER
  /// at its high-water mark), in which case the rest waits for POLLOUT.
  bool send_pending() {
    while (true) {
      if (!in_flight_) {
        if (outgoing_.empty()) return true;
        Outgoing next = std::move(outgoing_.front());
        outgoing_.pop_front();
        try {
          in_flight_ = InFlight{std::move(next.peer), encode(next.message, options_.limits)};
        } catch (const std::exception& e) {
          // An unencodable message (an undefined or complex tensor, over the size limit) is
          // dropped: said, and counted, never silently.
          dropped_.fetch_add(1, std::memory_order_relaxed);
          pending_.fetch_sub(1, std::memory_order_relaxed);
          logger("transport")->error("cannot send a '{}' message{}: {}",
                                     payload_name(next.message.payload),
                                     next.peer.empty() ? "" : " to " + next.peer, e.what());
          continue;
        }
      }
      if (!send_frames(*in_flight_)) return false;
      in_flight_.reset();  // sent, or dropped for a peer that cannot take it
      pending_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  /// A ROUTER message its peer cannot take (gone, or its queue full): counted and dropped, so
  /// one slow peer never holds up the others.
  void drop_unroutable(const InFlight& m, bool queue_full) {
    const auto n = dropped_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (queue_full) {
      // Rate-limited: a peer that stopped reading would otherwise log every message.
      if (std::has_single_bit(n)) {
        logger("transport")->warn("{} is not reading ({} messages queued for it): dropped one "
                                  "({} dropped on this endpoint so far)",
                                  m.peer, options_.send_high_water_mark, n);
      }
    } else {
      logger("transport")->debug("dropped a message for {}: not connected", m.peer);
    }
  }

  bool send_frames(InFlight& m) {
    const auto& frames = m.encoded.frames;
    if (router_ && !m.peer_sent) {
      // Under Curve a peer is named by its key: its connection's routing id is looked up.
      const std::string* route = &m.peer;
      if (options_.curve_server) {
        const auto it = route_of_.find(m.peer);
        if (it == route_of_.end()) {
          drop_unroutable(m, false);
          return true;
        }
        route = &it->second;
      }
      zmq::message_t id(route->data(), route->size());
      // ZMQ_ROUTER_MANDATORY: the first frame says whether the peer can take the message
      // (EAGAIN: its queue is full; EHOSTUNREACH: not connected); later frames always go.
      try {
        if (!socket_.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
          drop_unroutable(m, true);
          return true;
        }
      } catch (const zmq::error_t& e) {
        if (e.num() != EHOSTUNREACH) throw;
        drop_unroutable(m, false);
        return true;
      }
      m.peer_sent = true;
    }
    while (m.next < frames.size()) {
      auto flags = zmq::send_flags::dontwait;
      if (m.next + 1 < frames.size()) {
        flags = flags | zmq::send_flags::sndmore;
      } else if (!m.counted) {
        // Counted before the last frame goes, so a peer that has the message never sees a
        // sender whose counter does not include it yet.
        bytes_sent_.fetch_add(m.encoded.total_bytes(), std::memory_order_relaxed);
        m.counted = true;
      }
      zmq::message_t msg = frame_message(frames[m.next], m.encoded.owner);
      if (!socket_.send(msg, flags)) return false;
      ++m.next;
    }
    return true;
  }

  [[nodiscard]] bool may_receive() const {
    return options_.max_in_flight == 0 ||
           shared_->in_flight.load(std::memory_order_acquire) < options_.max_in_flight;
  }

  /// A token that counts its message as in flight until its last copy is gone.
  [[nodiscard]] std::shared_ptr<void> hold() {
    if (options_.max_in_flight == 0) return nullptr;
    shared_->in_flight.fetch_add(1, std::memory_order_acq_rel);
    return std::shared_ptr<void>(nullptr, [shared = shared_, limit = options_.max_in_flight](void*) {
      if (shared->in_flight.fetch_sub(1, std::memory_order_acq_rel) == limit) shared->wake.notify();
    });
  }

  void receive_some() {
    for (int n = 0; n < kReceiveBatch && may_receive(); ++n) {
      zmq::message_t first;
      if (!socket_.recv(first, zmq::recv_flags::dontwait)) return;
      std::vector<zmq::message_t> parts;
      bool more = first.more();
      parts.push_back(std::move(first));
      while (more) {
        zmq::message_t part;
        // Multipart messages arrive whole, so the remaining parts are already here.
        if (!socket_.recv(part, zmq::recv_flags::dontwait)) break;
        more = part.more();
        parts.push_back(std::move(part));
      }
      Inbound in{{}, Error{Errc::malformed, "empty message"}, 0, 0, nullptr};
      if (router_) {
        in.peer = parts.front().to_string();
        parts.erase(parts.begin());
        if (options_.curve_server && !name_by_key(in.peer, parts)) continue;
      }
      for (const auto& p : parts) {
        tsan_taken_over(p.data());
        in.bytes += p.size();
      }
      bytes_received_.fetch_add(in.bytes, std::memory_order_relaxed);
      in.message = decode(std::move(parts), options_.limits);
      in.hold = hold();
      try {
        handler_(std::move(in));
      } catch (...) {
        // A throwing handler must not take the endpoint (and every peer on it) down.
      }
    }
  }

  /// Under Curve a peer is the id its key is authorized for (the ZAP handler's User-Id on its
  /// messages), whatever routing id its connection has: one client can neither send as another
  /// nor receive what is sent to another. `peer` (the connection's routing id) becomes that
  /// id, and replies to the id go to the connection it last spoke on. A message without one is
  /// dropped and counted.
  bool name_by_key(std::string& peer, std::vector<zmq::message_t>& parts) {
    const char* user = parts.empty() ? nullptr : zmq_msg_gets(parts.front().handle(), "User-Id");
    if (user == nullptr || *user == '\0') {
      refused_.fetch_add(1, std::memory_order_relaxed);
      say_refused("endpoint " + address_ + ": a message without an authenticated id: dropped");
      return false;
    }
    std::string name(user);
    if (peer != name && !peer.empty() && peer.front() != '\0') {
      // A routing id of its own choosing that is not its key's: said (its messages still
      // count as its key's).
      say_refused("endpoint " + address_ + ": a peer authenticated as '" + name +
                  "' calls its connection '" + peer + "': known as '" + name + "'");
    }
    route_of_[name] = std::move(peer);
    peer = std::move(name);
    return true;
  }

  /// A handshake failed (the monitor's event): counted and said, what it most likely means.
  void handshake_failed() {
    zmq::message_t event, where;  // the event, then the endpoint's address
    if (!monitor_->recv(event, zmq::recv_flags::dontwait)) return;
    if (event.more()) (void)monitor_->recv(where, zmq::recv_flags::dontwait);
    if (event.size() < 6) return;
    std::uint16_t id = 0;
    std::uint32_t value = 0;
    std::memcpy(&id, event.data(), 2);
    std::memcpy(&value, static_cast<const char*>(event.data()) + 2, 4);
    refused_.fetch_add(1, std::memory_order_relaxed);
    std::string why;
    if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
      why = router_ ? "a peer's key is not authorized (see the warning before)"
                    : "the aggregator refused this peer's key (is its .pub in the aggregator's "
                      "security.authorized directory, under this peer's id?)";
    } else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
      why = router_ ? "a peer without Curve encryption tried to connect (its security.mode differs)"
                    : "the aggregator does not speak Curve (its security.mode differs)";
    } else if (router_) {
      why = "a peer failed the Curve handshake (it holds a wrong aggregator public key, or hung up)";
    } else {
      why = "the Curve handshake with the aggregator failed (does security.server-key hold the "
            "aggregator's public key?)";
    }
    say_refused((router_ ? "endpoint " : "link to ") + address_ + ": " + why);
  }

  /// Refusals are logged at most every 5 s per endpoint (a hostile peer retries ten times a
  /// second), with how many were not.
  void say_refused(const std::string& what) {
    warn_throttled(*logger("security"), refusal_log_, Clock::now(), what);
  }

  zmq::socket_t socket_;
  std::optional<zmq::socket_t> monitor_;  ///< handshake failures (Curve only)
  /// Curve server: each authenticated id's latest connection (routing id). I/O thread only.
  std::unordered_map<std::string, std::string> route_of_;
  std::atomic<std::uint64_t> refused_{0};
  LogThrottle refusal_log_;  ///< I/O thread only
  const bool router_;
  const std::string address_;
  const Handler handler_;
  const EndpointOptions options_;
  /// What outlives the endpoint in the Inbound::hold tokens it hands out.
  struct Shared {
    WakeFd wake;
    std::atomic<std::size_t> in_flight{0};
  };
  const std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();

  mutable std::mutex mutex_;  ///< guards queue_, stopping_ and failure_
  std::deque<Outgoing> queue_;
  bool stopping_ = false;
  std::optional<std::string> failure_;
  std::atomic<bool> failed_{false};
  std::atomic<std::uint64_t> dropped_{0};
  std::atomic<std::size_t> pending_{0};

  std::deque<Outgoing> outgoing_;    ///< I/O thread only
  std::optional<InFlight> in_flight_;  ///< I/O thread only
  std::optional<Clock::time_point> close_deadline_;  ///< I/O thread only: end of linger

  std::atomic<std::uint64_t> bytes_sent_{0};
  std::atomic<std::uint64_t> bytes_received_{0};

  std::mutex close_mutex_;
  std::thread thread_;  ///< last: started once every other member exists
};

Expected<zmq::socket_t> make_socket(zmq::socket_type type, const EndpointOptions& options,
                                    const std::string& address) {
  try {
    tune_malloc();  // also for an endpoint in a context of its own
    zmq::socket_t socket(context_of(options), type);
    socket.set(zmq::sockopt::linger, options.linger_ms);
    socket.set(zmq::sockopt::sndhwm, options.send_high_water_mark);
    socket.set(zmq::sockopt::rcvhwm, options.receive_high_water_mark);
    // ZeroMQ checks this per frame, from the frame's length prefix, before allocating it.
    const std::uint64_t max = options.limits.max_message_bytes;
    socket.set(zmq::sockopt::maxmsgsize,
               max > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
                   ? std::int64_t{-1}
                   : static_cast<std::int64_t>(max));
    return socket;
  } catch (const zmq::error_t& e) {
    return Error{Errc::invalid_argument,
                 "cannot create a socket for " + address + ": " + e.what()};
  }
}

}  // namespace

namespace {
Expected<void> curve_fits(const std::string& address, const EndpointOptions& options) {
  if (options.curve_server && options.context != nullptr) {
    return Error{Errc::invalid_argument, address + ": a Curve server needs the process-wide ZeroMQ "
                                                   "context (its ZAP handler lives there)"};
  }
  if ((options.curve_server || options.curve_client) && address.starts_with("inproc://")) {
    return Error{Errc::invalid_config, address + ": Curve encryption needs a tcp:// or ipc:// endpoint "
                                                 "(inproc:// links stay inside one process)"};
  }
  return {};
}
}  // namespace

Expected<std::unique_ptr<Endpoint>> Endpoint::bind(const std::string& address, Handler handler,
                                                   EndpointOptions options) {
  if (auto ok = curve_fits(address, options); !ok) return ok.error();
  auto socket = make_socket(zmq::socket_type::router, options, address);
  if (!socket) return socket.error();
  try {
    // A client that reconnects under the same identity replaces its stale connection instead
    // of being ignored until the old one times out.
    // (Under Curve peers do not choose their routing ids: the ROUTER numbers connections and
    // a peer is known by its key, so no connection can take over another's id.)
    socket->set(zmq::sockopt::router_handover, options.curve_server ? 0 : 1);
    socket->set(zmq::sockopt::router_mandatory, 1);  // see ZmqEndpoint::send_frames
    if (const auto& curve = options.curve_server) {
      detail::authorize_domain(curve->domain, curve->authorized);
      socket->set(zmq::sockopt::curve_server, 1);
      socket->set(zmq::sockopt::curve_secretkey, curve->keys.secret_key);
      socket->set(zmq::sockopt::zap_domain, curve->domain);
    }
    if (options.owner_only && address.starts_with("ipc://")) {
      // Created owner-only rather than chmod'ed after: no moment when another user may connect.
      // umask is process-wide; binding is done once, at startup, before other files are made.
      const ::mode_t before = ::umask(0077);
      try {
        socket->bind(address);
      } catch (...) {
        ::umask(before);
        throw;
      }
      ::umask(before);
    } else {
      socket->bind(address);
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EADDRINUSE) {
      return Error{Errc::address_in_use,
                   "cannot listen on " + address + ": address already in use"};
    }
    return Error{Errc::invalid_argument, "cannot listen on " + address + ": " + e.what()};
  }
  try {
    std::string bound = socket->get(zmq::sockopt::last_endpoint);
    if (bound.empty()) bound = address;
    const auto watched = options.curve_server ? monitor(*socket) : std::string();
    return std::unique_ptr<Endpoint>(std::make_unique<ZmqEndpoint>(
        std::move(*socket), true, std::move(bound), std::move(handler), options, watched));
  } catch (const zmq::error_t& e) {
    return Error{Errc::internal, "cannot watch " + address + ": " + e.what()};
  }
}

Expected<std::unique_ptr<Endpoint>> Endpoint::connect(const std::string& address,
                                                      const std::string& identity,
                                                      Handler handler, EndpointOptions options) {
  if (identity.empty() || identity.size() > 255 || identity.front() == '\0') {
    return Error{Errc::invalid_argument,
                 "identity '" + identity + "' must be 1 to 255 bytes and not start with NUL"};
  }
  if (auto ok = curve_fits(address, options); !ok) return ok.error();
  auto socket = make_socket(zmq::socket_type::dealer, options, address);
  if (!socket) return socket.error();
  try {
    // Under Curve the aggregator knows a peer by its key, and numbers its connections itself.
    if (!options.curve_client) socket->set(zmq::sockopt::routing_id, identity);
    if (const auto& curve = options.curve_client) {
      socket->set(zmq::sockopt::curve_serverkey, curve->server_public_key);
      socket->set(zmq::sockopt::curve_publickey, curve->keys.public_key);
      socket->set(zmq::sockopt::curve_secretkey, curve->keys.secret_key);
    }
    std::string watched = options.curve_client ? monitor(*socket) : std::string();
    socket->connect(address);
    return std::unique_ptr<Endpoint>(std::make_unique<ZmqEndpoint>(
        std::move(*socket), false, address, std::move(handler), options, std::move(watched)));
  } catch (const zmq::error_t& e) {
    return Error{Errc::invalid_argument, "cannot connect to " + address + ": " + e.what()};
  }
}

namespace detail {
zmq::context_t& zmq_context() {
  static auto* ctx = [] {
    tune_malloc();
    return new zmq::context_t(kZmqIoThreads);
  }();
  return *ctx;
}
}  // namespace detail

}  // namespace flotilla

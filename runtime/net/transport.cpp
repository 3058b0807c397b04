#include "runtime/net/transport.hpp"

#include <malloc.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
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
  ::mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold);
  ::mallopt(M_TOP_PAD, kMallocTopPad);
}

/// The process-wide context, so that inproc:// works between any two endpoints. Never
/// destroyed on purpose: zmq_ctx_term blocks until every socket is closed, which would hang
/// process exit if an endpoint were still alive during static destruction.
zmq::context_t& context() {
  static auto* ctx = [] {
    tune_malloc();
    return new zmq::context_t(kZmqIoThreads);
  }();
  return *ctx;
}

/// ZeroMQ's free callback for zero-copy frames: drops one reference to the encoded message's
/// owner (builder + tensors), which ZeroMQ may do on its own I/O thread long after send().
void release_owner(void* /*data*/, void* hint) noexcept {
  delete static_cast<std::shared_ptr<void>*>(hint);
}

zmq::message_t frame_message(std::span<const std::byte> frame, const std::shared_ptr<void>& owner) {
  if (frame.size() <= kCopyFrameBytes) return zmq::message_t(frame.data(), frame.size());
  auto hint = std::make_unique<std::shared_ptr<void>>(owner);
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

class ZmqEndpoint final : public Endpoint {
 public:
  ZmqEndpoint(zmq::socket_t socket, bool router, std::string address, Handler handler,
              EndpointOptions options)
      : socket_(std::move(socket)),
        router_(router),
        address_(std::move(address)),
        handler_(std::move(handler)),
        options_(options) {
    thread_ = std::thread([this] { run(); });
  }

  ZmqEndpoint(const ZmqEndpoint&) = delete;
  ZmqEndpoint& operator=(const ZmqEndpoint&) = delete;

  ~ZmqEndpoint() override { close(); }

  [[nodiscard]] std::string address() const override { return address_; }

  void send(const std::string& peer, Message message) override {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      queue_.push_back(Outgoing{peer, std::move(message)});
    }
    wake_.notify();
  }

  void close() override {
    std::lock_guard close_lock(close_mutex_);
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify();
    // From the handler (the I/O thread itself) close() can only ask: joining would deadlock.
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

  [[nodiscard]] std::uint64_t bytes_sent() const override {
    return bytes_sent_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t bytes_received() const override {
    return bytes_received_.load(std::memory_order_relaxed);
  }

 private:
  using Clock = std::chrono::steady_clock;

  /// The I/O thread: the only code that touches socket_ after construction.
  void run() noexcept {
    while (true) {
      try {
        loop();
        break;
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;  // a signal interrupted zmq_poll: nothing is lost
        break;
      } catch (...) {
        // Any other failure ends the endpoint; nothing may escape a thread, and there is no
        // caller here to tell.
        break;
      }
    }
    try {
      socket_.close();
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

      zmq::pollitem_t items[] = {
          {socket_.handle(), 0, static_cast<short>(ZMQ_POLLIN | (blocked ? ZMQ_POLLOUT : 0)), 0},
          {nullptr, wake_.fd(), ZMQ_POLLIN, 0},
      };
      long timeout_ms = -1;
      if (deadline) {
        timeout_ms = std::max<long>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                           *deadline - Clock::now())
                                           .count());
      }
      zmq::poll(items, 2, std::chrono::milliseconds(timeout_ms));
      if ((items[1].revents & ZMQ_POLLIN) != 0) wake_.clear();
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
        } catch (...) {
          continue;  // an unencodable message (undefined or complex tensor) is dropped
        }
      }
      if (!send_frames(*in_flight_)) return false;
      in_flight_.reset();
    }
  }

  bool send_frames(InFlight& m) {
    const auto& frames = m.encoded.frames;
    if (router_ && !m.peer_sent) {
      zmq::message_t id(m.peer.data(), m.peer.size());
      if (!socket_.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return false;
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

  void receive_some() {
    for (int n = 0; n < kReceiveBatch; ++n) {
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
      Inbound in{{}, Error{Errc::malformed, "empty message"}, 0};
      if (router_) {
        in.peer = parts.front().to_string();
        parts.erase(parts.begin());
      }
      for (const auto& p : parts) in.bytes += p.size();
      bytes_received_.fetch_add(in.bytes, std::memory_order_relaxed);
      in.message = decode(std::move(parts), options_.limits);
      try {
        handler_(std::move(in));
      } catch (...) {
        // A throwing handler must not take the endpoint (and every peer on it) down.
      }
    }
  }

  zmq::socket_t socket_;
  const bool router_;
  const std::string address_;
  const Handler handler_;
  const EndpointOptions options_;
  WakeFd wake_;

  std::mutex mutex_;  ///< guards queue_ and stopping_
  std::deque<Outgoing> queue_;
  bool stopping_ = false;

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
    zmq::socket_t socket(context(), type);
    socket.set(zmq::sockopt::linger, options.linger_ms);
    socket.set(zmq::sockopt::sndhwm, options.send_high_water_mark);
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

Expected<std::unique_ptr<Endpoint>> Endpoint::bind(const std::string& address, Handler handler,
                                                   EndpointOptions options) {
  auto socket = make_socket(zmq::socket_type::router, options, address);
  if (!socket) return socket.error();
  try {
    // A client that reconnects under the same identity replaces its stale connection instead
    // of being ignored until the old one times out.
    socket->set(zmq::sockopt::router_handover, 1);
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
  std::string bound = socket->get(zmq::sockopt::last_endpoint);
  if (bound.empty()) bound = address;
  return std::unique_ptr<Endpoint>(std::make_unique<ZmqEndpoint>(
      std::move(*socket), true, std::move(bound), std::move(handler), options));
}

Expected<std::unique_ptr<Endpoint>> Endpoint::connect(const std::string& address,
                                                      const std::string& identity,
                                                      Handler handler, EndpointOptions options) {
  if (identity.empty() || identity.size() > 255 || identity.front() == '\0') {
    return Error{Errc::invalid_argument,
                 "identity '" + identity + "' must be 1 to 255 bytes and not start with NUL"};
  }
  auto socket = make_socket(zmq::socket_type::dealer, options, address);
  if (!socket) return socket.error();
  try {
    socket->set(zmq::sockopt::routing_id, identity);
    socket->connect(address);
  } catch (const zmq::error_t& e) {
    return Error{Errc::invalid_argument, "cannot connect to " + address + ": " + e.what()};
  }
  return std::unique_ptr<Endpoint>(std::make_unique<ZmqEndpoint>(
      std::move(*socket), false, address, std::move(handler), options));
}

}  // namespace flotilla

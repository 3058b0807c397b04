#include "monitoring/server.hpp"

#include <httplib.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace flotilla::monitoring {
namespace {

/// httplib's own pool queues connections without a bound (a flood would hold every fd the
/// process may open). This one queues at most `capacity`; beyond that the accepting thread
/// serves the connection itself, so it stops accepting until a slot frees: the kernel's
/// backlog, not this process, absorbs the rest.
class BoundedPool final : public httplib::TaskQueue {
 public:
  BoundedPool(int threads, std::size_t capacity) : capacity_(capacity) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::unique_lock lock(mutex_);
      if (jobs_.size() < capacity_) {
        jobs_.push_back(std::move(fn));
        ready_.notify_one();
        return;
      }
    }
    fn();
  }
  void shutdown() override {
    {
      std::unique_lock lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }
  std::size_t capacity_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
};

struct HostPort {
  std::string host;
  int port = 0;
};

Expected<HostPort> parse_listen(const std::string& listen) {
  const auto bad = [&](const std::string& why) {
    return Error{Errc::invalid_config,
                 "metrics.listen '" + listen + "' " + why + " (expected HOST:PORT, e.g. 127.0.0.1:9464)"};
  };
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos) return bad("has no port");
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  int value = -1;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value < 0 || value > 65535) {
    return bad("has no valid port");
  }
  return HostPort{host, value};
}

}  // namespace

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> exited{false};  ///< the listener returned (its workers joined)
};

Expected<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& listen,
                                                              MetricsPtr metrics,
                                                              ServerLimits limits) {
  auto where = parse_listen(listen);
  if (!where) return where.error();
  std::unique_ptr<MetricsServer> self(new MetricsServer());
  self->impl_ = std::make_unique<Impl>();
  auto& server = self->impl_->server;
  server.new_task_queue = [limits] {
    return new BoundedPool(std::max(1, limits.threads), limits.queue);
  };
  const auto timeout = std::chrono::milliseconds(limits.read_timeout_ms);
  server.set_read_timeout(timeout);
  server.set_write_timeout(timeout);
  // One request per connection: a scraper connects once per scrape, and a peer holding a
  // connection open cannot hold a thread beyond one read timeout.
  server.set_keep_alive_max_count(1);
  // Also how long a new connection may stay silent before its request (httplib's default: 5 s).
  server.set_keep_alive_timeout(std::max<time_t>(1, limits.read_timeout_ms / 1000));
  // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, which lets a second process
  // bind the same port and silently take half the scrapes.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  server.set_payload_max_length(4096);  // a scrape carries no body
  server.Get("/metrics", [metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics->scrape(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("<html><body><h1>Flotilla</h1><p><a href=\"/metrics\">/metrics</a></p></body></html>\n",
                    "text/html");
  });
  int port = where->port;
  if (port == 0) {
    port = server.bind_to_any_port(where->host);
    if (port < 0) port = 0;
  } else if (!server.bind_to_port(where->host, port)) {
    port = 0;
  }
  if (port == 0) {
    return Error{Errc::address_in_use, "cannot serve metrics on " + listen +
                               ": the address is not available here or the port is taken"};
  }
  self->port_ = port;
  const std::string host = where->host.find(':') != std::string::npos ? "[" + where->host + "]" : where->host;
  self->url_ = "http://" + host + ":" + std::to_string(port) + "/metrics";
  self->impl_->thread = std::thread([impl = self->impl_.get()] {
    impl->server.listen_after_bind();
    impl->exited = true;
  });
  return self;
}

void MetricsServer::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  // httplib's stop() does nothing until the listener runs: ask until it has ended.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!impl_->exited && std::chrono::steady_clock::now() < deadline) {
    impl_->server.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (impl_->exited) {
    impl_->thread.join();
    return;
  }
  // A peer keeps a connection busy past every timeout (e.g. a byte a second): leave the server
  // to it rather than hang whoever is stopping (the process is usually ending).
  impl_->thread.detach();
  (void)impl_.release();
}

MetricsServer::~MetricsServer() { stop(); }

}  // namespace flotilla::monitoring

#pragma once
/// The `/metrics` endpoint: an HTTP server (cpp-httplib) on its own threads serving a process's
/// Metrics. Bad requests, floods and slow peers cost the server at most a few threads and a
/// bounded queue; the federation's own threads never wait on it.
#include "monitoring/metrics.hpp"
#include "runtime/base/error.hpp"

#include <memory>
#include <string>

namespace flotilla::monitoring {

struct ServerLimits {
  int threads = 4;             ///< requests served at once
  std::size_t queue = 64;      ///< connections waiting for a thread; beyond: accepts wait
  int read_timeout_ms = 1000;  ///< a peer that sends nothing for this long is dropped
};

class MetricsServer {
 public:
  /// Serves `metrics` on `listen` ("HOST:PORT", "[V6]:PORT" or ":PORT" for every interface;
  /// port 0 picks a free one): GET /metrics, and a short page at / that links to it.
  /// Errc::invalid_config for an address that does not parse, Errc::address_in_use when it cannot bind.
  [[nodiscard]] static Expected<std::unique_ptr<MetricsServer>> start(const std::string& listen,
                                                                       MetricsPtr metrics,
                                                                       ServerLimits limits = {});
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  /// "http://HOST:PORT/metrics", with the port it got.
  [[nodiscard]] const std::string& url() const { return url_; }
  [[nodiscard]] int port() const { return port_; }
  /// Stops accepting and joins the server's threads (also on destruction).
  void stop();

 private:
  struct Impl;
  MetricsServer() = default;
  std::unique_ptr<Impl> impl_;
  std::string url_;
  int port_ = 0;
};

}  // namespace flotilla::monitoring

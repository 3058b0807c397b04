#pragma once
/// The metrics of one process: the registry every role adds its families to (handed to them,
/// never a global), the process's own metrics, and the text an HTTP endpoint serves.
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace flotilla::monitoring {

class Metrics {
 public:
  /// A registry with the process's metrics (process_cpu_seconds_total, resident memory, open
  /// and maximum fds, start time, threads) and flotilla_build_info.
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  [[nodiscard]] prometheus::Registry& registry() { return *registry_; }
  /// A counter whose value `read` gives at each scrape (e.g. a transport's byte count, kept by
  /// the transport itself); sources added under one name are summed. `read` runs on the HTTP
  /// server's thread.
  void add_counter(const std::string& name, const std::string& help, std::function<double()> read);
  /// Families a role builds itself at each scrape (from counts it keeps in plain memory, so
  /// that its hot path touches no Prometheus object); kept for as long as this lives.
  void add(std::shared_ptr<const prometheus::Collectable> collectable);
  /// Everything in Prometheus' text exposition format (version 0.0.4). Thread-safe.
  [[nodiscard]] std::string scrape() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> process_;
  struct Source {
    std::string help;
    std::vector<std::function<double()>> reads;
  };
  mutable std::mutex sources_mutex_;
  std::map<std::string, Source> sources_;
  std::vector<std::shared_ptr<const prometheus::Collectable>> collectables_;
};

using MetricsPtr = std::shared_ptr<Metrics>;

/// `families` in Prometheus' text exposition format.
[[nodiscard]] std::string serialize(const std::vector<prometheus::MetricFamily>& families);

/// A family of one sample without labels.
[[nodiscard]] prometheus::MetricFamily single(std::string name, std::string help,
                                              prometheus::MetricType type, double value);

/// Exponential histogram buckets: `start`, start·factor, ... (`count` of them).
[[nodiscard]] std::vector<double> exponential_buckets(double start, double factor, int count);

}  // namespace flotilla::monitoring

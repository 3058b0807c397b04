#pragma once
/// What clients and evaluators expose: a client's own counters (on its own endpoint; a process
/// running several clients sums them), the same counters as the aggregator sees them for the
/// whole fleet (reported in heartbeats and updates, summed by device class, never by client),
/// and the evaluator's latest scores.
#include "monitoring/metrics.hpp"
#include "runtime/protocol/message.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace flotilla::monitoring {

/// How much a client's cumulative counters grew from `before` to `now`; a counter that went
/// down means the client restarted and counts from zero again, so `now` is all new.
[[nodiscard]] ClientStats increase(const ClientStats& now, const ClientStats& before);

/// A device class as a label value: at most 48 characters of [A-Za-z0-9_.:-] (others become
/// '_'); "unknown" when empty.
[[nodiscard]] std::string device_class_label(const std::string& reported);

/// The client counter families under one prefix ("flotilla_client" or "flotilla_fleet"), one
/// series per device class.
class ClientFamilies {
 public:
  ClientFamilies(prometheus::Registry& registry, const std::string& prefix, const std::string& scope);
  /// Adds `delta` to `device_class`'s counters. Not thread-safe for a new class: callers
  /// serialize (the aggregator's thread, or ClientMetrics' lock).
  void add(const std::string& device_class, const ClientStats& delta);
  /// The class's training throughput (examples per second of training) and optimizer state.
  void set_gauges(const std::string& device_class, double samples_per_second, double optimizer_bytes);

 private:
  struct Series {
    prometheus::Counter* completed;
    prometheus::Counter* failed;
    prometheus::Counter* seconds;
    prometheus::Counter* examples;
    prometheus::Counter* sent;
    prometheus::Counter* received;
    prometheus::Gauge* samples_per_second;
    prometheus::Gauge* optimizer_state;
  };
  Series& series(const std::string& device_class);

  prometheus::Family<prometheus::Counter>& completed_;
  prometheus::Family<prometheus::Counter>& failed_;
  prometheus::Family<prometheus::Counter>& seconds_;
  prometheus::Family<prometheus::Counter>& examples_;
  prometheus::Family<prometheus::Counter>& sent_;
  prometheus::Family<prometheus::Counter>& received_;
  prometheus::Family<prometheus::Gauge>& samples_per_second_;
  prometheus::Family<prometheus::Gauge>& optimizer_state_;
  std::map<std::string, Series> series_;
};

/// A client process's own endpoint: every client it runs adds what it did (thread-safe).
class ClientMetrics {
 public:
  explicit ClientMetrics(prometheus::Registry& registry);
  /// A client's counters moved from `before` to `now` (both cumulative, as it reports them).
  void record(const ClientStats& now, const ClientStats& before);

 private:
  std::mutex mutex_;
  ClientFamilies families_;
};

/// The aggregator's view of the fleet, from the counters clients report (ClientReported
/// events). At most `max_classes` device classes become labels; further ones count as "other",
/// so a misbehaving client cannot grow the endpoint without bound.
class FleetMetrics {
 public:
  explicit FleetMetrics(prometheus::Registry& registry, std::size_t max_classes = 32);
  void report(const std::string& peer, const ClientStats& stats);

 private:
  struct Known {
    std::string device_class;
    ClientStats last;
  };
  struct ClassTotals {
    double examples = 0, seconds = 0, optimizer_bytes = 0;
    std::size_t clients = 0;
  };
  std::size_t max_classes_;
  ClientFamilies families_;
  prometheus::Family<prometheus::Gauge>& clients_;
  std::unordered_map<std::string, Known> peers_;
  std::map<std::string, ClassTotals> totals_;
};

/// The evaluator's latest scores and how long evaluating took.
class EvaluatorMetrics {
 public:
  explicit EvaluatorMetrics(prometheus::Registry& registry);
  void evaluated(std::uint64_t version, double loss, double accuracy, double seconds);

 private:
  prometheus::Gauge& loss_;
  prometheus::Gauge& accuracy_;
  prometheus::Gauge& version_;
  prometheus::Gauge& last_;
  prometheus::Counter& evaluations_;
  prometheus::Histogram& duration_;
};

}  // namespace flotilla::monitoring

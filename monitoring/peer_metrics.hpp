#pragma once
/// What clients and evaluators expose: a client's own counters (on its own endpoint; a process
/// running several clients sums them), the same counters as the aggregator sees them for the
/// whole fleet (reported in heartbeats and updates, summed by device class, never by client),
/// and the evaluator's latest scores.
#include "monitoring/metrics.hpp"
#include "runtime/protocol/message.hpp"

#include <prometheus/counter.h>
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

/// What the clients of one device class did, in plain memory (exported at scrape time).
struct ClassTotals {
  double tasks_completed = 0, tasks_failed = 0, training_seconds = 0, examples = 0;
  double bytes_sent = 0, bytes_received = 0;
  double samples_per_second = 0, optimizer_state_bytes = 0;
  void add(const ClientStats& delta);
};

/// The client families under `prefix` ("flotilla_client", "flotilla_fleet"), one series per class.
void append_class_families(std::vector<prometheus::MetricFamily>& out, const std::string& prefix,
                           const std::string& scope, const std::map<std::string, ClassTotals>& classes);

/// A client process's own endpoint: every client it runs adds what it did (thread-safe).
class ClientMetrics {
 public:
  explicit ClientMetrics(Metrics& metrics);
  /// A client's counters moved from `before` to `now` (both cumulative, as it reports them).
  void record(const ClientStats& now, const ClientStats& before);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// The aggregator's view of the fleet, from the counters clients report (ClientReported
/// events). At most `max_classes` device classes become labels; further ones count as "other",
/// so a misbehaving client cannot grow the endpoint without bound. Not thread-safe: its owner
/// serializes report() and collect().
class FleetMetrics {
 public:
  explicit FleetMetrics(std::size_t max_classes = 32) : max_classes_(max_classes) {}
  void report(const std::string& peer, const ClientStats& stats);
  /// `peer` was set aside: it no longer counts among its class's clients (until it reports again).
  void left(const std::string& peer);
  void collect(std::vector<prometheus::MetricFamily>& out) const;

 private:
  struct Class {
    ClassTotals totals;
    /// Over its clients' latest reports; unsigned, so that adding and taking away the same
    /// value always restores it exactly (doubles would drift after one huge claim).
    std::uint64_t optimizer_bytes_sum = 0;
    std::size_t clients = 0;
  };
  /// A client as last heard: what it reported, and the class it counts in (resolved once per
  /// class it names; none while it is away).
  struct Known {
    ClientStats last;
    Class* of = nullptr;
  };
  Class& class_for(const std::string& reported_class);

  std::size_t max_classes_;
  std::unordered_map<std::string, Known> peers_;
  std::map<std::string, Class> classes_;  // by label; node addresses are stable
};

/// The evaluator's latest scores and how long evaluating took.
class EvaluatorMetrics {
 public:
  explicit EvaluatorMetrics(Metrics& metrics);
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

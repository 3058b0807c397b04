#pragma once
/// The aggregator's metrics, read off its schedule's event stream (runtime/server/events.hpp):
/// the same events the progress line and rounds.csv are built from, so the counters an operator
/// scrapes are the counts the run reports; and, from the counters clients report, the fleet by
/// device class. (The transport's bytes are counters read at scrape time: Metrics::add_counter.)
///
/// On the hot path (each batch of events) this only adds to plain counts in memory under one
/// uncontended lock; the Prometheus families are built from them when scraped.
#include "monitoring/metrics.hpp"
#include "monitoring/peer_metrics.hpp"
#include "runtime/server/schedule.hpp"

#include <functional>
#include <memory>

namespace flotilla::monitoring {

class AggregatorMetrics {
 public:
  /// Adds the aggregator's families to `metrics` (at most `max_device_classes` fleet classes).
  explicit AggregatorMetrics(Metrics& metrics, std::size_t max_device_classes = 32);

  /// flotilla_aggregator_info{run_id, schedule, strategy} and the initial plugin load.
  void describe(const std::string& run_id, const std::string& schedule, const std::string& strategy,
                bool plugin_loaded);
  /// The events `schedule` emitted since the last call (ScheduleHooks::on_events); on the
  /// schedule's thread.
  void on_events(const Schedule& schedule, const std::vector<Event>& events);
  /// A ScheduleHooks::on_events that feeds this (chaining `next`, if any).
  [[nodiscard]] std::function<void(const Schedule&, const std::vector<Event>&)> hook(
      std::function<void(const Schedule&, const std::vector<Event>&)> next = {});

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared with `metrics`, which serves it after the run
};

}  // namespace flotilla::monitoring

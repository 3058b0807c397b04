#pragma once
/// The aggregator's metrics, read off its schedule's event stream (runtime/server/events.hpp):
/// the same events the progress line and rounds.csv are built from, so the counters an operator
/// scrapes are the counts the run reports; and, from the counters clients report, the fleet by
/// device class. (The transport's bytes are counters read at scrape time: Metrics::add_counter.)
#include "monitoring/metrics.hpp"
#include "monitoring/peer_metrics.hpp"
#include "runtime/server/schedule.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <array>
#include <optional>

namespace flotilla::monitoring {

class AggregatorMetrics {
 public:
  explicit AggregatorMetrics(prometheus::Registry& registry);

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
  void on(const Event& e);

  prometheus::Family<prometheus::Gauge>& info_;
  prometheus::Gauge& version_;
  prometheus::Counter& produced_;
  prometheus::Counter& failed_;
  prometheus::Gauge& last_version_;
  prometheus::Counter& received_;
  prometheus::Counter& accepted_;
  std::array<prometheus::Counter*, kRejectReasons> rejected_{};
  prometheus::Counter& late_;
  prometheus::Counter& stale_;
  prometheus::Counter& refused_;
  prometheus::Counter& tasks_sent_;
  prometheus::Counter& tasks_lost_;
  prometheus::Histogram& staleness_;
  prometheus::Histogram& round_duration_;
  prometheus::Histogram& fold_duration_;
  prometheus::Histogram& finalize_duration_;
  prometheus::Gauge& registered_;
  prometheus::Gauge& online_;
  prometheus::Gauge& busy_;
  prometheus::Gauge& idle_;
  prometheus::Gauge& offline_;
  prometheus::Counter& joined_;
  prometheus::Counter& left_;
  prometheus::Counter& plugin_loads_;
  prometheus::Counter& reloads_ok_;
  prometheus::Counter& reloads_failed_;
  prometheus::Counter& evaluations_;
  prometheus::Counter& evaluations_missed_;
  prometheus::Gauge& last_evaluation_;
  FleetMetrics fleet_;
  /// When the round (sync) or the gap since the last version (async, buffered) began.
  std::optional<double> interval_started_;
};

}  // namespace flotilla::monitoring

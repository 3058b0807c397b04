#include "monitoring/aggregator_metrics.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <mutex>
#include <optional>
#include <set>
#include <type_traits>

namespace flotilla::monitoring {
namespace {

using prometheus::MetricFamily;
using prometheus::MetricType;

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// A histogram in plain memory: per-bucket counts (the last one is +Inf), their sum and count.
struct Histogram {
  explicit Histogram(std::vector<double> bounds)
      : bounds(std::move(bounds)), counts(this->bounds.size() + 1, 0) {}
  void observe(double v) {
    const auto i = static_cast<std::size_t>(
        std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
    ++counts[i];
    sum += v;
  }
  [[nodiscard]] MetricFamily family(std::string name, std::string help) const {
    prometheus::ClientMetric m;
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      cumulative += counts[i];
      m.histogram.bucket.push_back(
          {cumulative, i < bounds.size() ? bounds[i] : std::numeric_limits<double>::infinity()});
    }
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = sum;
    return {std::move(name), std::move(help), MetricType::Histogram, {std::move(m)}};
  }
  std::vector<double> bounds;
  std::vector<std::uint64_t> counts;
  double sum = 0;
};

MetricFamily labelled(std::string name, std::string help, MetricType type, const std::string& label,
                      const std::vector<std::pair<std::string, double>>& values) {
  MetricFamily f{std::move(name), std::move(help), type, {}};
  for (const auto& [l, v] : values) {
    prometheus::ClientMetric m;
    m.label = {{label, l}};
    (type == MetricType::Counter ? m.counter.value : m.gauge.value) = v;
    f.metric.push_back(std::move(m));
  }
  return f;
}

}  // namespace

struct AggregatorMetrics::State final : prometheus::Collectable {
  explicit State(std::size_t max_classes) : fleet(max_classes) {}

  void on(const Event& event);
  std::vector<MetricFamily> Collect() const override;

  mutable std::mutex mutex;
  std::string run_id, schedule = "unknown", strategy = "unknown";
  double version = 0, last_version_at = 0, last_evaluation_at = 0;
  std::uint64_t produced = 0, failed = 0, received = 0, accepted = 0, refused = 0;
  std::array<std::uint64_t, kRejectReasons> rejected{};
  std::uint64_t tasks_sent = 0, tasks_lost = 0, joined = 0, left = 0, weights_capped = 0,
                clipped = 0;
  std::uint64_t plugin_loads = 0, reloads_ok = 0, reloads_failed = 0, evaluations = 0, missed = 0;
  ClientCounts clients;
  std::set<std::string> evaluators;  ///< online
  Histogram staleness{{0, 1, 2, 4, 8, 16, 32, 64}};
  Histogram round_duration{exponential_buckets(0.05, 2, 16)};
  Histogram fold_duration{exponential_buckets(0.0001, 2.5, 14)};
  Histogram finalize_duration{exponential_buckets(0.0001, 2.5, 14)};
  FleetMetrics fleet;
  /// When the round (sync) or the gap since the last version (async, buffered) began.
  std::optional<double> interval_started;
};

void AggregatorMetrics::State::on(const Event& event) {
  std::visit(
      [&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, ClientJoined>) {
          if (e.role == Role::client) ++joined;
          if (e.role == Role::evaluator) evaluators.insert(e.peer);
        } else if constexpr (std::is_same_v<T, ClientLeft>) {
          if (e.role == Role::client) {
            ++left;
            fleet.left(e.peer);
          }
          if (e.role == Role::evaluator) evaluators.erase(e.peer);
        } else if constexpr (std::is_same_v<T, RoundStarted>) {
          interval_started = event.at;
        } else if constexpr (std::is_same_v<T, TaskSent>) {
          ++tasks_sent;
          if (!interval_started) interval_started = event.at;
        } else if constexpr (std::is_same_v<T, TaskLost>) {
          ++tasks_lost;
        } else if constexpr (std::is_same_v<T, UpdateAccepted>) {
          ++received;
          if (e.weight_capped) ++weights_capped;
          if (e.clipped) ++clipped;
          staleness.observe(static_cast<double>(e.staleness));
        } else if constexpr (std::is_same_v<T, UpdateRejected>) {
          ++received;
          ++rejected[static_cast<std::size_t>(e.reason)];
        } else if constexpr (std::is_same_v<T, Aggregated>) {
          // Accepted means folded in: an update the method then fails to fold is rejected
          // (fold-failed) instead, so accepted + rejected = received.
          if (e.step == AggregationStep::fold) {
            accepted += e.updates;
            fold_duration.observe(e.seconds);
          } else {
            finalize_duration.observe(e.seconds);
          }
        } else if constexpr (std::is_same_v<T, FoldFailed>) {
          rejected[static_cast<std::size_t>(RejectReason::fold_failed)] += e.updates;
        } else if constexpr (std::is_same_v<T, MessageRefused>) {
          ++refused;
        } else if constexpr (std::is_same_v<T, VersionProduced> || std::is_same_v<T, VersionFailed>) {
          if constexpr (std::is_same_v<T, VersionProduced>) {
            ++produced;
            last_version_at = unix_now();
          } else {
            ++failed;
          }
          if (interval_started) round_duration.observe(event.at - *interval_started);
          interval_started = event.at;
        } else if constexpr (std::is_same_v<T, Evaluated>) {
          ++evaluations;
          last_evaluation_at = unix_now();
        } else if constexpr (std::is_same_v<T, EvaluationMissed>) {
          ++missed;
        } else if constexpr (std::is_same_v<T, ClientReported>) {
          fleet.report(e.peer, e.stats);
        } else if constexpr (std::is_same_v<T, PluginReloaded>) {
          ++(e.ok ? reloads_ok : reloads_failed);
        }
      },
      event.body);
}

std::vector<MetricFamily> AggregatorMetrics::State::Collect() const {
  const auto counter = [](std::string name, std::string help, std::uint64_t v) {
    return single(std::move(name), std::move(help), MetricType::Counter, static_cast<double>(v));
  };
  const auto gauge = [](std::string name, std::string help, double v) {
    return single(std::move(name), std::move(help), MetricType::Gauge, v);
  };
  std::vector<MetricFamily> out;
  std::lock_guard lock(mutex);
  {
    MetricFamily info{"flotilla_aggregator_info",
                      "What this aggregator runs: run id, schedule and aggregation strategy (always 1).",
                      MetricType::Gauge, {}};
    prometheus::ClientMetric m;
    m.label = {{"run_id", run_id}, {"schedule", schedule}, {"strategy", strategy}};
    m.gauge.value = 1;
    info.metric.push_back(std::move(m));
    out.push_back(std::move(info));
  }
  out.push_back(gauge("flotilla_aggregator_model_version", "The global model's current version.", version));
  out.push_back(counter("flotilla_aggregator_versions_produced_total",
                        "Model versions produced (synchronous rounds completed).", produced));
  out.push_back(counter("flotilla_aggregator_versions_failed_total",
                        "Rounds or buffers closed without producing a version (too few updates, or "
                        "the method failed).", failed));
  out.push_back(gauge("flotilla_aggregator_last_version_timestamp_seconds",
                      "Unix time at which the latest version was produced.", last_version_at));
  out.push_back(counter("flotilla_aggregator_updates_received_total",
                        "Updates that reached the schedule (accepted or rejected).", received));
  out.push_back(counter("flotilla_aggregator_updates_accepted_total", "Updates folded into the model.",
                        accepted));
  std::vector<std::pair<std::string, double>> reasons;
  for (std::size_t i = 0; i < kRejectReasons; ++i) {
    reasons.emplace_back(to_string(static_cast<RejectReason>(i)), static_cast<double>(rejected[i]));
  }
  out.push_back(labelled("flotilla_aggregator_updates_rejected_total",
                         "Updates not folded into the model, by reason.", MetricType::Counter,
                         "reason", reasons));
  out.push_back(counter("flotilla_aggregator_updates_late_total",
                        "Updates that came after their round closed or their task was given up on "
                        "(also counted as rejected, reason \"late\").",
                        rejected[static_cast<std::size_t>(RejectReason::late)]));
  out.push_back(counter("flotilla_aggregator_updates_stale_dropped_total",
                        "Updates dropped for being older than max-staleness (also counted as "
                        "rejected, reason \"stale\").",
                        rejected[static_cast<std::size_t>(RejectReason::stale)]));
  out.push_back(counter("flotilla_aggregator_updates_weight_capped_total",
                        "Updates that claimed more examples than aggregator.max-examples allows "
                        "(weighed at the cap).", weights_capped));
  out.push_back(counter("flotilla_aggregator_updates_clipped_total",
                        "Accepted updates whose change to the model was clipped to the outlier "
                        "bound (aggregator.update-validation = \"clip\").", clipped));
  out.push_back(counter("flotilla_aggregator_messages_refused_total",
                        "Messages refused before any schedule logic: undecodable, another protocol "
                        "version, another run, or a kind the aggregator does not take.", refused));
  out.push_back(counter("flotilla_aggregator_tasks_sent_total", "Tasks sent to clients.", tasks_sent));
  out.push_back(counter("flotilla_aggregator_tasks_lost_total",
                        "Tasks whose update did not come by the deadline.", tasks_lost));
  out.push_back(staleness.family("flotilla_aggregator_update_staleness_versions",
                                 "Versions produced between an accepted update's base and its arrival."));
  out.push_back(round_duration.family("flotilla_aggregator_round_duration_seconds",
                                      "Synchronous: a round from its start to its close; asynchronous "
                                      "and buffered: the time between versions (a buffer's fill)."));
  out.push_back(fold_duration.family("flotilla_aggregator_fold_duration_seconds",
                                     "Wall seconds of one fold of accepted updates into the aggregate."));
  out.push_back(finalize_duration.family("flotilla_aggregator_finalize_duration_seconds",
                                         "Wall seconds of producing a version from the folded updates."));
  out.push_back(labelled("flotilla_aggregator_clients",
                         "Clients by state: registered (online or offline), online (idle or busy), "
                         "busy (holding a task), idle, offline (silent past the peer timeout).",
                         MetricType::Gauge, "state",
                         {{"registered", static_cast<double>(clients.registered())},
                          {"online", static_cast<double>(clients.online)},
                          {"busy", static_cast<double>(clients.busy)},
                          {"idle", static_cast<double>(clients.idle)},
                          {"offline", static_cast<double>(clients.offline)}}));
  out.push_back(counter("flotilla_aggregator_clients_joined_total",
                        "Clients that registered, or came back after a silence.", joined));
  out.push_back(counter("flotilla_aggregator_clients_left_total",
                        "Clients set aside after a silence past the peer timeout.", left));
  out.push_back(labelled("flotilla_aggregator_plugin_loads_total",
                         "Builds of the aggregation plugin loaded (the first, and each reload "
                         "attempted), by result.",
                         MetricType::Counter, "result",
                         {{"ok", static_cast<double>(plugin_loads + reloads_ok)},
                          {"failed", static_cast<double>(reloads_failed)}}));
  out.push_back(labelled("flotilla_aggregator_plugin_reloads_total",
                         "Hot reloads of the aggregation plugin, by result.", MetricType::Counter,
                         "result", {{"ok", static_cast<double>(reloads_ok)},
                                    {"failed", static_cast<double>(reloads_failed)}}));
  out.push_back(gauge("flotilla_aggregator_evaluators",
                      "Evaluators registered and heard from within the peer timeout.",
                      static_cast<double>(evaluators.size())));
  out.push_back(counter("flotilla_aggregator_evaluations_total",
                        "Evaluations of model versions received from the evaluator.", evaluations));
  out.push_back(counter("flotilla_aggregator_evaluations_missed_total",
                        "Versions whose evaluation did not come in time.", missed));
  out.push_back(gauge("flotilla_aggregator_last_evaluation_timestamp_seconds",
                      "Unix time of the latest evaluation received.", last_evaluation_at));
  fleet.collect(out);
  return out;
}

AggregatorMetrics::AggregatorMetrics(Metrics& metrics, std::size_t max_device_classes)
    : state_(std::make_shared<State>(max_device_classes)) {
  metrics.add(state_);
}

void AggregatorMetrics::describe(const std::string& run_id, const std::string& schedule,
                                 const std::string& strategy, bool plugin_loaded) {
  std::lock_guard lock(state_->mutex);
  state_->run_id = run_id;
  state_->schedule = schedule;
  state_->strategy = strategy;
  if (plugin_loaded) ++state_->plugin_loads;
}

void AggregatorMetrics::on_events(const Schedule& schedule, const std::vector<Event>& events) {
  auto& s = *state_;
  std::lock_guard lock(s.mutex);
  for (const auto& e : events) s.on(e);
  s.clients = schedule.client_counts();
  s.version = static_cast<double>(schedule.model_version());
}

std::function<void(const Schedule&, const std::vector<Event>&)> AggregatorMetrics::hook(
    std::function<void(const Schedule&, const std::vector<Event>&)> next) {
  return [this, next = std::move(next)](const Schedule& s, const std::vector<Event>& events) {
    on_events(s, events);
    if (next) next(s, events);
  };
}

}  // namespace flotilla::monitoring

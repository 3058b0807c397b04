#include "monitoring/aggregator_metrics.hpp"

#include <type_traits>

namespace flotilla::monitoring {
namespace {

prometheus::Counter& counter(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}
prometheus::Gauge& gauge(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}
prometheus::Histogram& histogram(prometheus::Registry& r, const std::string& name,
                                 const std::string& help, std::vector<double> buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, std::move(buckets));
}

}  // namespace

AggregatorMetrics::AggregatorMetrics(prometheus::Registry& r)
    : info_(prometheus::BuildGauge()
                .Name("flotilla_aggregator_info")
                .Help("What this aggregator runs: run id, schedule and aggregation strategy (always 1).")
                .Register(r)),
      version_(gauge(r, "flotilla_aggregator_model_version", "The global model's current version.")),
      produced_(counter(r, "flotilla_aggregator_versions_produced_total",
                        "Model versions produced (synchronous rounds completed).")),
      failed_(counter(r, "flotilla_aggregator_versions_failed_total",
                      "Rounds or buffers closed without producing a version (too few updates, or "
                      "the method failed).")),
      last_version_(gauge(r, "flotilla_aggregator_last_version_timestamp_seconds",
                          "Unix time at which the latest version was produced.")),
      received_(counter(r, "flotilla_aggregator_updates_received_total",
                        "Updates that reached the schedule (accepted or rejected).")),
      accepted_(counter(r, "flotilla_aggregator_updates_accepted_total",
                        "Updates folded into the model.")),
      late_(counter(r, "flotilla_aggregator_updates_late_total",
                    "Updates that came after their round closed or their task was given up on "
                    "(also counted as rejected, reason \"late\").")),
      stale_(counter(r, "flotilla_aggregator_updates_stale_dropped_total",
                     "Updates dropped for being older than max-staleness (also counted as "
                     "rejected, reason \"stale\").")),
      refused_(counter(r, "flotilla_aggregator_messages_refused_total",
                       "Messages refused before any schedule logic: undecodable, another protocol "
                       "version, another run, or a kind the aggregator does not take.")),
      tasks_sent_(counter(r, "flotilla_aggregator_tasks_sent_total", "Tasks sent to clients.")),
      tasks_lost_(counter(r, "flotilla_aggregator_tasks_lost_total",
                          "Tasks whose update did not come by the deadline.")),
      staleness_(histogram(r, "flotilla_aggregator_update_staleness_versions",
                           "Versions produced between an accepted update's base and its arrival.",
                           {0, 1, 2, 4, 8, 16, 32, 64})),
      round_duration_(histogram(r, "flotilla_aggregator_round_duration_seconds",
                                "Synchronous: a round from its start to its close; asynchronous "
                                "and buffered: the time between versions (a buffer's fill).",
                                exponential_buckets(0.05, 2, 16))),
      fold_duration_(histogram(r, "flotilla_aggregator_fold_duration_seconds",
                               "Wall seconds of one fold of accepted updates into the aggregate.",
                               exponential_buckets(0.0001, 2.5, 14))),
      finalize_duration_(histogram(r, "flotilla_aggregator_finalize_duration_seconds",
                                   "Wall seconds of producing a version from the folded updates.",
                                   exponential_buckets(0.0001, 2.5, 14))),
      registered_(prometheus::BuildGauge()
                      .Name("flotilla_aggregator_clients")
                      .Help("Clients by state: registered (online or offline), online (idle or "
                            "busy), busy (holding a task), idle, offline (silent past the peer "
                            "timeout).")
                      .Register(r)
                      .Add({{"state", "registered"}})),
      online_(prometheus::BuildGauge().Name("flotilla_aggregator_clients").Register(r).Add({{"state", "online"}})),
      busy_(prometheus::BuildGauge().Name("flotilla_aggregator_clients").Register(r).Add({{"state", "busy"}})),
      idle_(prometheus::BuildGauge().Name("flotilla_aggregator_clients").Register(r).Add({{"state", "idle"}})),
      offline_(prometheus::BuildGauge().Name("flotilla_aggregator_clients").Register(r).Add({{"state", "offline"}})),
      joined_(counter(r, "flotilla_aggregator_clients_joined_total",
                      "Clients that registered, or came back after a silence.")),
      left_(counter(r, "flotilla_aggregator_clients_left_total",
                    "Clients set aside after a silence past the peer timeout.")),
      plugin_loads_(counter(r, "flotilla_aggregator_plugin_loads_total",
                            "Builds of the aggregation plugin loaded (the first and each reload).")),
      reloads_ok_(prometheus::BuildCounter()
                      .Name("flotilla_aggregator_plugin_reloads_total")
                      .Help("Hot reloads of the aggregation plugin, by result.")
                      .Register(r)
                      .Add({{"result", "ok"}})),
      reloads_failed_(prometheus::BuildCounter()
                          .Name("flotilla_aggregator_plugin_reloads_total")
                          .Register(r)
                          .Add({{"result", "failed"}})),
      evaluations_(counter(r, "flotilla_aggregator_evaluations_total",
                           "Evaluations of model versions received from the evaluator.")),
      evaluations_missed_(counter(r, "flotilla_aggregator_evaluations_missed_total",
                                  "Versions whose evaluation did not come in time.")),
      last_evaluation_(gauge(r, "flotilla_aggregator_last_evaluation_timestamp_seconds",
                             "Unix time of the latest evaluation received.")),
      fleet_(r) {
  auto& rejected = prometheus::BuildCounter()
                       .Name("flotilla_aggregator_updates_rejected_total")
                       .Help("Updates not folded into the model, by reason.")
                       .Register(r);
  // Every reason exists from the start (at 0), so rates and alerts have a series to read.
  for (std::size_t i = 0; i < kRejectReasons; ++i) {
    rejected_[i] = &rejected.Add({{"reason", to_string(static_cast<RejectReason>(i))}});
  }
}

void AggregatorMetrics::describe(const std::string& run_id, const std::string& schedule,
                                 const std::string& strategy, bool plugin_loaded) {
  info_.Add({{"run_id", run_id}, {"schedule", schedule}, {"strategy", strategy}}).Set(1);
  if (plugin_loaded) plugin_loads_.Increment();
}

void AggregatorMetrics::on(const Event& event) {
  std::visit(
      [&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, ClientJoined>) {
          if (e.role == Role::client) joined_.Increment();
        } else if constexpr (std::is_same_v<T, ClientLeft>) {
          left_.Increment();
        } else if constexpr (std::is_same_v<T, RoundStarted>) {
          interval_started_ = event.at;
        } else if constexpr (std::is_same_v<T, TaskSent>) {
          tasks_sent_.Increment();
          if (!interval_started_) interval_started_ = event.at;
        } else if constexpr (std::is_same_v<T, TaskLost>) {
          tasks_lost_.Increment();
        } else if constexpr (std::is_same_v<T, UpdateAccepted>) {
          received_.Increment();
          staleness_.Observe(static_cast<double>(e.staleness));
        } else if constexpr (std::is_same_v<T, UpdateRejected>) {
          received_.Increment();
          rejected_[static_cast<std::size_t>(e.reason)]->Increment();
          if (e.reason == RejectReason::late) late_.Increment();
          if (e.reason == RejectReason::stale) stale_.Increment();
        } else if constexpr (std::is_same_v<T, Aggregated>) {
          // Accepted means folded in: an update the method then fails to fold is rejected
          // (fold-failed) instead, so accepted + rejected = received.
          if (e.step == AggregationStep::fold) {
            accepted_.Increment(e.updates);
            fold_duration_.Observe(e.seconds);
          } else {
            finalize_duration_.Observe(e.seconds);
          }
        } else if constexpr (std::is_same_v<T, FoldFailed>) {
          rejected_[static_cast<std::size_t>(RejectReason::fold_failed)]->Increment(e.updates);
        } else if constexpr (std::is_same_v<T, MessageRefused>) {
          refused_.Increment();
        } else if constexpr (std::is_same_v<T, VersionProduced> || std::is_same_v<T, VersionFailed>) {
          if constexpr (std::is_same_v<T, VersionProduced>) {
            produced_.Increment();
            version_.Set(static_cast<double>(e.version));
            last_version_.SetToCurrentTime();
          } else {
            failed_.Increment();
          }
          if (interval_started_) round_duration_.Observe(event.at - *interval_started_);
          interval_started_ = event.at;
        } else if constexpr (std::is_same_v<T, Evaluated>) {
          evaluations_.Increment();
          last_evaluation_.SetToCurrentTime();
        } else if constexpr (std::is_same_v<T, EvaluationMissed>) {
          evaluations_missed_.Increment();
        } else if constexpr (std::is_same_v<T, ClientReported>) {
          fleet_.report(e.peer, e.stats);
        } else if constexpr (std::is_same_v<T, PluginReloaded>) {
          if (e.ok) {
            reloads_ok_.Increment();
            plugin_loads_.Increment();
          } else {
            reloads_failed_.Increment();
          }
        }
      },
      event.body);
}

void AggregatorMetrics::on_events(const Schedule& schedule, const std::vector<Event>& events) {
  for (const auto& e : events) on(e);
  const auto c = schedule.client_counts();
  registered_.Set(static_cast<double>(c.registered()));
  online_.Set(static_cast<double>(c.online));
  busy_.Set(static_cast<double>(c.busy));
  idle_.Set(static_cast<double>(c.idle));
  offline_.Set(static_cast<double>(c.offline));
  version_.Set(static_cast<double>(schedule.model_version()));
}

std::function<void(const Schedule&, const std::vector<Event>&)> AggregatorMetrics::hook(
    std::function<void(const Schedule&, const std::vector<Event>&)> next) {
  return [this, next = std::move(next)](const Schedule& s, const std::vector<Event>& events) {
    on_events(s, events);
    if (next) next(s, events);
  };
}

}  // namespace flotilla::monitoring

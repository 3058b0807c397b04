#include "monitoring/peer_metrics.hpp"

#include <prometheus/family.h>

#include <algorithm>

namespace flotilla::monitoring {

ClientStats increase(const ClientStats& now, const ClientStats& before) {
  const bool restarted = now.tasks_completed < before.tasks_completed ||
                         now.tasks_failed < before.tasks_failed ||
                         now.training_seconds < before.training_seconds ||
                         now.examples < before.examples || now.bytes_sent < before.bytes_sent ||
                         now.bytes_received < before.bytes_received;
  if (restarted) return now;
  ClientStats d = now;
  d.tasks_completed -= before.tasks_completed;
  d.tasks_failed -= before.tasks_failed;
  d.training_seconds -= before.training_seconds;
  d.examples -= before.examples;
  d.bytes_sent -= before.bytes_sent;
  d.bytes_received -= before.bytes_received;
  return d;
}

std::string device_class_label(const std::string& reported) {
  std::string out = reported.substr(0, 48);
  for (auto& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == ':' || c == '-';
    if (!ok) c = '_';
  }
  return out.empty() ? "unknown" : out;
}

void ClassTotals::add(const ClientStats& d) {
  tasks_completed += static_cast<double>(d.tasks_completed);
  tasks_failed += static_cast<double>(d.tasks_failed);
  training_seconds += std::max(0.0, d.training_seconds);
  examples += static_cast<double>(d.examples);
  bytes_sent += static_cast<double>(d.bytes_sent);
  bytes_received += static_cast<double>(d.bytes_received);
}

void append_class_families(std::vector<prometheus::MetricFamily>& out, const std::string& prefix,
                           const std::string& scope, const std::map<std::string, ClassTotals>& classes) {
  using prometheus::MetricType;
  struct Column {
    const char* name;
    const char* help;
    MetricType type;
    double ClassTotals::*field;
  };
  static const Column columns[] = {
      {"_tasks_completed_total", "Tasks trained and answered with an update", MetricType::Counter,
       &ClassTotals::tasks_completed},
      {"_tasks_failed_total", "Tasks not answered: training failed, or the device dropped out (emulated)",
       MetricType::Counter, &ClassTotals::tasks_failed},
      {"_training_seconds_total", "Wall seconds of local training", MetricType::Counter,
       &ClassTotals::training_seconds},
      {"_examples_total", "Examples trained on (steps x batch size)", MetricType::Counter,
       &ClassTotals::examples},
      {"_sent_bytes_total", "Bytes the clients sent to the aggregator", MetricType::Counter,
       &ClassTotals::bytes_sent},
      {"_received_bytes_total", "Bytes the clients received from the aggregator", MetricType::Counter,
       &ClassTotals::bytes_received},
      {"_samples_per_second", "Examples per second of local training", MetricType::Gauge,
       &ClassTotals::samples_per_second},
      {"_optimizer_state_bytes", "Bytes of optimizer state in a task", MetricType::Gauge,
       &ClassTotals::optimizer_state_bytes},
  };
  for (const auto& c : columns) {
    prometheus::MetricFamily f{prefix + c.name, std::string(c.help) + ", " + scope + ".", c.type, {}};
    for (const auto& [label, totals] : classes) {
      prometheus::ClientMetric m;
      m.label = {{"device_class", label}};
      (c.type == MetricType::Counter ? m.counter.value : m.gauge.value) = totals.*c.field;
      f.metric.push_back(std::move(m));
    }
    out.push_back(std::move(f));
  }
}

// ---- a client process's own endpoint ----

struct ClientMetrics::State final : prometheus::Collectable {
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    std::lock_guard lock(mutex);
    append_class_families(out, "flotilla_client", "by the clients of this process", classes);
    return out;
  }
  mutable std::mutex mutex;
  std::map<std::string, ClassTotals> classes;
};

ClientMetrics::ClientMetrics(Metrics& metrics) : state_(std::make_shared<State>()) {
  metrics.add(state_);
}

void ClientMetrics::record(const ClientStats& now, const ClientStats& before) {
  const auto d = increase(now, before);
  const auto label = device_class_label(now.device_class);
  std::lock_guard lock(state_->mutex);
  auto& totals = state_->classes[label];
  totals.add(d);
  if (d.training_seconds > 0) {  // a task was trained: its throughput and optimizer state
    totals.samples_per_second = static_cast<double>(d.examples) / d.training_seconds;
    totals.optimizer_state_bytes = static_cast<double>(now.optimizer_state_bytes);
  }
}

// ---- the fleet, at the aggregator ----

FleetMetrics::Class& FleetMetrics::class_for(const std::string& reported_class) {
  std::string label = device_class_label(reported_class);
  if (!classes_.contains(label) && classes_.size() >= max_classes_) label = "other";
  return classes_[label];
}

void FleetMetrics::report(const std::string& peer, const ClientStats& stats) {
  auto [it, first] = peers_.try_emplace(peer);
  Known& known = it->second;
  // The hot path (a known client, the same class as before) looks up nothing but the peer.
  Class* c = known.of;
  if (c == nullptr || stats.device_class != known.last.device_class) {
    c = &class_for(stats.device_class);
    if (c != known.of) {
      left(peer);  // a client that now says another class leaves its old one
      ++c->clients;
    }
  }
  const auto d = increase(stats, known.last);
  c->totals.add(d);
  c->optimizer_bytes_sum += stats.optimizer_state_bytes;
  c->optimizer_bytes_sum -= known.of == c ? known.last.optimizer_state_bytes : 0;
  known.of = c;
  known.last = stats;
}

void FleetMetrics::left(const std::string& peer) {
  auto it = peers_.find(peer);
  if (it == peers_.end() || it->second.of == nullptr) return;
  auto& known = it->second;
  known.of->optimizer_bytes_sum -= known.last.optimizer_state_bytes;
  known.of->clients -= std::min<std::size_t>(known.of->clients, 1);
  known.of = nullptr;
}

void FleetMetrics::collect(std::vector<prometheus::MetricFamily>& out) const {
  std::map<std::string, ClassTotals> classes;
  prometheus::MetricFamily clients{"flotilla_fleet_clients",
                                   "Clients online that report their counters, by device class.",
                                   prometheus::MetricType::Gauge, {}};
  for (const auto& [label, c] : classes_) {
    auto t = c.totals;
    t.samples_per_second = t.training_seconds > 0 ? t.examples / t.training_seconds : 0.0;
    t.optimizer_state_bytes =
        c.clients > 0 ? static_cast<double>(c.optimizer_bytes_sum) / static_cast<double>(c.clients) : 0.0;
    classes.emplace(label, t);
    prometheus::ClientMetric m;
    m.label = {{"device_class", label}};
    m.gauge.value = static_cast<double>(c.clients);
    clients.metric.push_back(std::move(m));
  }
  append_class_families(out, "flotilla_fleet", "as the clients report them, by device class", classes);
  out.push_back(std::move(clients));
}

// ---- the evaluator ----

namespace {

template <class Builder>
auto& family(Builder builder, prometheus::Registry& registry, const std::string& name,
             const std::string& help) {
  return builder.Name(name).Help(help).Register(registry);
}

}  // namespace

EvaluatorMetrics::EvaluatorMetrics(Metrics& metrics)
    : loss_(family(prometheus::BuildGauge(), metrics.registry(), "flotilla_evaluator_loss",
                   "Test loss of the latest evaluated model version.")
                .Add({})),
      accuracy_(family(prometheus::BuildGauge(), metrics.registry(), "flotilla_evaluator_accuracy_ratio",
                       "Test accuracy (0 to 1) of the latest evaluated model version.")
                    .Add({})),
      version_(family(prometheus::BuildGauge(), metrics.registry(), "flotilla_evaluator_model_version",
                      "The latest model version evaluated.")
                   .Add({})),
      last_(family(prometheus::BuildGauge(), metrics.registry(),
                   "flotilla_evaluator_last_evaluation_timestamp_seconds",
                   "Unix time of the latest evaluation.")
                .Add({})),
      evaluations_(family(prometheus::BuildCounter(), metrics.registry(),
                          "flotilla_evaluator_evaluations_total", "Model versions evaluated.")
                       .Add({})),
      duration_(family(prometheus::BuildHistogram(), metrics.registry(),
                       "flotilla_evaluator_evaluation_duration_seconds",
                       "Wall seconds one evaluation took.")
                    .Add({}, exponential_buckets(0.01, 2, 14))) {}

void EvaluatorMetrics::evaluated(std::uint64_t version, double loss, double accuracy, double seconds) {
  loss_.Set(loss);
  accuracy_.Set(accuracy);
  version_.Set(static_cast<double>(version));
  last_.SetToCurrentTime();
  evaluations_.Increment();
  duration_.Observe(seconds);
}

}  // namespace flotilla::monitoring

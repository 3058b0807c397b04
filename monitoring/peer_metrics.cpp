#include "monitoring/peer_metrics.hpp"

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

namespace {

template <class Builder>
auto& family(Builder builder, prometheus::Registry& registry, const std::string& name,
             const std::string& help) {
  return builder.Name(name).Help(help).Register(registry);
}

}  // namespace

ClientFamilies::ClientFamilies(prometheus::Registry& registry, const std::string& prefix,
                               const std::string& scope)
    : completed_(family(prometheus::BuildCounter(), registry, prefix + "_tasks_completed_total",
                        "Tasks trained and answered with an update, " + scope + ".")),
      failed_(family(prometheus::BuildCounter(), registry, prefix + "_tasks_failed_total",
                     "Tasks not answered: training failed, or the device dropped out (emulated), " +
                         scope + ".")),
      seconds_(family(prometheus::BuildCounter(), registry, prefix + "_training_seconds_total",
                      "Wall seconds of local training, " + scope + ".")),
      examples_(family(prometheus::BuildCounter(), registry, prefix + "_examples_total",
                       "Examples trained on (steps x batch size), " + scope + ".")),
      sent_(family(prometheus::BuildCounter(), registry, prefix + "_sent_bytes_total",
                   "Bytes the clients sent to the aggregator, " + scope + ".")),
      received_(family(prometheus::BuildCounter(), registry, prefix + "_received_bytes_total",
                       "Bytes the clients received from the aggregator, " + scope + ".")),
      samples_per_second_(family(prometheus::BuildGauge(), registry, prefix + "_samples_per_second",
                                 "Examples per second of local training, " + scope + ".")),
      optimizer_state_(family(prometheus::BuildGauge(), registry, prefix + "_optimizer_state_bytes",
                              "Bytes of optimizer state in a task, " + scope + ".")) {}

ClientFamilies::Series& ClientFamilies::series(const std::string& device_class) {
  auto it = series_.find(device_class);
  if (it != series_.end()) return it->second;
  const prometheus::Labels labels{{"device_class", device_class}};
  Series s{&completed_.Add(labels),          &failed_.Add(labels),  &seconds_.Add(labels),
           &examples_.Add(labels),           &sent_.Add(labels),    &received_.Add(labels),
           &samples_per_second_.Add(labels), &optimizer_state_.Add(labels)};
  return series_.emplace(device_class, s).first->second;
}

void ClientFamilies::add(const std::string& device_class, const ClientStats& d) {
  auto& s = series(device_class);
  s.completed->Increment(static_cast<double>(d.tasks_completed));
  s.failed->Increment(static_cast<double>(d.tasks_failed));
  s.seconds->Increment(std::max(0.0, d.training_seconds));
  s.examples->Increment(static_cast<double>(d.examples));
  s.sent->Increment(static_cast<double>(d.bytes_sent));
  s.received->Increment(static_cast<double>(d.bytes_received));
}

void ClientFamilies::set_gauges(const std::string& device_class, double samples_per_second,
                                double optimizer_bytes) {
  auto& s = series(device_class);
  s.samples_per_second->Set(samples_per_second);
  s.optimizer_state->Set(optimizer_bytes);
}

ClientMetrics::ClientMetrics(prometheus::Registry& registry)
    : families_(registry, "flotilla_client", "by the clients of this process") {}

void ClientMetrics::record(const ClientStats& now, const ClientStats& before) {
  const auto d = increase(now, before);
  const auto label = device_class_label(now.device_class);
  std::lock_guard lock(mutex_);
  families_.add(label, d);
  if (d.training_seconds > 0) {  // a task was trained: its throughput and optimizer state
    families_.set_gauges(label, static_cast<double>(d.examples) / d.training_seconds,
                         static_cast<double>(now.optimizer_state_bytes));
  }
}

FleetMetrics::FleetMetrics(prometheus::Registry& registry, std::size_t max_classes)
    : max_classes_(max_classes),
      families_(registry, "flotilla_fleet", "as the clients report them, by device class"),
      clients_(family(prometheus::BuildGauge(), registry, "flotilla_fleet_clients",
                      "Clients that reported their counters, by device class.")) {}

void FleetMetrics::report(const std::string& peer, const ClientStats& stats) {
  std::string label = device_class_label(stats.device_class);
  if (!totals_.contains(label) && totals_.size() >= max_classes_) label = "other";
  auto [it, first] = peers_.try_emplace(peer);
  Known& known = it->second;
  ClientStats before = first ? ClientStats{} : known.last;
  if (!first && known.device_class != label) {
    // A client that now says another class (a restart with another profile) leaves its old one.
    auto& old = totals_[known.device_class];
    old.optimizer_bytes -= static_cast<double>(known.last.optimizer_state_bytes);
    old.clients -= std::min<std::size_t>(old.clients, 1);
    clients_.Add({{"device_class", known.device_class}}).Set(static_cast<double>(old.clients));
    first = true;
  }
  const auto d = increase(stats, before);
  auto& t = totals_[label];
  if (first) {
    ++t.clients;
  } else {
    t.optimizer_bytes -= static_cast<double>(known.last.optimizer_state_bytes);
  }
  t.optimizer_bytes += static_cast<double>(stats.optimizer_state_bytes);
  t.examples += static_cast<double>(d.examples);
  t.seconds += std::max(0.0, d.training_seconds);
  families_.add(label, d);
  families_.set_gauges(label, t.seconds > 0 ? t.examples / t.seconds : 0.0,
                       t.clients > 0 ? t.optimizer_bytes / static_cast<double>(t.clients) : 0.0);
  clients_.Add({{"device_class", label}}).Set(static_cast<double>(t.clients));
  known.device_class = label;
  known.last = stats;
}

EvaluatorMetrics::EvaluatorMetrics(prometheus::Registry& registry)
    : loss_(family(prometheus::BuildGauge(), registry, "flotilla_evaluator_loss",
                   "Test loss of the latest evaluated model version.")
                .Add({})),
      accuracy_(family(prometheus::BuildGauge(), registry, "flotilla_evaluator_accuracy_ratio",
                       "Test accuracy (0 to 1) of the latest evaluated model version.")
                    .Add({})),
      version_(family(prometheus::BuildGauge(), registry, "flotilla_evaluator_model_version",
                      "The latest model version evaluated.")
                   .Add({})),
      last_(family(prometheus::BuildGauge(), registry,
                   "flotilla_evaluator_last_evaluation_timestamp_seconds",
                   "Unix time of the latest evaluation.")
                .Add({})),
      evaluations_(family(prometheus::BuildCounter(), registry, "flotilla_evaluator_evaluations_total",
                          "Model versions evaluated.")
                       .Add({})),
      duration_(family(prometheus::BuildHistogram(), registry,
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

#include "runtime/federation.hpp"

#include "runtime/fedavg.hpp"
#include "runtime/plugin_aggregation.hpp"

#include <algorithm>
#include <numeric>

namespace flotilla {

Expected<Dataset> client_train_data(const Config& config, const Dataset& full_train,
                                    std::uint32_t id) {
  if (id >= static_cast<std::uint32_t>(config.data.clients)) {
    return Error{Errc::invalid_argument, "client id " + std::to_string(id) +
                                             " is out of range: data.clients is " +
                                             std::to_string(config.data.clients) +
                                             " (ids 0.." + std::to_string(config.data.clients - 1) + ")"};
  }
  PartitionSpec spec;
  spec.kind = config.data.partition;
  spec.num_clients = config.data.clients;
  spec.alpha = config.data.alpha;
  spec.seed = config.run.seed;
  spec.min_examples = config.data.min_examples;
  auto parts = partition(full_train.labels, spec);
  auto split = split_train_test(parts.at(id), config.data.test_fraction, config.run.seed + id);
  return subset(full_train, split.train);
}

Dataset evaluation_data(const Config& config, const Dataset& full_test) {
  const auto n = config.evaluator.examples == 0 ? full_test.size()
                                                : std::min(config.evaluator.examples, full_test.size());
  if (n == full_test.size()) return full_test;
  std::vector<std::int64_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  return subset(full_test, idx);
}

Expected<std::unique_ptr<Model>> build_model(const Config& config) {
  auto device = resolve_device(config.run.device);
  if (!device) return device.error();
  return Model::create(config.model, *device, config.run.seed);
}

EndpointOptions endpoint_options(const Config& config) {
  EndpointOptions o;
  o.limits.max_message_bytes = config.aggregator.max_message_bytes;
  return o;
}

std::string run_id(const Config& config) {
  return config.run.name + "-" + std::to_string(config.run.seed);
}

Expected<std::unique_ptr<PluginRegistry>> plugin_registry(const Config& config) {
  auto device = resolve_device(config.run.device);
  if (!device) return device.error();
  std::vector<std::filesystem::path> path(config.run.plugin_path.begin(), config.run.plugin_path.end());
  return std::make_unique<PluginRegistry>(std::move(path), *device);
}

Expected<std::unique_ptr<Aggregation>> build_aggregation(const Config& config,
                                                         PluginRegistry& registry,
                                                         const TensorList& initial) {
  const auto& name = config.aggregator.strategy;
  if (name == "builtin") return std::unique_ptr<Aggregation>(std::make_unique<FedAvg>(initial));
  auto library = registry.load_spec(name, FLOTILLA_KIND_AGGREGATOR);
  if (!library) {
    return Error{library.error().code,
                 config.source + ": aggregator.strategy \"" + name + "\": " + library.error().message};
  }
  auto agg = PluginAggregation::create(*library, config.aggregator.options, initial);
  if (!agg) {
    return Error{agg.error().code, config.source + ": " + agg.error().message};
  }
  return std::unique_ptr<Aggregation>(std::move(agg).value());
}

}  // namespace flotilla

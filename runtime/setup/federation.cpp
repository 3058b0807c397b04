#include "runtime/setup/federation.hpp"

#include <thread>

#include "runtime/ml/sentencepiece.hpp"

#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/plugin_host/plugin_aggregation.hpp"
#include "runtime/plugin_host/plugin_optimizer.hpp"
#include "runtime/ml/text.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/base/log.hpp"
#include "runtime/server/async_schedule.hpp"
#include "runtime/server/sync_rounds.hpp"
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

namespace flotilla {

std::vector<std::vector<std::int64_t>> client_partitions(const Config& config,
                                                       const Dataset& full_train) {
  PartitionSpec spec;
  spec.kind = config.data.partition;
  spec.num_clients = config.data.clients;
  spec.alpha = config.data.alpha;
  spec.seed = config.run.seed;
  spec.min_examples = config.data.min_examples;
  spec.classes_per_client = config.data.classes_per_client;
  spec.examples_per_client = config.data.examples_per_client;
  return partition(full_train.partition_labels(), spec);
}

Expected<Dataset> client_train_data(const Config& config, const Dataset& full_train,
                                    std::uint32_t id,
                                    const std::vector<std::vector<std::int64_t>>* parts) {
  if (id >= static_cast<std::uint32_t>(config.data.clients)) {
    return Error{Errc::invalid_argument, "client id " + std::to_string(id) +
                                             " is out of range: data.clients is " +
                                             std::to_string(config.data.clients) +
                                             " (ids 0.." + std::to_string(config.data.clients - 1) + ")"};
  }
  std::vector<std::vector<std::int64_t>> own;
  if (parts == nullptr) {
    own = client_partitions(config, full_train);
    parts = &own;
  }
  return normalized(subset(full_train, client_train_indices(config, *parts, id)));
}

std::vector<std::int64_t> client_train_indices(const Config& config,
                                               const std::vector<std::vector<std::int64_t>>& parts,
                                               std::uint32_t id) {
  return split_train_test(parts.at(id), config.data.test_fraction, config.run.seed + id).train;
}

Dataset evaluation_data(const Config& config, const Dataset& full_test) {
  const auto n = config.evaluator.examples == 0 ? full_test.size()
                                                : std::min(config.evaluator.examples, full_test.size());
  if (n == full_test.size()) return full_test;
  std::vector<std::int64_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  return subset(full_test, idx);
}

Expected<std::vector<InstructionRecord>> instruction_records(const Config& config, bool train) {
  auto records = read_instructions(config.data.path);
  if (!records) return Error{records.error().code, "data.path: " + records.error().message};
  // One split for every process: records shuffled by the run's seed, the last share held out.
  std::vector<std::int64_t> order(records->size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(config.run.seed ^ 0x7E57DA7AULL);
  shuffle(order, rng);
  const auto held = static_cast<std::size_t>(config.data.held_out * static_cast<double>(order.size()));
  if (held == 0 && config.evaluator.enabled && config.data.held_out > 0) {
    return Error{Errc::invalid_config, "data.path: " + std::to_string(order.size()) +
                                           " records leave none held out at data.held-out = " +
                                           std::to_string(config.data.held_out)};
  }
  std::vector<InstructionRecord> part;
  const std::size_t first = train ? 0 : order.size() - held;
  const std::size_t last = train ? order.size() - held : order.size();
  std::sort(order.begin() + static_cast<std::ptrdiff_t>(first), order.begin() + static_cast<std::ptrdiff_t>(last));
  for (std::size_t i = first; i < last; ++i) part.push_back((*records)[static_cast<std::size_t>(order[i])]);
  if (part.empty()) {
    return Error{Errc::invalid_config, "data.path: no records for the " + std::string(train ? "clients" : "evaluator")};
  }
  return part;
}

Expected<std::unique_ptr<Tokenizer>> run_tokenizer(const Config& config) {
  auto tokenizer = make_tokenizer(config.data.tokenizer, config.data.tokenizer_model);
  if (!tokenizer) return Error{tokenizer.error().code, config.source + ": " + tokenizer.error().message};
  if ((*tokenizer)->vocab_size() > config.model.lm.vocab_size) {
    return Error{Errc::invalid_config, config.source + ": the tokenizer has " + std::to_string((*tokenizer)->vocab_size()) +
                                           " tokens but model.vocab-size is " + std::to_string(config.model.lm.vocab_size) +
                                           " (is the tokenizer the checkpoint's?)"};
  }
  return tokenizer;
}

Expected<Dataset> load_dataset(const Config& config, bool train, ImageForm form) {
  if (config.data.dataset != "instructions") return load_fashion_mnist(config.data.path, train, form);
  auto part = instruction_records(config, train);
  if (!part) return part.error();
  auto tokenizer = run_tokenizer(config);
  if (!tokenizer) return tokenizer.error();
  auto built = build_lm_dataset(*part, **tokenizer, config.data.max_length);
  if (!built) return built.error();
  return std::move(built->data);
}

ModelSpec model_spec(const Config& config, std::int64_t rank) {
  ModelSpec spec = config.model;
  spec.lora.rank = rank;
  spec.lora.alpha = config.lora.alpha;
  spec.lora.dropout = config.lora.dropout;
  spec.lora.targets = config.lora.targets;
  spec.lora.freeze_a = config.lora.freeze_a;
  return spec;
}

Expected<std::unique_ptr<Model>> build_model(const Config& config) {
  auto device = resolve_device(config.run.device);
  if (!device) return device.error();
  return Model::create(model_spec(config, config.lora.rank), *device, config.run.seed);
}

int run_cores(const Config& config) {
  if (config.run.threads > 0) return config.run.threads;
  return static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
}

std::int64_t client_lora_rank(const Config& config, std::uint32_t id) {
  if (id < config.lora.ranks.size()) return config.lora.ranks[id];
  return config.lora.rank;
}

Expected<std::unique_ptr<Model>> build_client_model(const Config& config, std::uint32_t id) {
  auto device = resolve_device(config.run.device);
  if (!device) return device.error();
  return Model::create(model_spec(config, client_lora_rank(config, id)), *device, config.run.seed);
}

std::function<TensorList(std::uint32_t)> client_templates(const Config& config) {
  auto cache = std::make_shared<std::map<std::int64_t, TensorList>>();
  return [config, cache](std::uint32_t id) -> TensorList {
    const auto rank = client_lora_rank(config, id);
    auto it = cache->find(rank);
    if (it == cache->end()) {
      // On the CPU, and without the checkpoint's weights: only names and shapes are kept.
      auto spec = model_spec(config, rank);
      spec.checkpoint.clear();
      auto model = Model::create(spec, c10::Device(c10::kCPU), config.run.seed);
      if (!model) throw Failure(model.error());
      TensorList meta;
      for (const auto& t : (*model)->trainable_state()) {
        meta.push_back({t.name, at::empty(t.tensor.sizes(), t.tensor.options().device(at::kMeta))});
      }
      it = cache->emplace(rank, std::move(meta)).first;
    }
    return it->second;
  };
}

PluginHostFacts plugin_host_facts(const Config& config) {
  PluginHostFacts facts;
  facts.lora_alpha = config.lora.rank > 0 ? config.lora.alpha : 0.0;
  return facts;
}

PluginOptions lora_plugin_options(const Config& config, const PluginLibrary& library) {
  PluginOptions options = config.aggregator.options;
  // Plugins built before ABI 1.2 learnt lora.alpha only as an option of theirs named "alpha".
  const bool before_host_alpha = library.info().abi_minor < 2;
  if (before_host_alpha && library.info().option("alpha") != nullptr && !options.contains("alpha")) {
    options["alpha"] = fmt::format("{}", config.lora.alpha);
  }
  return options;
}

Expected<void> check_method_needs(const Config& c, const AggregationTraits& t, const std::string& method) {
  auto refuse = [&](const std::string& why) {
    return Error{Errc::invalid_config, c.source + ": aggregator.strategy \"" + method + "\" " + why};
  };
  if (t.full_model && c.lora.rank > 0) {
    return refuse("averages full models, but with lora.rank > 0 clients send only adapters; use a "
                  "method that aggregates adapters (e.g. \"fedit\") or the \"fedavg\" plugin");
  }
  if (t.full_model && !c.model.trainable.empty()) {
    return refuse("averages full models, but with model.trainable clients send only those layers; use "
                  "the \"fedavg\" plugin");
  }
  if (t.lora_adapters && c.lora.rank == 0) {
    return refuse("aggregates LoRA adapters, but lora.rank is 0 (no adapters); set [lora] rank and targets");
  }
  if (t.lora_frozen_a && !c.lora.freeze_a) {
    return refuse("keeps A frozen at its shared initialisation and trains only B: set lora.freeze-a = true");
  }
  if (t.lora_trains_a && c.lora.freeze_a) {
    return refuse(std::string(t.lora_local_b ? "shares only A (each client keeps its B)"
                                             : "needs each client's A and B (it multiplies B·A)") +
                  ", so A must train: set lora.freeze-a = false");
  }
  if (!t.per_client) {
    for (auto r : c.lora.ranks) {
      if (r != c.lora.rank) {
        return refuse("serves every client the same model, at lora.rank " + std::to_string(c.lora.rank) +
                      ", but lora.ranks gives clients other ranks; use a method that serves each "
                      "client its own rank (e.g. \"flexlora\", \"flora\")");
      }
    }
  }
  return {};
}

EndpointOptions endpoint_options(const Config& config) {
  EndpointOptions o;
  o.limits.max_message_bytes = config.aggregator.max_message_bytes;
  o.limits.max_tensors = config.aggregator.max_tensors;
  return o;
}

Expected<void> secure_client(const Config& config, const std::string& name, EndpointOptions& options) {
  const auto& s = config.security;
  if (s.mode != SecuritySection::Mode::curve) return {};
  const auto where = config.source + ": security (curve): ";
  auto keys = read_curve_secret(std::filesystem::path(s.key_dir) / (name + ".key"));
  if (!keys) return Error{keys.error().code, where + keys.error().message};
  auto server = read_curve_public(s.server_key);
  if (!server) return Error{server.error().code, where + "the aggregator's public key: " + server.error().message};
  options.curve_client = CurveClient{std::move(keys).value(), std::move(server).value()};
  return {};
}

Expected<void> secure_server(const Config& config, const std::string& domain, EndpointOptions& options) {
  const auto& s = config.security;
  if (s.mode != SecuritySection::Mode::curve) return {};
  const auto where = config.source + ": security (curve): ";
  auto keys = read_curve_secret(std::filesystem::path(s.key_dir) / "aggregator.key");
  if (!keys) return Error{keys.error().code, where + keys.error().message};
  auto authorized = AuthorizedKeys::open(domain == "admin" ? s.admins : s.authorized);
  if (!authorized) return Error{authorized.error().code, where + authorized.error().message};
  logger("aggregator")->info("{} endpoint: Curve encryption; {} key(s) authorized in {}", domain,
                             (*authorized)->size(), (*authorized)->dir().string());
  options.curve_server = CurveServer{std::move(keys).value(), std::move(authorized).value(), domain};
  return {};
}

std::string run_id(const Config& config) {
  return config.run.name + "-" + std::to_string(config.run.seed);
}

Expected<std::shared_ptr<WatchedPlugin>> client_optimizer(const Config& config) {
  auto device = resolve_device(config.run.device);
  if (!device) return device.error();
  std::vector<std::filesystem::path> path(config.run.plugin_path.begin(), config.run.plugin_path.end());
  auto registry = std::make_shared<PluginRegistry>(std::move(path), *device);
  auto library = registry->load_spec(config.optimizer.name, FLOTILLA_KIND_OPTIMIZER);
  if (!library) {
    return Error{Errc::invalid_config, config.source + ": training.optimizer: " + library.error().message};
  }
  auto model = build_model(config);
  if (!model) return model.error();
  const std::string where = config.source + ": training.options";
  auto options = optimizer_options((*library)->info(), config.optimizer.options, config.training);
  if (!options) return Error{Errc::invalid_config, config.source + ": " + options.error().message};
  if (auto ok = (*library)->check_options(*options, where); !ok) return ok.error();
  auto trial = PluginOptimizer::create(*library, *options, trainable_parameters(**model), where);
  if (!trial) return Error{Errc::invalid_config, where + ": " + trial.error().message};
  return std::make_shared<WatchedPlugin>(std::move(registry), std::move(library).value());
}

Expected<std::unique_ptr<PluginRegistry>> plugin_registry(const Config& config) {
  auto device = resolve_device(config.run.device);
  if (!device) return device.error();
  std::vector<std::filesystem::path> path(config.run.plugin_path.begin(), config.run.plugin_path.end());
  return std::make_unique<PluginRegistry>(std::move(path), *device, plugin_host_facts(config));
}

Expected<std::unique_ptr<Aggregation>> build_aggregation(const Config& config,
                                                         PluginRegistry& registry,
                                                         const TensorList& initial) {
  const auto& name = config.aggregator.strategy;
  if (name == "builtin") {
    auto fedavg = std::make_unique<FedAvg>(initial);
    if (auto ok = check_method_needs(config, fedavg->traits(), name); !ok) return ok.error();
    return std::unique_ptr<Aggregation>(std::move(fedavg));
  }
  auto library = registry.load_spec(name, FLOTILLA_KIND_AGGREGATOR);
  if (!library) {
    return Error{library.error().code,
                 config.source + ": aggregator.strategy \"" + name + "\": " + library.error().message};
  }
  // What the plugin declares, checked before it sees the model.
  if (auto ok = check_method_needs(config, traits_of((*library)->info()), name); !ok) return ok.error();
  auto agg = PluginAggregation::create(*library, lora_plugin_options(config, **library), initial);
  if (!agg) {
    return Error{agg.error().code, config.source + ": " + agg.error().message};
  }
  return std::unique_ptr<Aggregation>(std::move(agg).value());
}

void route_plugin_logs() {
  set_plugin_log_sink([](flotilla_log_level lvl, const std::string& plugin, const std::string& msg) {
    auto log = logger("plugin:" + plugin);
    switch (lvl) {
      case FLOTILLA_LOG_DEBUG: log->debug("{}", msg); break;
      case FLOTILLA_LOG_INFO: log->info("{}", msg); break;
      case FLOTILLA_LOG_WARN: log->warn("{}", msg); break;
      default: log->error("{}", msg); break;
    }
  });
}


ScheduleOptions schedule_options(const Config& c) {
  ScheduleOptions o;
  o.ids_from_keys = c.security.mode == SecuritySection::Mode::curve;
  const auto& a = c.aggregator;
  o.kind = a.schedule;
  o.rounds = c.run.rounds;
  o.max_time = c.run.max_time;
  o.clients_per_round = a.clients_per_round;
  o.over_selection = a.over_selection;
  o.min_updates = a.min_updates;
  o.min_clients = a.min_clients != 0 ? a.min_clients : static_cast<std::uint32_t>(c.data.clients);
  o.round_deadline = a.round_deadline;
  o.registration_timeout = a.registration_timeout;
  o.evaluation_timeout = a.evaluation_timeout;
  o.peer_timeout = a.peer_timeout;
  o.target_accuracy = c.run.target_accuracy;
  o.seed = c.run.seed;
  o.training = c.training;
  o.fold_batch = a.fold_batch;
  o.max_examples = a.max_examples;
  o.max_clients = a.max_clients;
  o.validation.finite = a.update_validation != "off";
  o.validation.norm = a.update_validation == "reject" ? ValidationOptions::Norm::reject
                      : a.update_validation == "clip" ? ValidationOptions::Norm::clip
                                                      : ValidationOptions::Norm::off;
  o.validation.norm_factor = a.outlier_factor;
  o.validation.norm_window = a.outlier_window;
  o.max_concurrency = a.max_concurrency;
  o.task_deadline = a.task_deadline;
  o.alpha = a.alpha;
  o.staleness = a.staleness;
  o.buffer_size = a.buffer_size;
  o.server_learning_rate = a.buffer_learning_rate;
  o.max_staleness = a.max_staleness;
  o.staleness_weighted = a.staleness_weighted;
  o.evaluate_every_time = a.evaluate_every_time;
  // The client work of `rounds` synchronous rounds, unless run.versions says otherwise.
  const std::uint64_t per_round = a.clients_per_round != 0 ? a.clients_per_round
                                                           : static_cast<std::uint64_t>(c.data.clients);
  const std::uint64_t concurrency = a.max_concurrency != 0 ? a.max_concurrency
                                                           : static_cast<std::uint64_t>(c.data.clients);
  switch (o.kind) {
    case ScheduleKind::sync:
      o.versions = c.run.rounds;
      o.evaluate_every = a.evaluate_every != 0 ? a.evaluate_every : 1;
      break;
    case ScheduleKind::async:
      o.versions = c.run.versions != 0 ? c.run.versions : c.run.rounds * per_round;
      // A version per update: evaluating each would cost more than training.
      o.evaluate_every = a.evaluate_every != 0 ? a.evaluate_every : concurrency;
      break;
    case ScheduleKind::buffered:
      o.versions = c.run.versions != 0
                       ? c.run.versions
                       : std::max<std::uint64_t>(1, c.run.rounds * per_round / a.buffer_size);
      o.evaluate_every = a.evaluate_every != 0 ? a.evaluate_every : 1;
      break;
  }
  // Clients train a part of the model: tasks carry that part and what changed since the start.
  if (c.lora.rank > 0 || !c.model.trainable.empty()) o.client_template = client_templates(c);
  return o;
}

Expected<std::unique_ptr<Schedule>> make_schedule(const Config& config, TensorList initial,
                                                  std::unique_ptr<Aggregation> aggregation,
                                                  const Clock& clock) {
  auto options = schedule_options(config);
  if (aggregation->traits().lora_local_b) {
    for (const auto& t : initial) {
      if (t.name.ends_with(".lora_B.weight")) options.keep_local.push_back(t.name);
    }
  }
  if (options.kind == ScheduleKind::sync) {
    return std::unique_ptr<Schedule>(std::make_unique<SyncRounds>(
        std::move(options), std::move(initial), std::move(aggregation), clock, run_id(config)));
  }
  if (auto ok = AsyncSchedule::supports(options, *aggregation); !ok) {
    return Error{Errc::invalid_config, config.source + ": aggregator.schedule \"" +
                                           to_string(options.kind) + "\" with aggregator.strategy \"" +
                                           config.aggregator.strategy + "\": " + ok.error().message};
  }
  return std::unique_ptr<Schedule>(std::make_unique<AsyncSchedule>(
      std::move(options), std::move(initial), std::move(aggregation), clock, run_id(config)));
}

Expected<std::optional<Resumption>> resumption(const Config& config) {
  if (!config.checkpoint.resume) return std::optional<Resumption>{};
  // A journal record holds one update: bounded by the largest message the aggregator takes.
  auto r = load_checkpoint(config.checkpoint.dir, config.aggregator.max_message_bytes + (1u << 20));
  if (!r) return r.error();
  for (const auto& w : r->warnings) logger("aggregator")->warn("{}", w);
  logger("aggregator")->info("{}", r->report);
  return std::optional<Resumption>(std::move(r).value());
}

Expected<std::shared_ptr<CheckpointStore>> attach_checkpoints(const Config& config, Schedule& schedule,
                                                              const std::optional<Resumption>& resumed) {
  if (resumed) {
    if (auto ok = schedule.resume(*resumed); !ok) {
      return Error{ok.error().code, config.checkpoint.dir + ": " + ok.error().message};
    }
    logger("aggregator")->info("resumed at {} {}, model version {}: {} updates accepted so far ({} "
                               "replayed from the journal){}",
                               schedule.kind() == ScheduleKind::sync ? "round" : "version",
                               schedule.round(), schedule.model_version(),
                               schedule.counters().updates_accepted, resumed->journal.size(),
                               schedule.done() ? "; the run was already complete" : "");
  }
  if (config.checkpoint.dir.empty()) return std::shared_ptr<CheckpointStore>();
  const bool sync = config.aggregator.schedule == ScheduleKind::sync;
  CheckpointOptions options{config.checkpoint.dir,
                            config.checkpoint.every != 0 ? config.checkpoint.every : sync ? 1u : 100u,
                            config.checkpoint.keep, config.checkpoint.sync_journal};
  auto opened = CheckpointStore::open(std::move(options), resumed ? &*resumed : nullptr);
  if (!opened) return opened.error();
  std::shared_ptr<CheckpointStore> store = std::move(opened).value();
  if (auto ok = keep_checkpoints(schedule, store, resumed.has_value()); !ok) {
    return Error{ok.error().code, "checkpoint.dir: " + ok.error().message};
  }
  logger("aggregator")->info("checkpoints in {} every {} {} (the latest {} kept){}", config.checkpoint.dir,
                             store->options().every, sync ? "rounds" : "versions", config.checkpoint.keep,
                             sync                             ? ""
                             : config.checkpoint.sync_journal ? "; every accepted update journaled and flushed"
                                                              : "; every accepted update journaled (not flushed)");
  return store;
}

}  // namespace flotilla

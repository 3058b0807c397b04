#include "actors/roles.hpp"

#include "actors/client_actor.hpp"
#include "actors/evaluator_actor.hpp"
#include "runtime/plugin_host/plugin_aggregation.hpp"
#include "runtime/setup/federation.hpp"
#include "runtime/base/log.hpp"
#include "runtime/base/tsan.hpp"
#include "runtime/ml/trainer.hpp"

#include <ATen/Parallel.h>

#include <thread>
#include <unistd.h>

namespace flotilla::actors {
namespace {

/// LibTorch threads of a standalone role (aggregator, client or evaluator process): run.threads,
/// else 1. Several roles on one machine each taking every core were measured up to 25x slower
/// (OpenMP threads spin-waiting for busy cores); a dedicated device sets run.threads.
int role_threads(const Config& config) { return config.run.threads > 0 ? config.run.threads : 1; }

RoleResult failed(const Error& e) { return RoleResult{1, e.message}; }

/// Messages ZeroMQ holds for each client before the aggregator reads them: a client has one
/// update and a heartbeat or two in flight at most.
constexpr int kAggregatorQueuePerClient = 4;

Expected<std::shared_ptr<AggregatorSetup>> aggregator_setup(const Config& config,
                                                            AggregatorHooks hooks,
                                                            const std::string& listen,
                                                            monitoring::Metrics* metrics) {
  auto model = build_model(config);
  if (!model) return model.error();
  auto setup = std::make_shared<AggregatorSetup>();
  setup->mailbox = std::make_shared<Mailbox>();
  setup->outcome = std::make_shared<Outcome>();
  setup->hooks = std::move(hooks);
  auto options = endpoint_options(config);
  options.on_failure = Mailbox::failure_handler(setup->mailbox, "the clients' endpoint " + listen);
  // Back-pressure: at most max-in-flight messages decoded and waiting for the actor, and a few
  // per client in ZeroMQ's queues; beyond that the clients' sends wait.
  options.max_in_flight = config.aggregator.max_in_flight;
  options.receive_high_water_mark = kAggregatorQueuePerClient;
  if (auto ok = secure_server(config, "clients", options); !ok) return ok.error();
  auto endpoint = Endpoint::bind(listen, Mailbox::handler(setup->mailbox), options);
  if (!endpoint) return endpoint.error();
  setup->endpoint = std::shared_ptr<Endpoint>(std::move(endpoint).value());
  if (!config.aggregator.admin_listen.empty()) {
    const auto& admin_listen = config.aggregator.admin_listen;
    // Again: the command line may have overridden either address since the config was read.
    if (auto why = admin_listen_problem(admin_listen, listen); !why.empty()) {
      return Error{Errc::invalid_config, why};
    }
    auto options = endpoint_options(config);
    // The admin endpoint failing must not end the run: its commands are unavailable, said.
    options.on_failure = [](const std::string& why) {
      logger("aggregator")->error("the admin endpoint stopped: {}; admin commands are unavailable", why);
    };
    options.owner_only = true;
    options.limits.max_message_bytes = 1 << 20;  // commands are small
    if (auto ok = secure_server(config, "admin", options); !ok) return ok.error();
    auto admin = Endpoint::bind(admin_listen,
                                Mailbox::handler(setup->mailbox, kAdminChannel), options);
    if (!admin) {
      return Error{admin.error().code, "aggregator.admin-listen: " + admin.error().message};
    }
    setup->admin_endpoint = std::shared_ptr<Endpoint>(std::move(admin).value());
    logger("aggregator")->info("admin commands on {}", setup->admin_endpoint->address());
  }
  // The run's initial model (what every peer builds from the config): the schedule keeps it
  // to know what has changed since, so a resumed run still sends what changed before the crash.
  auto initial = (*model)->state();
  auto method_initial = initial;
  auto resumed = resumption(config);
  if (!resumed) return resumed.error();
  if (*resumed) {
    // The method starts from the checkpoint's model (a server optimizer keeps it).
    if (auto ok = check_compatible(initial, (*resumed)->snapshot.model); !ok) {
      return Error{Errc::invalid_config, config.checkpoint.dir +
                                             ": the checkpoint's model does not fit the config's: " +
                                             ok.error().message};
    }
    method_initial = (*resumed)->snapshot.model;
  }
  auto plugins = plugin_registry(config);
  if (!plugins) return plugins.error();
  setup->plugins = std::move(plugins).value();
  auto aggregation = build_aggregation(config, *setup->plugins, method_initial);
  if (!aggregation) return aggregation.error();
  if (auto* plugin = dynamic_cast<PluginAggregation*>(aggregation->get());
      plugin != nullptr && config.aggregator.watch_plugins) {
    setup->watcher.emplace(plugin->library().info().path, plugin->library().loaded_mtime());
  }
  logger("aggregator")->info("aggregation: {}", (*aggregation)->describe());
  static SteadyClock clock;
  auto schedule = make_schedule(config, std::move(initial), std::move(aggregation).value(), clock);
  if (!schedule) return schedule.error();
  setup->rounds = std::move(schedule).value();
  auto checkpoints = attach_checkpoints(config, *setup->rounds, *resumed);
  if (!checkpoints) return checkpoints.error();
  setup->checkpoints = std::move(checkpoints).value();
  if (metrics != nullptr) {
    setup->metrics = watch_schedule(config, *metrics, setup->hooks);
    metrics->add_counter("flotilla_aggregator_received_bytes_total",
                         "Bytes the aggregator's transport received (all frames).",
                         [e = setup->endpoint] { return static_cast<double>(e->bytes_received()); });
    metrics->add_counter("flotilla_aggregator_sent_bytes_total",
                         "Bytes the aggregator's transport sent (all frames).",
                         [e = setup->endpoint] { return static_cast<double>(e->bytes_sent()); });
    metrics->add_counter("flotilla_aggregator_peers_refused_total",
                         "Under security.mode = \"curve\": connections refused at the handshake (a key "
                         "not authorized, a wrong aggregator key, no encryption) and messages from a "
                         "peer using another id than its key's.",
                         [e = setup->endpoint] { return static_cast<double>(e->peers_refused()); });
    metrics->add_counter("flotilla_aggregator_messages_dropped_total",
                         "Messages the aggregator's transport dropped: for a client not connected "
                         "or not reading (its queue full), unencodable, or after a failure.",
                         [e = setup->endpoint] { return static_cast<double>(e->messages_dropped()); });
  }
  logger("aggregator")->info("listening on {} (run {}, schedule {}, {} {}, waiting for {} clients)",
                             setup->endpoint->address(), run_id(config), setup->rounds->describe(),
                             setup->rounds->planned(),
                             config.aggregator.schedule == ScheduleKind::sync ? "rounds" : "versions",
                             schedule_options(config).min_clients);
  return setup;
}

/// What every client of a process shares: the data's partition and the fleet's traces, each
/// computed once.
struct ClientShared {
  std::vector<std::vector<std::int64_t>> parts;
  std::shared_ptr<const Traces> traces;
};

Expected<ClientShared> client_shared(const Config& config, const Dataset& full_train) {
  ClientShared shared;
  shared.parts = client_partitions(config, full_train);
  if (!config.fleet.empty()) {
    auto traces = Traces::load(config.fleet);
    if (!traces) return Error{traces.error().code, config.source + ": " + traces.error().message};
    shared.traces = *traces;
  }
  return shared;
}

Expected<std::shared_ptr<ClientSetup>> client_setup(const Config& config, std::uint32_t id,
                                                    const std::string& connect,
                                                    const Dataset& full_train, int threads,
                                                    std::shared_ptr<WatchedPlugin> optimizer,
                                                    const ClientShared& shared) {
  auto data = client_train_data(config, full_train, id, &shared.parts);
  if (!data) return data.error();
  auto setup = std::make_shared<ClientSetup>();
  if (auto ok = setup->connect(config, connect, "client-" + std::to_string(id), id); !ok) {
    return ok.error();
  }
  setup->id = id;
  setup->optimizer = std::move(optimizer);
  setup->train = std::move(data).value();
  setup->threads = threads;
  setup->profile.kind = setup->model->device().str();
  // What this device has; relative compute speed 1.0 unless it emulates a profile.
  setup->profile.memory_bytes = static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                                static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  if (!config.fleet.empty()) {
    const auto& profile = profile_for(config.fleet, id);
    try {
      setup->device.emplace(profile, id, config.run.seed, shared.traces);
    } catch (const Failure& f) {
      return Error{Errc::invalid_config, config.source + ": " + f.what()};
    }
    setup->profile.compute_speed = static_cast<float>(setup->device->compute_speed());
    setup->profile.kind += " as '" + profile.name + "'";
  }
  const std::string device = setup->model->device().str();  // "cpu", "cuda:0"
  setup->device_class = !config.client.device_class.empty() ? config.client.device_class
                        : setup->device                     ? setup->device->profile().name
                                                            : device.substr(0, device.find(':'));
  return setup;
}

Expected<std::shared_ptr<EvaluatorSetup>> evaluator_setup(const Config& config,
                                                          const std::string& connect, int threads) {
  auto test = load_dataset(config, false);
  if (!test) return test.error();
  auto setup = std::make_shared<EvaluatorSetup>();
  if (auto ok = setup->connect(config, connect, "evaluator"); !ok) return ok.error();
  setup->test = evaluation_data(config, *test);
  setup->threads = threads;
  return setup;
}

RoleResult outcome_of(const std::vector<std::shared_ptr<Outcome>>& outcomes) {
  for (const auto& o : outcomes) {
    std::lock_guard lock(o->mutex);
    if (o->code != 0) return RoleResult{o->code, o->message};
  }
  return {};
}

/// Runs `spawn` in a fresh actor system and waits until every actor is done.
template <class Spawn>
void with_actor_system(Spawn&& spawn) {
  caf::actor_system_config cfg;
  // Under ThreadSanitizer, one scheduler thread: CAF hands an actor from worker to worker
  // through atomics in its own (uninstrumented) library, so an actor's state would look raced
  // between its own consecutive messages. Detached actors, timers and the I/O threads stay.
  if constexpr (kThreadSanitizer) cfg.set("scheduler.max-threads", 1);
  caf::actor_system system{cfg};
  spawn(system);
  system.await_all_actors_done();
}

}  // namespace

std::shared_ptr<monitoring::AggregatorMetrics> watch_schedule(const Config& config,
                                                              monitoring::Metrics& metrics,
                                                              ScheduleHooks& hooks) {
  auto watched = std::make_shared<monitoring::AggregatorMetrics>(metrics);
  watched->describe(run_id(config), to_string(config.aggregator.schedule),
                    config.aggregator.strategy, config.aggregator.strategy != "builtin");
  hooks.on_events = watched->hook(std::move(hooks.on_events));
  return watched;
}

RoleResult run_aggregator(const Config& config, AggregatorHooks hooks,
                          std::optional<std::string> listen, monitoring::Metrics* metrics) {
  at::set_num_threads(role_threads(config));
  auto setup = aggregator_setup(config, std::move(hooks), listen.value_or(config.aggregator.listen),
                                metrics);
  if (!setup) return failed(setup.error());
  with_actor_system([&](caf::actor_system& sys) { sys.spawn(aggregator_actor, *setup); });
  return outcome_of({(*setup)->outcome});
}

RoleResult run_client(const Config& config, std::uint32_t id, const std::string& connect,
                      monitoring::Metrics* metrics) {
  // Images as bytes: only this client's slice is ever turned into floats (a process that
  // normalized all 60,000 first peaked at ~950 MB instead of ~250 MB).
  auto train = load_dataset(config, true, ImageForm::bytes);
  if (!train) return failed(train.error());
  auto optimizer = client_optimizer(config);
  if (!optimizer) return failed(optimizer.error());
  auto shared = client_shared(config, *train);
  if (!shared) return failed(shared.error());
  auto setup = client_setup(config, id, connect, *train, role_threads(config), *optimizer, *shared);
  if (!setup) return failed(setup.error());
  if (metrics != nullptr) (*setup)->client_metrics = std::make_shared<monitoring::ClientMetrics>(*metrics);
  // The client keeps its own slice: the whole training set (47 MB of bytes) and everyone's
  // partition go before the run, not after it.
  *train = Dataset{};
  shared->parts = {};
  logger("client-" + std::to_string(id))
      ->info("{} training examples; connecting to {}", (*setup)->train.size(), connect);
  with_actor_system([&](caf::actor_system& sys) { sys.spawn<caf::detached>(client_actor, *setup); });
  return outcome_of({(*setup)->outcome});
}

RoleResult run_evaluator(const Config& config, const std::string& connect,
                         monitoring::Metrics* metrics) {
  auto setup = evaluator_setup(config, connect, role_threads(config));
  if (!setup) return failed(setup.error());
  if (metrics != nullptr) (*setup)->metrics = std::make_shared<monitoring::EvaluatorMetrics>(*metrics);
  with_actor_system([&](caf::actor_system& sys) { sys.spawn<caf::detached>(evaluator_actor, *setup); });
  return outcome_of({(*setup)->outcome});
}

RoleResult run_all(const Config& config, AggregatorHooks hooks, monitoring::Metrics* metrics) {
  const int n_cores = run_cores(config);
  auto train = load_dataset(config, true, ImageForm::bytes);  // each client normalizes its slice
  if (!train) return failed(train.error());
  auto optimizer = client_optimizer(config);
  if (!optimizer) return failed(optimizer.error());
  auto aggregator = aggregator_setup(config, std::move(hooks), config.aggregator.listen, metrics);
  if (!aggregator) return failed(aggregator.error());
  const std::string address = (*aggregator)->endpoint->address();

  std::vector<std::shared_ptr<Outcome>> outcomes = {(*aggregator)->outcome};
  std::shared_ptr<EvaluatorSetup> evaluator;
  if (config.evaluator.enabled) {
    auto e = evaluator_setup(config, address, 1);
    if (!e) return failed(e.error());
    evaluator = *e;
    if (metrics != nullptr) evaluator->metrics = std::make_shared<monitoring::EvaluatorMetrics>(*metrics);
    outcomes.push_back(evaluator->outcome);
  }
  // Clients and the evaluator share the cores: at most one training or evaluation per core at
  // a time, one thread each, which keeps every core busy without oversubscribing them (OpenMP
  // threads fighting over a busy core were measured 25x slower).
  auto slots = std::make_shared<ComputeSlots>(n_cores);
  if (evaluator) evaluator->compute_slots = slots;
  auto shared = client_shared(config, *train);
  if (!shared) return failed(shared.error());
  // The process's clients add up on one endpoint (its client families; never a client label).
  std::shared_ptr<monitoring::ClientMetrics> client_metrics;
  if (metrics != nullptr) client_metrics = std::make_shared<monitoring::ClientMetrics>(*metrics);
  std::vector<std::shared_ptr<ClientSetup>> clients;
  for (int id = 0; id < config.data.clients; ++id) {
    auto c = client_setup(config, static_cast<std::uint32_t>(id), address, *train, 1, *optimizer,
                          *shared);
    if (!c) return failed(c.error());
    (*c)->compute_slots = slots;
    (*c)->client_metrics = client_metrics;
    outcomes.push_back((*c)->outcome);
    clients.push_back(*c);
  }
  train = Dataset{};  // each client holds its own slice now

  with_actor_system([&](caf::actor_system& sys) {
    sys.spawn(aggregator_actor, *aggregator);
    if (evaluator) sys.spawn<caf::detached>(evaluator_actor, evaluator);
    for (auto& c : clients) sys.spawn<caf::detached>(client_actor, c);
  });
  return outcome_of(outcomes);
}

}  // namespace flotilla::actors

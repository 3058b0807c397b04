#include "runtime/sim/simulator.hpp"

#include "runtime/base/log.hpp"
#include "runtime/base/process.hpp"
#include "runtime/fleet/fleet.hpp"
#include "runtime/ml/client_task.hpp"
#include "runtime/ml/data.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/setup/federation.hpp"

#include <ATen/Parallel.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <mutex>
#include <queue>
#include <thread>
#include <unordered_map>

namespace flotilla {
namespace {

constexpr const char* kEvaluator = "evaluator";
constexpr const char* kClientPrefix = "client-";

using WallClock = std::chrono::steady_clock;

double since(WallClock::time_point start) {
  return std::chrono::duration<double>(WallClock::now() - start).count();
}

/// Time that moves only when the event loop says so.
class VirtualClock final : public Clock {
 public:
  [[nodiscard]] time_point now() const override { return now_; }
  void set(double seconds) {
    now_ = time_point{} + std::chrono::round<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(seconds));
  }

 private:
  time_point now_{};
};

// ---- workers ---------------------------------------------------------------------------------

/// What one worker thread keeps between jobs: models built once and reused for every task
/// (keyed by LoRA rank: clients of one rank train the same shapes) and for evaluation.
/// A model one worker shares among the peers it runs jobs for. A task or an evaluation
/// request carries only what its peer trains and what changed since the initial model, so
/// what an earlier job loaded must not leak into the next one.
struct SharedModel {
  std::unique_ptr<Model> model;
  TensorList pristine;           ///< the model as built
  std::set<std::string> loaded;  ///< tensors jobs have loaded since (restore_uncarried)

  /// Builds the model on first use; then puts back what an earlier job loaded and `carried`
  /// neither carries nor keeps, and loads the tensors kept on the client (`keep_local`): `own`,
  /// the client's as its last task left them, or the initial ones before its first task.
  Expected<Model*> prepare(const std::function<Expected<std::unique_ptr<Model>>()>& build,
                           const TensorList& carried, const std::vector<std::string>& keep_local = {},
                           const TensorList& own = {}) {
    if (!model) {
      auto built = build();
      if (!built) return built.error();
      model = std::move(built).value();
      pristine = model->state();
    }
    if (auto ok = model->load_tensors(restore_uncarried(pristine, loaded, carried, keep_local)); !ok) {
      return ok.error();
    }
    if (!keep_local.empty()) {
      if (auto ok = model->load_tensors(local_part(own.empty() ? pristine : own, keep_local)); !ok) {
        return ok.error();
      }
    }
    return model.get();
  }
};

struct WorkerModels {
  std::map<std::int64_t, SharedModel> by_rank;  ///< clients of one rank train the same shapes
  SharedModel evaluation;
};

/// Threads running jobs earliest-due first, one LibTorch thread each. A job's result depends
/// only on its inputs, never on which worker ran it or when, so the number of workers changes
/// how long a simulation takes and nothing else.
class Workers {
 public:
  explicit Workers(int count) {
    for (int i = 0; i < count; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~Workers() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  template <class Result>
  std::future<Result> submit(double due, std::uint64_t seq, std::function<Result(WorkerModels&)> fn) {
    auto task = std::make_shared<std::packaged_task<Result(WorkerModels&)>>(std::move(fn));
    auto future = task->get_future();
    {
      std::lock_guard lock(mutex_);
      jobs_.push(Job{due, seq, [task](WorkerModels& m) { (*task)(m); }});
    }
    wake_.notify_one();
    return future;
  }

 private:
  struct Job {
    double due = 0;
    std::uint64_t seq = 0;
    std::function<void(WorkerModels&)> run;
  };
  struct Later {
    bool operator()(const Job& a, const Job& b) const {
      return a.due != b.due ? a.due > b.due : a.seq > b.seq;
    }
  };

  void loop() {
    // Per thread: OpenMP's thread count is a property of the calling thread.
    at::set_num_threads(1);
    WorkerModels models;
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = jobs_.top();
        jobs_.pop();
      }
      job.run(models);
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::priority_queue<Job, std::vector<Job>, Later> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

struct Trained {
  Expected<TaskResult> result = Error{Errc::internal, "not trained"};
  TensorList local;  ///< the client's kept-local tensors after the task (Task::keep_local)
  double seconds = 0;  ///< wall time of the training itself
};

struct Scored {
  EvalStats stats;
  double seconds = 0;
  std::string error;
};

// ---- the simulation --------------------------------------------------------------------------

/// One simulated device: its training indices, its behaviour, and where it stands. A model is
/// lent to it by a worker only while it trains.
struct SimClient {
  std::unique_ptr<std::int32_t[]> indices;
  std::uint32_t examples = 0;
  bool online = true;
  bool busy = false;  ///< a task is on the device (training, uploading, or abandoned mid-way)
  double last_beat = 0;
  DeviceEmulator device;
  /// The tensors the method keeps on the client (Task::keep_local), as its last task left them;
  /// the workers' models are shared by all clients of a rank, so they are kept here.
  TensorList local;
};

/// A task on its way through a device.
struct InFlight {
  std::future<Trained> trained;
  Update update;
  std::deque<Task> waiting;  ///< tasks that arrived while the device was busy, in order
};

enum class Kind : std::uint8_t { tick, availability, compute_done, update_arrives, client_free,
                                 evaluation_done, status };

struct SimEvent {
  double time = 0;
  std::uint64_t seq = 0;
  Kind kind = Kind::tick;
  std::uint32_t client = 0;
};

struct EventLater {
  bool operator()(const SimEvent& a, const SimEvent& b) const {
    return a.time != b.time ? a.time > b.time : a.seq > b.seq;
  }
};

class Simulation {
 public:
  Simulation(const Config& config, SimulationHooks hooks) : config_(config), hooks_(std::move(hooks)) {}

  Expected<SimulationReport> run();

 private:
  Expected<void> set_up();
  Expected<void> populate();
  void push(double time, Kind kind, std::uint32_t client = 0) {
    if (kind != Kind::tick && kind != Kind::status) ++pending_work_;
    queue_.push(SimEvent{time, next_seq_++, kind, client});
  }
  void handle(const SimEvent& e);
  void process(std::vector<Send> sends);
  void drain_schedule();
  void deliver_task(std::uint32_t id, Task task);
  void start_task(std::uint32_t id, Task task);
  void compute_done(std::uint32_t id);
  /// The device is idle again; `answered`: it just sent its update (the schedule heard it),
  /// else it abandoned its task and its next heartbeat comes at the next tick.
  void free_client(std::uint32_t id, bool answered);
  void availability_change(std::uint32_t id);
  void start_evaluation(EvaluationRequest request);
  void evaluation_done();
  void heartbeats();
  void status();
  [[nodiscard]] double reference_seconds(const TrainingConfig& t, std::uint32_t examples) const;
  [[nodiscard]] std::string peer(std::uint32_t id) const { return kClientPrefix + std::to_string(id); }
  [[nodiscard]] std::optional<std::uint32_t> client_of(const std::string& peer) const;
  [[nodiscard]] Expected<void> stalled() const;

  const Config& config_;
  SimulationHooks hooks_;
  SimulationReport report_;
  VirtualClock clock_;
  double now_ = 0;
  WallClock::time_point wall_start_;

  Dataset train_;
  Dataset test_;
  std::shared_ptr<WatchedPlugin> optimizer_;
  std::unique_ptr<PluginRegistry> plugins_;
  std::unique_ptr<Schedule> schedule_;
  std::vector<SimClient> clients_;
  std::unordered_map<std::uint32_t, InFlight> inflight_;
  std::deque<std::pair<EvaluationRequest, std::future<Scored>>> evaluations_;
  std::unique_ptr<Workers> workers_;

  std::priority_queue<SimEvent, std::vector<SimEvent>, EventLater> queue_;
  /// Queued compute, uploads, frees, evaluations and availability changes: while any is
  /// queued, something can still happen (a night with every device offline is not a stall).
  std::uint64_t pending_work_ = 0;
  std::uint64_t next_seq_ = 0;
  std::uint64_t job_seq_ = 0;
  double tick_ = 1;
  double beat_every_ = 15;
  double last_activity_ = 0;
  double stall_limit_ = 0;
  double next_wall_status_ = 10;
};

std::optional<std::uint32_t> Simulation::client_of(const std::string& p) const {
  const std::string_view prefix(kClientPrefix);
  if (p.size() <= prefix.size() || p.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  std::uint32_t id = 0;
  const char* first = p.data() + prefix.size();
  const char* last = p.data() + p.size();
  auto r = std::from_chars(first, last, id);
  if (r.ec != std::errc{} || r.ptr != last || id >= clients_.size()) return std::nullopt;
  return id;
}

double Simulation::reference_seconds(const TrainingConfig& t, std::uint32_t examples) const {
  // What train_local goes through: local-steps batches, else local-epochs passes over the data.
  const double seen = t.local_steps > 0
                          ? static_cast<double>(t.local_steps) *
                                std::min<double>(t.batch_size, std::max<std::uint32_t>(examples, 1))
                          : static_cast<double>(t.local_epochs) * examples;
  return seen * config_.simulation.example_seconds;
}

Expected<void> Simulation::set_up() {
  auto train = load_dataset(config_, true);
  if (!train) return train.error();
  train_ = std::move(train).value();
  if (config_.evaluator.enabled) {
    auto test = load_dataset(config_, false);
    if (!test) return test.error();
    test_ = evaluation_data(config_, *test);
  }
  auto optimizer = client_optimizer(config_);
  if (!optimizer) return optimizer.error();
  optimizer_ = std::move(optimizer).value();

  auto model = build_model(config_);
  if (!model) return model.error();
  auto initial = (*model)->state();
  auto plugins = plugin_registry(config_);
  if (!plugins) return plugins.error();
  plugins_ = std::move(plugins).value();
  auto aggregation = build_aggregation(config_, *plugins_, initial);
  if (!aggregation) return aggregation.error();
  auto schedule = make_schedule(config_, std::move(initial), std::move(aggregation).value(), clock_);
  if (!schedule) return schedule.error();
  schedule_ = std::move(schedule).value();

  const auto& a = config_.aggregator;
  tick_ = std::chrono::duration<double>(config_.simulation.tick).count();
  const double peer_timeout = std::chrono::duration<double>(a.peer_timeout).count();
  if (tick_ > peer_timeout / 2) {
    return Error{Errc::invalid_config,
                 config_.source + ": simulation.tick (" + std::to_string(tick_) +
                     " s) must be at most half of aggregator.peer-timeout, or idle clients would "
                     "be taken for gone between two heartbeats"};
  }
  // Idle devices beat often enough never to look silent; more often only costs events.
  beat_every_ = std::max(std::chrono::duration<double>(config_.client.heartbeat_interval).count(),
                         peer_timeout / 2 - tick_);
  using std::chrono::duration;
  stall_limit_ = peer_timeout + tick_ +
                 std::max({duration<double>(a.round_deadline).count(),
                           duration<double>(a.task_deadline).count(),
                           duration<double>(a.registration_timeout).count(),
                           duration<double>(a.evaluation_timeout).count()});
  return {};
}

Expected<void> Simulation::populate() {
  const auto before = heap_bytes_in_use();
  const auto n = static_cast<std::uint32_t>(config_.data.clients);
  std::shared_ptr<const Traces> traces;
  if (!config_.fleet.empty()) {
    auto t = Traces::load(config_.fleet);
    if (!t) return Error{t.error().code, config_.source + ": " + t.error().message};
    traces = *t;
  }
  // One shared copy of each profile, whatever the number of devices.
  std::map<const DeviceProfileSpec*, std::shared_ptr<const DeviceProfileSpec>> shared;
  auto parts = client_partitions(config_, train_);
  clients_.reserve(n);
  for (std::uint32_t id = 0; id < n; ++id) {
    const auto& spec = profile_for(config_.fleet, id);
    auto& profile = shared[&spec];
    if (!profile) profile = std::make_shared<const DeviceProfileSpec>(spec);
    const auto train = client_train_indices(config_, parts, id);
    std::vector<std::int64_t>().swap(parts[id]);
    SimClient c{nullptr, static_cast<std::uint32_t>(train.size()), true, false, 0,
                DeviceEmulator(profile, id, config_.run.seed, traces), {}};
    c.indices = std::make_unique<std::int32_t[]>(train.size());
    for (std::size_t i = 0; i < train.size(); ++i) c.indices[i] = static_cast<std::int32_t>(train[i]);
    clients_.push_back(std::move(c));
  }
  std::vector<std::vector<std::int64_t>>().swap(parts);

  // Every device says hello at the start, as a client process does when it starts (an offline
  // one is then silent and set aside after the peer timeout). The schedule starts at its
  // min-clients-th hello; the work it hands out is delivered once every device is in, so the
  // population's memory is measured before anything trains.
  std::vector<Send> first;
  auto keep = [&first](std::vector<Send> sends) {
    for (auto& s : sends) {
      // Welcomes are dropped unread: a simulated device needs none.
      if (!std::holds_alternative<Welcome>(s.payload)) first.push_back(std::move(s));
    }
  };
  if (config_.evaluator.enabled) {
    Hello hello;
    hello.role = Role::evaluator;
    hello.num_examples = static_cast<std::uint64_t>(test_.size());
    keep(schedule_->on_hello(kEvaluator, hello));
  }
  for (std::uint32_t id = 0; id < n; ++id) {
    auto& c = clients_[id];
    Hello hello;
    hello.role = Role::client;
    hello.client_id = id;
    hello.num_examples = c.examples;
    hello.profile.kind = "simulated as '" + c.device.profile().name + "'";
    hello.profile.compute_speed = static_cast<float>(c.device.compute_speed());
    c.online = c.device.online_at(0);
    keep(schedule_->on_hello(peer(id), hello));
    const double change = c.device.next_change_after(0);
    if (std::isfinite(change)) push(change, Kind::availability, id);
  }
  drain_schedule();
  const auto after = heap_bytes_in_use();
  report_.idle_bytes_per_client = n == 0 || after <= before ? 0 : (after - before) / n;
  process(std::move(first));
  return {};
}

void Simulation::process(std::vector<Send> sends) {
  if (!sends.empty()) last_activity_ = now_;
  for (auto& s : sends) {
    if (s.peer == kEvaluator) {
      if (auto* request = std::get_if<EvaluationRequest>(&s.payload)) {
        start_evaluation(std::move(*request));
      }
      continue;
    }
    auto id = client_of(s.peer);
    if (!id) continue;
    if (auto* task = std::get_if<Task>(&s.payload)) deliver_task(*id, std::move(*task));
    // Welcome, Shutdown and error replies change nothing on a simulated device.
  }
}

void Simulation::drain_schedule() {
  for (const auto& r : schedule_->take_completed()) {
    if (hooks_.schedule.on_round) hooks_.schedule.on_round(r);
  }
  auto events = schedule_->take_events();
  for (const auto& e : events) {
    // A device the schedule set aside learns nothing of it: it keeps sending heartbeats every
    // client.heartbeat-interval, and its next one brings it back (here: at the next tick).
    if (const auto* left = std::get_if<ClientLeft>(&e.body)) {
      if (auto id = client_of(left->peer)) clients_[*id].last_beat = -beat_every_;
    }
  }
  if (hooks_.schedule.on_events && !events.empty()) hooks_.schedule.on_events(*schedule_, events);
}

void Simulation::deliver_task(std::uint32_t id, Task task) {
  auto& c = clients_[id];
  if (c.busy) {
    // A device works through its tasks one at a time, as a client process does.
    inflight_[id].waiting.push_back(std::move(task));
    return;
  }
  start_task(id, std::move(task));
}

void Simulation::start_task(std::uint32_t id, Task task) {
  auto& c = clients_[id];
  if (!c.device.online_at(now_)) {
    ++report_.tasks_unreached;  // an offline device never sees it
    return;
  }
  c.busy = true;
  const double arrives = now_ + c.device.download_seconds(total_bytes(task.tensors));
  const auto plan = c.device.plan_task(reference_seconds(task.config, c.examples));
  if (plan.drops) {
    ++report_.tasks_dropped;
    push(arrives + plan.drop_after_seconds, Kind::client_free, id);
    return;
  }
  const double done = arrives + plan.compute_seconds;
  auto library = optimizer_->library();
  std::function<Trained(WorkerModels&)> job =
      [this, id, library, local = c.local, task = std::move(task)](WorkerModels& models) -> Trained {
    Trained out;
    try {
      auto model = models.by_rank[client_lora_rank(config_, id)].prepare(
          [&] { return build_client_model(config_, id); }, task.tensors, task.keep_local, local);
      if (!model) {
        out.result = model.error();
        return out;
      }
      const auto& c = clients_[id];
      std::vector<std::int64_t> rows(c.indices.get(), c.indices.get() + c.examples);
      const Dataset data = subset(train_, rows);
      const auto start = WallClock::now();
      out.result = run_task(**model, data, task, library, config_.optimizer.options,
                            config_.source + ": training.options");
      out.seconds = since(start);
      if (!task.keep_local.empty()) out.local = local_part((*model)->trainable_state(), task.keep_local);
    } catch (const std::exception& e) {
      out.result = Error{Errc::internal, e.what()};
    }
    return out;
  };
  inflight_[id].trained = workers_->submit(done, job_seq_++, std::move(job));
  push(done, Kind::compute_done, id);
}

void Simulation::compute_done(std::uint32_t id) {
  auto& f = inflight_[id];
  Trained trained = f.trained.get();
  report_.training_seconds += trained.seconds;
  if (!trained.result) {
    ++report_.tasks_failed;
    logger("simulator")->error("client {} cannot train its task: {}", id, trained.result.error().message);
    free_client(id, true);  // its error reply is heard
    return;
  }
  ++report_.tasks_trained;
  if (!trained.local.empty()) clients_[id].local = std::move(trained.local);
  f.update = std::move(trained.result->update);
  push(now_ + clients_[id].device.upload_seconds(total_bytes(f.update.tensors)),
       Kind::update_arrives, id);
}

void Simulation::free_client(std::uint32_t id, bool answered) {
  auto& c = clients_[id];
  c.busy = false;
  c.last_beat = answered ? now_ : -beat_every_;
  auto it = inflight_.find(id);
  if (it == inflight_.end()) return;
  while (!c.busy && !it->second.waiting.empty()) {
    Task next = std::move(it->second.waiting.front());
    it->second.waiting.pop_front();
    start_task(id, std::move(next));
  }
  if (!c.busy && it->second.waiting.empty()) inflight_.erase(it);
}

void Simulation::availability_change(std::uint32_t id) {
  auto& c = clients_[id];
  c.online = c.device.online_at(now_);
  if (c.online && !c.busy) {
    // Back on the network: its first heartbeat re-admits it.
    c.last_beat = now_;
    ++report_.heartbeats;
    ++report_.events;
    process(schedule_->on_heartbeat(peer(id), Heartbeat{}));
  }
  const double next = c.device.next_change_after(now_);
  if (std::isfinite(next)) push(next, Kind::availability, id);
}

void Simulation::start_evaluation(EvaluationRequest request) {
  std::function<Scored(WorkerModels&)> job = [this, tensors = request.tensors](WorkerModels& models) {
    Scored out;
    try {
      auto model = models.evaluation.prepare([&] { return build_model(config_); }, tensors);
      if (!model) {
        out.error = model.error().message;
        return out;
      }
      if (auto ok = (*model)->load_tensors(tensors); !ok) {
        out.error = ok.error().message;
        return out;
      }
      const auto start = WallClock::now();
      out.stats = evaluate(**model, test_, config_.evaluator.batch_size);
      out.seconds = since(start);
    } catch (const std::exception& e) {
      out.error = e.what();
    }
    return out;
  };
  // Evaluation takes no virtual time: its result is read back at the same instant.
  auto future = workers_->submit(now_, job_seq_++, std::move(job));
  evaluations_.emplace_back(std::move(request), std::move(future));
  push(now_, Kind::evaluation_done);
}

void Simulation::evaluation_done() {
  auto [request, future] = std::move(evaluations_.front());
  evaluations_.pop_front();
  Scored scored = future.get();
  report_.evaluation_seconds += scored.seconds;
  if (!scored.error.empty()) {
    logger("simulator")->error("cannot evaluate version {}: {}", request.model_version, scored.error);
    return;  // the schedule's evaluation timeout takes it from here, as with a real evaluator
  }
  ++report_.evaluations;
  process(schedule_->on_evaluation(
      kEvaluator, EvaluationResult{request.round, request.model_version, scored.stats.num_examples,
                                   scored.stats.loss, scored.stats.accuracy, {}}));
}

void Simulation::heartbeats() {
  for (std::uint32_t id = 0; id < clients_.size(); ++id) {
    auto& c = clients_[id];
    if (!c.online || c.busy || now_ - c.last_beat < beat_every_) continue;
    c.last_beat = now_;
    ++report_.heartbeats;
    ++report_.events;
    process(schedule_->on_heartbeat(peer(id), Heartbeat{}));
  }
  if (config_.evaluator.enabled) {
    ++report_.heartbeats;
    ++report_.events;
    process(schedule_->on_heartbeat(kEvaluator, Heartbeat{}));
  }
}

void Simulation::status() {
  if (!hooks_.on_status) return;
  hooks_.on_status(SimulationStatus{now_, since(wall_start_), report_.events,
                                    schedule_->model_version(), inflight_.size()});
}

Expected<void> Simulation::stalled() const {
  if (pending_work_ > 0 || now_ - last_activity_ <= stall_limit_) return {};
  return Error{Errc::rejected,
               "the simulated run stalled: nothing happened for " +
                   std::to_string(static_cast<long>(now_ - last_activity_)) +
                   " virtual seconds and nothing is pending: no device trains, none will come "
                   "online again, and the schedule sends no work (are all devices offline for "
                   "good, or is no client left?)"};
}

void Simulation::handle(const SimEvent& e) {
  if (e.kind != Kind::tick && e.kind != Kind::status) --pending_work_;
  switch (e.kind) {
    case Kind::tick:
      heartbeats();
      process(schedule_->on_tick());
      if (!schedule_->done()) push(now_ + tick_, Kind::tick);
      break;
    case Kind::availability: availability_change(e.client); break;
    case Kind::compute_done: compute_done(e.client); break;
    case Kind::update_arrives: {
      auto update = std::move(inflight_[e.client].update);
      last_activity_ = now_;
      free_client(e.client, true);
      process(schedule_->on_update(peer(e.client), update));
      break;
    }
    case Kind::client_free:
      last_activity_ = now_;
      free_client(e.client, false);
      break;
    case Kind::evaluation_done: evaluation_done(); break;
    case Kind::status:
      status();
      push(now_ + std::chrono::duration<double>(config_.simulation.progress).count(), Kind::status);
      break;
  }
}

Expected<SimulationReport> Simulation::run() {
  const auto setup_start = WallClock::now();
  // Per-client chatter (registrations, devices going quiet) would be millions of lines; the
  // summary counts it. --log-level debug shows it.
  if (spdlog::get_level() > spdlog::level::debug) logger("aggregator")->set_level(spdlog::level::err);
  // The loop's own tensor work (folding, mixing) on one thread too: OpenMP threads spinning
  // for cores the workers hold were measured many times slower than one thread.
  at::set_num_threads(1);
  if (auto ok = set_up(); !ok) return ok.error();
  report_.workers = std::max(1, config_.run.threads);
  report_.clients = static_cast<std::uint32_t>(config_.data.clients);
  workers_ = std::make_unique<Workers>(report_.workers);
  if (auto ok = populate(); !ok) return ok.error();
  report_.setup_seconds = since(setup_start);

  wall_start_ = WallClock::now();
  push(tick_, Kind::tick);
  if (config_.simulation.progress.count() > 0) {
    push(std::chrono::duration<double>(config_.simulation.progress).count(), Kind::status);
  }
  Expected<void> outcome;
  while (!schedule_->done() && !queue_.empty()) {
    const SimEvent e = queue_.top();
    queue_.pop();
    now_ = e.time;
    clock_.set(now_);
    ++report_.events;
    handle(e);
    drain_schedule();
    if (config_.simulation.progress.count() == 0 && since(wall_start_) >= next_wall_status_) {
      next_wall_status_ += 10;
      status();
    }
    if (e.kind == Kind::tick) {
      if (outcome = stalled(); !outcome) break;
    }
  }
  report_.virtual_seconds = now_;
  report_.wall_seconds = since(wall_start_);
  report_.peak_resident_bytes = peak_resident_bytes();
  // Training still under way when the run ended is waited for: its compute was performed.
  for (auto& [id, f] : inflight_) {
    if (f.trained.valid()) report_.training_seconds += f.trained.get().seconds;
  }
  for (auto& [request, future] : evaluations_) report_.evaluation_seconds += future.get().seconds;
  if (!outcome) return outcome.error();
  report_.failure = schedule_->failure();
  if (hooks_.schedule.on_done) hooks_.schedule.on_done(*schedule_);
  return report_;
}

}  // namespace

Expected<SimulationReport> simulate(const Config& config, SimulationHooks hooks) {
  Simulation simulation(config, std::move(hooks));
  return simulation.run();
}

}  // namespace flotilla

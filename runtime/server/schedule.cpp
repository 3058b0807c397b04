#include "runtime/server/schedule.hpp"

#include "runtime/base/log.hpp"
#include "runtime/plugin_host/plugin_aggregation.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace flotilla {

const char* to_string(ScheduleKind kind) noexcept {
  switch (kind) {
    case ScheduleKind::sync: return "sync";
    case ScheduleKind::async: return "async";
    case ScheduleKind::buffered: return "buffered";
  }
  return "?";
}

Schedule::Schedule(ScheduleOptions options, TensorList initial_model,
                   std::unique_ptr<Aggregation> aggregation, const Clock& clock, std::string run_id)
    : options_(std::move(options)),
      model_(std::move(initial_model)),
      changed_(model_.size(), false),
      aggregation_(std::move(aggregation)),
      clock_(clock),
      run_id_(std::move(run_id)),
      rng_(options_.seed ^ 0x9E3779B97F4A7C15ULL),
      selection_(options_.selection ? options_.selection : std::make_shared<const Selection>()),
      registry_(clock),
      ledger_(clock, EvaluationLedger::Options{options_.evaluation_timeout, options_.evaluate_every,
                                               options_.evaluate_every_time}),
      started_(clock.now()),
      validator_(options_.validation) {}

Send Schedule::error_to(const std::string& peer, WireErrc code, std::string message) {
  return Send{peer, ErrorReply{code, std::move(message)}};
}

double Schedule::now_seconds() const {
  return std::chrono::duration<double>(clock_.now() - started_).count();
}

void Schedule::emit(EventBody body) {
  Event e{now_seconds(), std::move(body)};
  recorder_.on(e);
  events_.push_back(std::move(e));
}

std::vector<Event> Schedule::take_events() {
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

std::uint32_t Schedule::client_id_of(const std::string& peer) const {
  const auto* p = registry_.find_any(peer);
  return p != nullptr ? p->client_id : 0;
}

Schedule::Weight Schedule::weight_of(const Update& update) const {
  // Not capped at the count the client registered with: a device's data may grow.
  const std::uint64_t cap = std::max<std::uint64_t>(options_.max_examples, 1);
  const std::uint64_t claim = std::max<std::uint64_t>(update.num_examples, 1);
  return {static_cast<double>(std::min(claim, cap)), claim > cap};
}

std::optional<Schedule::Validated> Schedule::validate(std::vector<Send>& out, const std::string& peer,
                                                      const Update& update, const TensorList& tensors,
                                                      TensorList& storage) {
  const auto verdict = validator_.inspect(tensors, model_);
  if (!verdict.ok) {
    reject(out, peer, update, verdict.outlier ? RejectReason::outlier : RejectReason::not_finite,
           verdict.why);
    return std::nullopt;
  }
  if (verdict.scale < 1) {
    logger("aggregator")->warn("update from {} clipped: {}", peer, verdict.why);
    storage = UpdateValidator::clip(tensors, model_, verdict.scale);
    validator_.accepted(verdict.norm * verdict.scale);
    return Validated{&storage, true};
  }
  validator_.accepted(verdict.norm);
  return Validated{&tensors, false};
}

std::vector<Send> Schedule::on_hello(const std::string& peer, const Hello& hello,
                                     std::uint16_t protocol_minor) {
  std::vector<Send> out;
  if (phase_ == Phase::done) {
    out.push_back(Send{peer, Shutdown{"the run is over"}});
    return out;
  }
  if (hello.role == Role::client && options_.kind == ScheduleKind::buffered && protocol_minor < 2) {
    // A client before protocol 1.2 ignores Task.sendDelta and would send weights for ever.
    emit(MessageRefused{peer, "client speaks protocol 1." + std::to_string(protocol_minor)});
    out.push_back(error_to(peer, WireErrc::protocol_version,
                           "the buffered schedule needs clients of protocol 1.2 or later (delta "
                           "updates); this client speaks 1." + std::to_string(protocol_minor)));
    return out;
  }
  // Since 1.5 a task carries what the client trains and what changed since the initial model,
  // an evaluation request what changed: a peer before 1.5 expects the whole model. Its clients
  // still get the whole model where they train all of it.
  const bool partial = hello.role == Role::evaluator || static_cast<bool>(options_.client_template) ||
                       !options_.keep_local.empty();
  if (partial && protocol_minor < 5) {
    emit(MessageRefused{peer, "peer speaks protocol 1." + std::to_string(protocol_minor)});
    out.push_back(error_to(peer, WireErrc::protocol_version,
                           std::string(hello.role == Role::evaluator ? "evaluators" : "clients of this run") +
                               " need protocol 1.5 or later (a task or evaluation request carries only "
                               "what changed since the initial model); this peer speaks 1." +
                               std::to_string(protocol_minor)));
    return out;
  }
  if (hello.role != Role::client && hello.role != Role::evaluator) {
    out.push_back(error_to(peer, WireErrc::rejected, "only clients and evaluators register"));
    return out;
  }
  if (options_.ids_from_keys) {
    const bool fits = hello.role == Role::client ? peer == "client-" + std::to_string(hello.client_id)
                                                 : peer.rfind("evaluator", 0) == 0;
    if (!fits) {
      const std::string why =
          "the key of '" + peer + "' cannot register as " +
          (hello.role == Role::client ? "client " + std::to_string(hello.client_id) : std::string("an evaluator")) +
          " (a key is for one id: client-<id>, or evaluator)";
      emit(MessageRefused{peer, why});
      warn_throttled(stranger_log_, "refused " + peer + ": " + why);
      out.push_back(error_to(peer, WireErrc::rejected, why));
      return out;
    }
  }
  if (registry_.find_any(peer) == nullptr && registry_.known() >= options_.max_clients) {
    const std::string why = "the federation is full: " + std::to_string(registry_.known()) +
                            " peers registered (aggregator.max-clients)";
    emit(MessageRefused{peer, why});
    warn_throttled(stranger_log_, "refused " + peer + ": " + why);
    out.push_back(error_to(peer, WireErrc::rejected, why));
    return out;
  }
  const bool known = registry_.add(peer, hello);
  emit(ClientJoined{peer, hello.role, hello.client_id, known});
  logger("aggregator")->info("{} {} {} ({} examples, {})", known ? "re-registered" : "registered",
                             hello.role == Role::client ? "client" : "evaluator", peer,
                             hello.num_examples, hello.profile.kind);
  out.push_back(Send{peer, Welcome{run_id_, version_}});
  if (hello.role == Role::evaluator && version_ == 0 && !ledger_.requested(0)) {
    // Evaluate the initial model too, so the first line shows where training starts from.
    request_evaluation(out, 0, 0);
  }
  if (hello.role != Role::client) return out;
  if (phase_ == Phase::registering) {
    maybe_start(out);
  } else if (phase_ == Phase::running) {
    if (known) {
      on_client_restarted(peer, out);
    } else {
      on_client_ready(peer, out);
    }
  }
  return out;
}

std::vector<Send> Schedule::on_heartbeat(const std::string& peer, const Heartbeat& beat,
                                         bool acknowledge) {
  std::vector<Send> out;
  if (registry_.find_any(peer) == nullptr) {
    out.push_back(not_registered(peer));
    return out;
  }
  heard(peer, out);
  note_stats(peer, beat.stats);
  if (acknowledge && phase_ != Phase::done) out.push_back(Send{peer, Heartbeat{version_, false, {}}});
  return out;
}

Send Schedule::not_registered(const std::string& peer) {
  return error_to(peer, WireErrc::not_registered,
                  "not registered with this aggregator (run " + run_id_ +
                      "; it may have restarted): send a Hello");
}

std::vector<Send> Schedule::on_update(const std::string& peer, const Update& update) {
  if (registry_.find_any(peer) == nullptr) {
    // A stranger, or a client of the aggregator this one replaced: it must register first.
    std::vector<Send> out;
    emit(UpdateRejected{peer, 0, update.round, RejectReason::not_sampled, "not registered"});
    warn_throttled(stranger_log_, "rejected update from " + peer + ": not registered");
    out.push_back(not_registered(peer));
    return out;
  }
  note_stats(peer, update.stats);
  return handle_update(peer, update);
}

void Schedule::note_stats(const std::string& peer, const std::optional<ClientStats>& stats) {
  if (!stats) return;
  const auto* p = registry_.find_any(peer);
  if (p == nullptr || p->role != Role::client) return;
  // What a client says of itself is bounded before anyone keeps it: a time that is not a time
  // is refused (it would poison the sums), a long device class is cut.
  if (!std::isfinite(stats->training_seconds) || stats->training_seconds < 0) return;
  ClientReported reported{peer, p->client_id, *stats};
  if (reported.stats.device_class.size() > kMaxDeviceClass) reported.stats.device_class.resize(kMaxDeviceClass);
  emit(std::move(reported));
}

void Schedule::heard(const std::string& peer, std::vector<Send>& out) {
  if (!registry_.heard_from(peer)) return;
  const auto* p = registry_.find(peer);
  emit(ClientJoined{peer, p->role, p->client_id, true});
  logger("aggregator")->info("{} is back", peer);
  if (p->role != Role::client) return;
  if (phase_ == Phase::running) {
    on_client_ready(peer, out);
  } else if (phase_ == Phase::registering) {
    maybe_start(out);  // a peer of a resumed run, back with a heartbeat
  }
}

void Schedule::maybe_start(std::vector<Send>& out) {
  if (phase_ != Phase::registering || registry_.live_clients() < options_.min_clients) return;
  phase_ = Phase::running;
  run_started_ = clock_.now();
  start(out);
}

std::vector<Send> Schedule::on_bad_message(const std::string& peer, const Error& error) {
  emit(MessageRefused{peer, error.message});
  // Counted every time (MessageRefused); said at most every 5 s per kind: a hostile peer can
  // send garbage as fast as the network carries it, and the log is not its to fill.
  warn_throttled(bad_message_log_[error.code],
                 "dropped a message from " + (peer.empty() ? std::string("?") : peer) + ": " + error.message);
  std::vector<Send> out;
  if (!peer.empty()) {
    out.push_back(error_to(peer,
                           error.code == Errc::protocol_version ? WireErrc::protocol_version
                                                                : WireErrc::malformed,
                           error.message));
  }
  return out;
}

void Schedule::warn_throttled(LogThrottle& throttle, const std::string& what) {
  flotilla::warn_throttled(*logger("aggregator"), throttle, clock_.now(), what);
}

void Schedule::on_peer_error(const std::string& peer, const std::string& message) {
  const std::string what = peer + " reports an error: " + message;
  if (registry_.find_any(peer) != nullptr) {
    logger("aggregator")->warn("{}", what);
  } else {
    warn_throttled(stranger_log_, what);
  }
}

std::vector<Send> Schedule::on_other_run(const std::string& peer, const std::string& their_run) {
  const std::string why = "message for run '" + their_run + "', this aggregator runs '" + run_id_ + "'";
  if (peer.empty() || registry_.find_any(peer) != nullptr) {
    return on_bad_message(peer, Error{Errc::rejected, why});
  }
  emit(MessageRefused{peer, why});
  logger("aggregator")->debug("{} is not registered: {}", peer, why);
  return {not_registered(peer)};
}

void Schedule::reject(std::vector<Send>& out, const std::string& peer, const Update& update,
                      RejectReason reason, const std::string& why) {
  emit(UpdateRejected{peer, client_id_of(peer), update.round, reason, why});
  logger("aggregator")->warn("{} update from {} for {} {}: {}",
                             reason == RejectReason::late ? "late" : "rejected", peer,
                             options_.kind == ScheduleKind::sync ? "round" : "task", update.round, why);
  out.push_back(error_to(peer, WireErrc::rejected, why));
}

std::vector<Send> Schedule::on_evaluation(const std::string& peer, const EvaluationResult& r) {
  std::vector<Send> out;
  // Only a registered evaluator scores the model: a result from anyone else could end the run
  // at run.target-accuracy or stand in the records as the model's accuracy.
  const auto* from = registry_.find_any(peer);
  if (from == nullptr || from->role != Role::evaluator) {
    const std::string why = from == nullptr ? "an evaluation from a peer that is not registered"
                                            : "an evaluation from a client (only evaluators' are taken)";
    emit(MessageRefused{peer, why});
    warn_throttled(stranger_log_, "ignored " + why + ": " + peer);
    out.push_back(from == nullptr ? not_registered(peer) : error_to(peer, WireErrc::rejected, why));
    return out;
  }
  heard(peer, out);
  const auto round = ledger_.received(r.model_version);
  if (!round) {
    logger("aggregator")->warn("ignored an evaluation of round {} version {} from {}", r.round,
                               r.model_version, peer);
    return out;
  }
  emit(Evaluated{r.model_version, *round, r.loss, r.accuracy});
  if (options_.target_accuracy > 0 && r.accuracy >= options_.target_accuracy && r.model_version > 0) {
    target_reached_ = true;
  }
  if (phase_ == Phase::draining && !ledger_.waiting()) finish(out, "all rounds done");
  return out;
}

void Schedule::set_aside(const std::string& peer, const char* why, std::vector<Send>& out) {
  const auto id = client_id_of(peer);
  const auto* p = registry_.find(peer);
  const Role role = p != nullptr ? p->role : Role::client;
  if (!registry_.set_aside(peer)) return;
  logger("aggregator")->warn("{} {}, considered gone until it is heard from again", peer, why);
  emit(ClientLeft{peer, id, why, role});
  on_client_left(peer, out);
}

void Schedule::expire_evaluations() {
  for (const auto version : ledger_.expire(registry_.evaluator().has_value())) {
    logger("aggregator")->warn("no evaluation of model version {} arrived", version);
    emit(EvaluationMissed{version});
  }
}

std::vector<Send> Schedule::on_tick() {
  std::vector<Send> out;
  const auto now = clock_.now();
  // Peers silent for too long are gone: given no work until they are heard from. A client that
  // owes an update is training, not gone (it cannot send heartbeats while it trains); the
  // schedule's deadlines bound how long it is waited for.
  // An evaluator that owes evaluations is busy evaluating (no heartbeats meanwhile either).
  const auto evaluator = registry_.evaluator();
  const auto exempt = [&](const std::string& p) {
    return owes_update(p) || (evaluator && p == *evaluator && ledger_.waiting());
  };
  for (const auto& peer : registry_.silent(options_.peer_timeout, exempt)) {
    set_aside(peer, "silent for longer than aggregator.peer-timeout", out);
  }
  switch (phase_) {
    case Phase::registering:
      if (now - started_ >= options_.registration_timeout) {
        const auto have = registry_.live_clients();
        if (have >= std::max<std::uint32_t>(options_.min_updates, 1)) {
          logger("aggregator")->warn("only {} of {} clients registered; starting anyway", have,
                                     options_.min_clients);
          phase_ = Phase::running;
          run_started_ = now;
          start(out);
        } else {
          failure_ = "only " + std::to_string(have) + " of " + std::to_string(options_.min_clients) +
                     " clients registered within " +
                     std::to_string(options_.registration_timeout.count() / 1000) +
                     " s (aggregator.registration-timeout); are the clients running and pointed "
                     "at this aggregator?";
          finish(out, failure_);
        }
      }
      break;
    case Phase::running:
      tick_running(out);
      break;
    case Phase::draining:
    case Phase::done:
      break;
  }
  // Evaluations that never come must not hold records (or the end of the run) back forever.
  expire_evaluations();
  if (phase_ == Phase::draining && !ledger_.waiting()) finish(out, "all rounds done");
  return out;
}

void Schedule::version_point() {
  if (checkpoint_hook_ && !resuming_) checkpoint_hook_(*this);
}

void Schedule::journal(const UpdateAccepted& accepted, const TensorList& tensors) {
  if (!journal_ || resuming_) return;
  try {
    journal_(JournalEntry{accepted, tensors});
  } catch (const std::exception& e) {
    // Folded all the same: a full disk must not stop training, but it is said every time.
    logger("aggregator")->error("update from {} not journaled (it will not survive a crash): {}",
                                accepted.peer, e.what());
  }
}

void Schedule::replay(const JournalEntry&) {
  throw Failure(Errc::invalid_config, std::string("the ") + to_string(options_.kind) +
                                          " schedule keeps no journal, but the checkpoint has one");
}

ScheduleSnapshot Schedule::snapshot() {
  ScheduleSnapshot s;
  s.kind = to_string(options_.kind);
  s.run_id = run_id_;
  s.version = version_;
  std::ostringstream rng;
  rng << rng_;
  s.rng = rng.str();
  s.counters = recorder_.counters();
  for (auto& [id, p] : registry_.entries()) {
    s.peers.push_back(PeerSnapshot{id, p.role, p.client_id, p.num_examples});
  }
  s.norms = validator_.norms();
  s.finished = phase_ == Phase::done;
  s.model = model_;
  auto state = aggregation_->export_state();
  if (!state) throw Failure(Errc::internal, aggregation_->describe() + ": " + state.error().message);
  s.method_state = std::move(state).value();
  save_position(s);
  return s;
}

Expected<void> Schedule::resume(const Resumption& from) {
  const auto& s = from.snapshot;
  if (s.kind != to_string(options_.kind)) {
    return Error{Errc::invalid_config, "the checkpoint is of a \"" + s.kind +
                                           "\" schedule, the config asks for \"" +
                                           to_string(options_.kind) + "\" (aggregator.schedule)"};
  }
  if (auto ok = check_compatible(model_, s.model, DtypeMatch::exact); !ok) {
    return Error{Errc::invalid_config, "the checkpoint's model does not fit the config's: " + ok.error().message};
  }
  if (s.run_id != run_id_) {
    logger("aggregator")->warn("the config's run is '{}'; continuing the checkpoint's, '{}'", run_id_, s.run_id);
    run_id_ = s.run_id;
  }
  std::istringstream rng(s.rng);
  rng >> rng_;
  if (rng.fail()) return Error{Errc::malformed, "the checkpoint's random engine state does not read"};
  // What differs from the initial model is sent from now on (compared once, here).
  for (std::size_t i = 0; i < model_.size(); ++i) {
    changed_[i] = !at::equal(model_[i].tensor, s.model[i].tensor);
  }
  model_ = s.model;
  version_ = s.version;
  aggregation_->set_global(model_);
  if (auto ok = aggregation_->import_state(s.method_state); !ok) {
    return Error{ok.error().code, aggregation_->describe() + ": " + ok.error().message};
  }
  recorder_.restore(s.counters);
  validator_.restore(s.norms);
  for (const auto& p : s.peers) {
    PeerRegistry::Peer known;
    known.role = p.role;
    known.client_id = p.client_id;
    known.num_examples = p.num_examples;
    known.last_seen = clock_.now();
    registry_.restore(p.peer, known);
  }
  restore_position(s);
  resuming_ = true;
  try {
    for (const auto& entry : from.journal) replay(entry);
  } catch (const std::exception& e) {
    resuming_ = false;
    return Error{Errc::invalid_config, std::string("replaying the journal: ") + e.what()};
  }
  resuming_ = false;
  if (s.finished || (planned() > 0 && round() >= planned())) {
    std::vector<Send> ignored;  // nobody is connected yet
    finish(ignored, "the checkpoint's run was already complete");
  }
  return {};
}

bool Schedule::at_safe_point() const { return aggregation_->accepted() == 0; }

void Schedule::request_reload(std::shared_ptr<PluginLibrary> library, std::string reason) {
  if (auto ok = accepts(traits_of(library->info()), library->info().name); !ok) {
    emit(PluginReloaded{false, ok.error().message});
    logger("aggregator")->error("plugin reload ({}) refused; still running {}: {}", reason,
                                aggregation_->describe(), ok.error().message);
    return;
  }
  pending_reload_ = std::move(library);
  pending_reason_ = std::move(reason);
  if (phase_ != Phase::running || at_safe_point()) apply_pending_reload();
}

void Schedule::apply_pending_reload() {
  if (!pending_reload_ || !at_safe_point()) return;
  auto library = std::move(pending_reload_);
  pending_reload_.reset();
  const std::string before = aggregation_->describe();
  if (auto ok = aggregation_->reload(library); !ok) {
    emit(PluginReloaded{false, ok.error().message});
    logger("aggregator")->error("plugin reload ({}) failed; still running {}: {}", pending_reason_,
                                before, ok.error().message);
    return;
  }
  emit(PluginReloaded{true, aggregation_->describe()});
  logger("aggregator")->info("plugin reloaded ({}) at model version {}: {} -> {}", pending_reason_,
                             version_, before, aggregation_->describe());
}

TensorList Schedule::shared_model(const TensorList& trained) const {
  const auto& keep = options_.keep_local;
  TensorList out;
  for (std::size_t i = 0; i < model_.size(); ++i) {
    const auto& name = model_[i].name;
    const bool kept = std::find(keep.begin(), keep.end(), name) != keep.end();
    const bool trains = std::any_of(trained.begin(), trained.end(),
                                    [&](const NamedTensor& t) { return t.name == name; });
    if (!kept && (changed_[i] || trains)) out.push_back(model_[i]);
  }
  return out;
}

TensorList Schedule::model_for(std::uint32_t client_id) {
  const TensorList tmpl = options_.client_template ? options_.client_template(client_id) : model_;
  std::optional<TensorList> own;
  try {
    own = aggregation_->client_model(client_id, tmpl);
  } catch (const Failure& f) {
    // The client gets the global model instead; if it cannot load that, it says so.
    logger("aggregator")->error("version {}: no model of its own for client {}: {}", version_,
                                client_id, f.what());
  }
  // What the client trains and what changed since the initial model; never what it keeps.
  TensorList tensors = shared_model(tmpl);
  if (!own) return tensors;
  for (auto& t : *own) {
    auto it = std::find_if(tensors.begin(), tensors.end(),
                           [&](const NamedTensor& g) { return g.name == t.name; });
    if (it == tensors.end()) {
      throw Failure(Errc::internal, aggregation_->describe() + ": the model for client " +
                                        std::to_string(client_id) + " has '" + t.name +
                                        "', which is not a tensor of the global model");
    }
    it->tensor = std::move(t.tensor);
  }
  return tensors;
}

Send Schedule::task_for(const std::string& peer, std::uint64_t round, bool delta) {
  const auto id = client_id_of(peer);
  Task task;
  task.round = round;
  task.model_version = version_;
  task.tensors = model_for(id);
  task.config = selection_->configure(id, round, options_.training, options_.seed);
  task.send_delta = delta;
  task.keep_local = options_.keep_local;
  emit(TaskSent{peer, id, round, version_, total_bytes(task.tensors)});
  return Send{peer, std::move(task)};
}

std::uint32_t Schedule::fold(std::span<const WeightedUpdate> batch, Label what) {
  const auto before = aggregation_->accepted();
  const auto started = std::chrono::steady_clock::now();
  auto ok = batch.size() == 1 ? aggregation_->accept(batch.front()) : aggregation_->accept_batch(batch);
  const double seconds = seconds_since(started);
  const auto folded = static_cast<std::uint32_t>(aggregation_->accepted() - before);
  emit(Aggregated{AggregationStep::fold, folded, seconds});
  if (ok) return 0;
  // Validated on arrival, so the method itself failed (e.g. a plugin's bug): the updates it did
  // not take are counted as rejected and the run goes on with the others.
  const auto lost = static_cast<std::uint32_t>(batch.size()) - std::min<std::uint32_t>(
                                                                   folded, static_cast<std::uint32_t>(batch.size()));
  logger("aggregator")->error("{}: {} update(s) could not be folded: {}", what.str(), lost,
                              ok.error().message);
  emit(FoldFailed{lost, ok.error().message});
  return lost;
}

bool Schedule::contain_version(std::uint64_t round, Label what, const std::function<void()>& make) {
  const auto version = version_;
  try {
    make();
    return true;
  } catch (const std::exception& e) {
    logger("aggregator")->error("{}: {}", what.str(), e.what());
    try {
      if (aggregation_->accepted() > 0) aggregation_->discard();
    } catch (const std::exception& d) {
      logger("aggregator")->error("{}: discarding its updates failed too: {}", what.str(), d.what());
    }
    // Once the version exists, only asking for its evaluation failed: it stays produced.
    if (version_ == version) emit(VersionFailed{round, what.str() + ": " + e.what()});
    return false;
  }
}

std::optional<TensorList> Schedule::finalize_aggregation(Label what) {
  try {
    const auto updates = static_cast<std::uint32_t>(aggregation_->accepted());
    const auto started = std::chrono::steady_clock::now();
    auto next = aggregation_->finalize();
    emit(Aggregated{AggregationStep::finalize, updates, seconds_since(started)});
    return next;
  } catch (const Failure& f) {
    // A plugin that fails to produce a version fails it; the model stays as it was.
    logger("aggregator")->error("{}: {}", what.str(), f.what());
    aggregation_->discard();
    return std::nullopt;
  }
}

void Schedule::produce_version(TensorList next, std::uint64_t round, bool final,
                               std::vector<Send>& out) {
  for (std::size_t i = 0; i < model_.size() && i < next.size(); ++i) {
    // A tensor the method did not emit is the same tensor as before: not compared.
    if (!changed_[i] && !next[i].tensor.is_same(model_[i].tensor)) {
      changed_[i] = !at::equal(next[i].tensor, model_[i].tensor);
    }
  }
  model_ = std::move(next);
  ++version_;
  emit(VersionProduced{version_, round});
  if (ledger_.due(version_, final)) request_evaluation(out, version_, round);
}

void Schedule::request_evaluation(std::vector<Send>& out, std::uint64_t version, std::uint64_t round) {
  auto ev = registry_.evaluator();
  if (!ev) return;
  // The evaluator trains nothing: it gets what changed since the initial model.
  out.push_back(Send{*ev, EvaluationRequest{round, version, shared_model({})}});
  ledger_.sent(version, round);
  emit(EvaluationRequested{version, round});
}

std::optional<std::string> Schedule::stop_reason() const {
  if (target_reached_) return "target accuracy reached";
  if (options_.max_time.count() > 0 && run_started_ &&
      clock_.now() - *run_started_ >= options_.max_time) {
    return "run.max-time reached";
  }
  return std::nullopt;
}

void Schedule::end_run(std::vector<Send>& out, const std::string& reason) {
  if (phase_ == Phase::done) return;
  phase_ = Phase::draining;
  // The last version is always evaluated (unless it already was or is being).
  if (version_ > 0 && ledger_.due(version_, true)) request_evaluation(out, version_, round());
  if (!ledger_.waiting()) finish(out, reason);
}

void Schedule::finish(std::vector<Send>& out, const std::string& reason) {
  if (phase_ == Phase::done) return;
  phase_ = Phase::done;
  ledger_.clear();
  emit(RunFinished{reason, !failure_.empty()});
  // Peers set aside too: an offline device that comes back must learn the run is over.
  for (const auto& id : registry_.everyone()) out.push_back(Send{id, Shutdown{reason}});
}

}  // namespace flotilla

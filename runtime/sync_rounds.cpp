#include "runtime/sync_rounds.hpp"

#include "runtime/federation.hpp"
#include "runtime/log.hpp"

#include <algorithm>

namespace flotilla {

SyncOptions SyncOptions::from(const Config& c) {
  SyncOptions o;
  o.rounds = c.run.rounds;
  o.clients_per_round = c.aggregator.clients_per_round;
  o.min_updates = c.aggregator.min_updates;
  o.min_clients = c.aggregator.min_clients != 0 ? c.aggregator.min_clients
                                                : static_cast<std::uint32_t>(c.data.clients);
  o.round_deadline = c.aggregator.round_deadline;
  o.registration_timeout = c.aggregator.registration_timeout;
  o.evaluation_timeout = c.aggregator.evaluation_timeout;
  o.peer_timeout = c.aggregator.peer_timeout;
  o.target_accuracy = c.run.target_accuracy;
  o.seed = c.run.seed;
  o.training = c.training;
  o.fold_batch = c.aggregator.fold_batch;
  if (c.lora.rank > 0) o.client_template = client_templates(c);
  return o;
}

SyncRounds::SyncRounds(SyncOptions options, TensorList initial_model,
                       std::unique_ptr<Aggregation> aggregation, const Clock& clock,
                       std::string run_id)
    : options_(std::move(options)),
      model_(std::move(initial_model)),
      aggregation_(std::move(aggregation)),
      clock_(clock),
      run_id_(std::move(run_id)),
      rng_(options_.seed ^ 0x9E3779B97F4A7C15ULL),
      started_(clock.now()) {}

Send SyncRounds::error_to(const std::string& peer, WireErrc code, std::string message) {
  return Send{peer, ErrorReply{code, std::move(message)}};
}

double SyncRounds::seconds_since(Clock::time_point t) const {
  return std::chrono::duration<double>(clock_.now() - t).count();
}

std::size_t SyncRounds::live_clients() const {
  return static_cast<std::size_t>(std::count_if(
      peers_.begin(), peers_.end(), [](const auto& p) { return p.second.role == Role::client; }));
}

std::optional<std::string> SyncRounds::evaluator() const {
  for (const auto& [id, p] : peers_) {
    if (p.role == Role::evaluator) return id;
  }
  return std::nullopt;
}

std::vector<Send> SyncRounds::on_hello(const std::string& peer, const Hello& hello) {
  std::vector<Send> out;
  if (phase_ == Phase::done) {
    out.push_back(Send{peer, Shutdown{"the run is over"}});
    return out;
  }
  if (hello.role != Role::client && hello.role != Role::evaluator) {
    out.push_back(error_to(peer, WireErrc::rejected, "only clients and evaluators register"));
    return out;
  }
  const bool known = peers_.contains(peer) || gone_.erase(peer) > 0;
  peers_[peer] = Peer{hello.role, hello.client_id, hello.num_examples, clock_.now()};
  logger("aggregator")->info("{} {} {} ({} examples, {})", known ? "re-registered" : "registered",
                             hello.role == Role::client ? "client" : "evaluator", peer,
                             hello.num_examples, hello.profile.kind);
  out.push_back(Send{peer, Welcome{run_id_, version_}});
  if (hello.role == Role::evaluator && version_ == 0 && !pending_.contains(0)) {
    // Evaluate the initial model too, so the first line shows where training starts from.
    RoundRecord r;
    r.round = 0;
    pending_[0] = r;
    request_evaluation(out, 0);
  }
  if (phase_ == Phase::registering && live_clients() >= options_.min_clients) start_round(out);
  return out;
}

void SyncRounds::heard_from(const std::string& peer) {
  if (auto it = peers_.find(peer); it != peers_.end()) {
    it->second.last_seen = clock_.now();
  } else if (auto g = gone_.find(peer); g != gone_.end()) {
    g->second.last_seen = clock_.now();
    peers_.insert(*g);
    gone_.erase(g);
    logger("aggregator")->info("{} is back", peer);
  }
}

void SyncRounds::set_aside(std::map<std::string, Peer>::iterator it, const char* why) {
  logger("aggregator")->warn("{} {}, considered gone until it is heard from again", it->first, why);
  gone_.insert(*it);
  peers_.erase(it);
}

std::vector<Send> SyncRounds::on_heartbeat(const std::string& peer, const Heartbeat&) {
  heard_from(peer);
  return {};
}

std::vector<Send> SyncRounds::on_bad_message(const std::string& peer, const Error& error) {
  ++counters_.messages_malformed;
  logger("aggregator")->warn("dropped a message from {}: {}", peer.empty() ? "?" : peer, error.message);
  std::vector<Send> out;
  if (!peer.empty()) {
    out.push_back(error_to(peer,
                           error.code == Errc::protocol_version ? WireErrc::protocol_version
                                                                : WireErrc::malformed,
                           error.message));
  }
  return out;
}

std::vector<Send> SyncRounds::on_update(const std::string& peer, const Update& update) {
  std::vector<Send> out;
  auto reject = [&](WireErrc code, const std::string& why, bool late) {
    if (late) {
      ++counters_.updates_late;
      if (update.round == current_.round) ++current_.late;
      else if (auto it = pending_.find(update.round); it != pending_.end()) ++it->second.late;
    } else {
      ++counters_.updates_rejected;
      if (phase_ == Phase::training) ++current_.rejected;
    }
    logger("aggregator")->warn("{} update from {} for round {}: {}", late ? "late" : "rejected", peer,
                               update.round, why);
    out.push_back(error_to(peer, code, why));
  };

  heard_from(peer);
  if (phase_ != Phase::training || update.round != round_) {
    if (update.round < round_ || (update.round == round_ && phase_ != Phase::training)) {
      reject(WireErrc::rejected, "round " + std::to_string(update.round) + " is over", true);
    } else {
      reject(WireErrc::rejected, "round " + std::to_string(update.round) + " has not started", false);
    }
    return out;
  }
  if (!sampled_.contains(peer)) {
    reject(WireErrc::rejected, "not sampled for round " + std::to_string(round_), false);
    return out;
  }
  if (replied_.contains(peer)) {
    reject(WireErrc::rejected, "already sent an update for round " + std::to_string(round_), false);
    return out;
  }
  if (update.base_model_version != version_) {
    reject(WireErrc::rejected,
           "update is based on model version " + std::to_string(update.base_model_version) +
               ", the round trains version " + std::to_string(version_),
           false);
    return out;
  }
  const double weight = static_cast<double>(std::max<std::uint64_t>(update.num_examples, 1));
  const auto client_id = peers_[peer].client_id;
  if (auto ok = aggregation_->check(WeightedUpdate{&update.tensors, weight, 0, client_id}); !ok) {
    reject(WireErrc::rejected, ok.error().message, false);
    return out;
  }
  fold_queue_.push_back(Queued{update.tensors, weight, client_id});
  if (fold_queue_.size() >= std::max<std::uint32_t>(options_.fold_batch, 1)) fold_queued();
  replied_.insert(peer);
  ++counters_.updates_accepted;
  ++current_.updates;
  current_.bytes_received += total_bytes(update.tensors);
  loss_sum_ += weight * metric(update.metrics, "loss");
  accuracy_sum_ += weight * metric(update.metrics, "accuracy");
  weight_sum_ += weight;
  if (replied_.size() == sampled_.size()) close_round(out);
  return out;
}

std::vector<Send> SyncRounds::on_evaluation(const std::string& peer, const EvaluationResult& r) {
  auto it = pending_.find(r.round);
  if (it == pending_.end() || it->second.model_version != r.model_version) {
    logger("aggregator")->warn("ignored an evaluation of round {} version {} from {}", r.round,
                               r.model_version, peer);
    return {};
  }
  it->second.eval_loss = r.loss;
  it->second.eval_accuracy = r.accuracy;
  evaluation_sent_.erase(r.round);
  if (options_.target_accuracy > 0 && r.accuracy >= options_.target_accuracy && r.round > 0) {
    target_reached_ = true;
  }
  flush_records();
  std::vector<Send> out;
  if (phase_ == Phase::draining && evaluation_sent_.empty()) finish(out, "all rounds done");
  return out;
}

std::vector<Send> SyncRounds::on_tick() {
  std::vector<Send> out;
  const auto now = clock_.now();
  // Peers silent for too long are gone: never sampled again until they register anew. A client
  // that owes the current round an update is training, not gone (it cannot send heartbeats
  // while it trains); the round deadline bounds how long it is waited for.
  for (auto it = peers_.begin(); it != peers_.end();) {
    const bool training = phase_ == Phase::training && sampled_.contains(it->first) &&
                          !replied_.contains(it->first);
    if (!training && now - it->second.last_seen > options_.peer_timeout) {
      set_aside(it++, "silent for longer than aggregator.peer-timeout");
    } else {
      ++it;
    }
  }
  switch (phase_) {
    case Phase::registering:
      if (now - started_ >= options_.registration_timeout) {
        const auto have = live_clients();
        if (have >= std::max<std::uint32_t>(options_.min_updates, 1)) {
          logger("aggregator")->warn("only {} of {} clients registered; starting anyway", have,
                                     options_.min_clients);
          start_round(out);
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
    case Phase::training:
      fold_queued();
      if (now - round_started_ >= options_.round_deadline) close_round(out);
      break;
    case Phase::draining:
      for (auto it = evaluation_sent_.begin(); it != evaluation_sent_.end();) {
        if (now - it->second >= options_.evaluation_timeout || !evaluator()) {
          logger("aggregator")->warn("no evaluation of round {} arrived", it->first);
          it = evaluation_sent_.erase(it);
        } else {
          ++it;
        }
      }
      flush_records();
      if (evaluation_sent_.empty()) finish(out, "all rounds done");
      break;
    case Phase::done:
      break;
  }
  // Evaluations that never come must not hold records back forever.
  for (auto it = evaluation_sent_.begin(); it != evaluation_sent_.end();) {
    if (now - it->second >= options_.evaluation_timeout) {
      it = evaluation_sent_.erase(it);
    } else {
      ++it;
    }
  }
  flush_records();
  return out;
}

void SyncRounds::request_reload(std::shared_ptr<PluginLibrary> library, std::string reason) {
  pending_reload_ = std::move(library);
  pending_reason_ = std::move(reason);
  if (phase_ != Phase::training) apply_pending_reload();
}

void SyncRounds::apply_pending_reload() {
  if (!pending_reload_) return;
  auto library = std::move(pending_reload_);
  pending_reload_.reset();
  const std::string before = aggregation_->describe();
  if (auto ok = aggregation_->reload(library); !ok) {
    ++counters_.plugin_reload_failures;
    logger("aggregator")->error("plugin reload ({}) failed; still running {}: {}", pending_reason_,
                                before, ok.error().message);
    return;
  }
  ++counters_.plugin_reloads;
  logger("aggregator")->info("plugin reloaded ({}) before round {}: {} -> {}", pending_reason_,
                             round_ + 1, before, aggregation_->describe());
}

void SyncRounds::start_round(std::vector<Send>& out) {
  apply_pending_reload();  // between rounds: nothing is folded in yet
  std::vector<std::string> clients;
  for (const auto& [id, p] : peers_) {
    if (p.role == Role::client) clients.push_back(id);
  }
  if (!run_started_) run_started_ = clock_.now();
  ++round_;
  phase_ = Phase::training;
  round_started_ = clock_.now();
  std::shuffle(clients.begin(), clients.end(), rng_);
  const std::size_t k =
      options_.clients_per_round == 0 ? clients.size()
                                      : std::min<std::size_t>(options_.clients_per_round, clients.size());
  clients.resize(k);
  sampled_ = std::set<std::string>(clients.begin(), clients.end());
  fold_queue_.clear();
  replied_.clear();
  current_ = RoundRecord{};
  current_.round = round_;
  current_.model_version = version_;
  current_.sampled = static_cast<std::uint32_t>(k);
  loss_sum_ = accuracy_sum_ = weight_sum_ = 0;
  for (const auto& peer : sampled_) {
    Task task{round_, version_, model_for(peers_[peer].client_id), options_.training};
    task.config.seed = options_.seed * 1000003ULL + round_ * 7919ULL + peers_[peer].client_id;
    out.push_back(Send{peer, std::move(task)});
  }
  logger("aggregator")->debug("round {} started with {} clients", round_, k);
}

TensorList SyncRounds::model_for(std::uint32_t client_id) {
  const TensorList tmpl = options_.client_template ? options_.client_template(client_id) : model_;
  std::optional<TensorList> own;
  try {
    own = aggregation_->client_model(client_id, tmpl);
  } catch (const Failure& f) {
    // The client gets the global model instead; if it cannot load that, it says so.
    logger("aggregator")->error("round {}: no model of its own for client {}: {}", round_,
                                client_id, f.what());
  }
  if (!own) return model_;
  TensorList tensors = model_;
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

void SyncRounds::fold_queued() {
  if (fold_queue_.empty()) return;
  std::vector<WeightedUpdate> batch;
  for (const auto& q : fold_queue_) batch.push_back({&q.tensors, q.weight, 0, q.client_id});
  const auto before = aggregation_->accepted();
  if (auto ok = aggregation_->accept_batch(batch); !ok) {
    // Validated on arrival, so the method itself failed (e.g. a plugin's bug): the updates it
    // did not take are counted as rejected and the round goes on with the others.
    const auto lost = batch.size() - (aggregation_->accepted() - before);
    logger("aggregator")->error("round {}: {} update(s) could not be folded: {}", round_, lost,
                                ok.error().message);
    counters_.updates_accepted -= lost;
    counters_.updates_rejected += lost;
    current_.updates -= static_cast<std::uint32_t>(lost);
    current_.rejected += static_cast<std::uint32_t>(lost);
  }
  fold_queue_.clear();
}

void SyncRounds::close_round(std::vector<Send>& out) {
  fold_queued();
  current_.round_seconds = seconds_since(round_started_);
  current_.version_seconds = run_started_ ? seconds_since(*run_started_) : 0;
  std::optional<TensorList> next;
  if (current_.updates >= options_.min_updates && aggregation_->accepted() > 0) {
    try {
      next = aggregation_->finalize();
    } catch (const Failure& f) {
      // A plugin that fails to produce a version fails the round; the model stays as it was.
      logger("aggregator")->error("round {}: {}", round_, f.what());
      aggregation_->discard();
    }
  }
  if (next) {
    model_ = std::move(*next);
    ++version_;
    ++counters_.rounds_completed;
    current_.model_version = version_;
    current_.train_loss = weight_sum_ > 0 ? loss_sum_ / weight_sum_ : 0;
    current_.train_accuracy = weight_sum_ > 0 ? accuracy_sum_ / weight_sum_ : 0;
    pending_[round_] = current_;
    request_evaluation(out, round_);
  } else {
    if (aggregation_->accepted() > 0) aggregation_->discard();
    ++counters_.rounds_failed;
    current_.failed = true;
    logger("aggregator")->warn("round {} failed: {} of {} updates by the deadline (min-updates {})",
                               round_, current_.updates, current_.sampled, options_.min_updates);
    pending_[round_] = current_;
  }
  // A sampled client that never replied and has been silent past the peer timeout is not
  // sampled again until it is heard from (a slow but live one comes back with its heartbeat).
  for (const auto& peer : sampled_) {
    auto it = peers_.find(peer);
    if (it != peers_.end() && !replied_.contains(peer) &&
        clock_.now() - it->second.last_seen > options_.peer_timeout) {
      set_aside(it, "missed the round and is silent");
    }
  }
  sampled_.clear();
  replied_.clear();
  flush_records();
  if (round_ >= options_.rounds || target_reached_) {
    phase_ = Phase::draining;
    if (evaluation_sent_.empty()) finish(out, "all rounds done");
  } else {
    start_round(out);
  }
}

void SyncRounds::request_evaluation(std::vector<Send>& out, std::uint64_t round) {
  auto ev = evaluator();
  if (!ev) return;
  auto& record = pending_[round];
  out.push_back(Send{*ev, EvaluationRequest{round, record.model_version, model_}});
  evaluation_sent_[round] = clock_.now();
}

void SyncRounds::flush_records() {
  // Records leave in round order, each once its evaluation is in (or given up on).
  while (!pending_.empty()) {
    auto it = pending_.begin();
    if (evaluation_sent_.contains(it->first)) break;
    it->second.elapsed_seconds = run_started_ ? seconds_since(*run_started_) : 0;
    completed_.push_back(it->second);
    pending_.erase(it);
  }
}

void SyncRounds::finish(std::vector<Send>& out, const std::string& reason) {
  if (phase_ == Phase::done) return;
  phase_ = Phase::done;
  evaluation_sent_.clear();
  flush_records();
  for (const auto& [id, p] : peers_) out.push_back(Send{id, Shutdown{reason}});
}

std::vector<RoundRecord> SyncRounds::take_completed() {
  std::vector<RoundRecord> out;
  out.swap(completed_);
  return out;
}

}  // namespace flotilla

#pragma once
/// Synchronous federated rounds (FedAvg-style) as a plain state machine: it is fed what
/// arrives (registrations, updates, evaluation results, clock ticks) and answers with the
/// messages to send. No threads, sockets or actors in here; the aggregator actor routes.
#include "runtime/aggregation.hpp"
#include "runtime/clock.hpp"
#include "runtime/config.hpp"
#include "runtime/message.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace flotilla {

struct SyncOptions {
  std::uint32_t rounds = 10;
  std::uint32_t clients_per_round = 0;  ///< K; 0 = every live client
  std::uint32_t min_updates = 1;
  std::uint32_t min_clients = 1;        ///< registered clients needed to start
  Duration round_deadline{60'000};
  Duration registration_timeout{120'000};
  Duration evaluation_timeout{120'000};
  Duration peer_timeout{30'000};
  double target_accuracy = 0;           ///< stop after a version reaching it; 0 = off
  /// Validated updates folded together in one pass over memory (1 = fold each on arrival).
  std::uint32_t fold_batch = 4;
  std::uint64_t seed = 0;
  TrainingConfig training;
  /// The names and shapes of what client `id` trains (its model's trainable_state(), e.g. at
  /// its own LoRA rank), for the aggregation's per-client models (Aggregation::client_model).
  /// Unset: every client trains the global model's tensors.
  std::function<TensorList(std::uint32_t)> client_template;

  /// The options a Config asks for.
  [[nodiscard]] static SyncOptions from(const Config& config);
};

/// One outgoing message: `peer` is the transport's routing id.
struct Send {
  std::string peer;
  Payload payload;
  std::uint64_t reply_to = 0;
};

/// What one round did; complete once its version is evaluated (or there is no evaluator).
struct RoundRecord {
  std::uint64_t round = 0;
  std::uint64_t model_version = 0;  ///< the version the round produced (unchanged if failed)
  std::uint32_t sampled = 0;
  std::uint32_t updates = 0;        ///< accepted
  std::uint32_t late = 0;           ///< arrived after the round closed (counted, dropped)
  std::uint32_t rejected = 0;
  bool failed = false;              ///< closed with fewer than min-updates
  double train_loss = 0;            ///< example-weighted mean of the clients' reports
  double train_accuracy = 0;
  std::optional<double> eval_loss;
  std::optional<double> eval_accuracy;
  double round_seconds = 0;         ///< round start to close
  double version_seconds = 0;       ///< run start to the round's close (its version exists)
  double elapsed_seconds = 0;       ///< run start to the record's completion
  std::uint64_t bytes_received = 0; ///< tensor bytes of the accepted updates

  /// Mean tensor bytes one client sent (bytes_received / updates; 0 without updates).
  [[nodiscard]] double bytes_per_client() const {
    return updates > 0 ? static_cast<double>(bytes_received) / updates : 0.0;
  }
};

struct SyncCounters {
  std::uint64_t updates_accepted = 0;
  std::uint64_t updates_rejected = 0;
  std::uint64_t updates_late = 0;
  /// Messages refused before any round logic: undecodable, another protocol version, another
  /// run, or a kind the aggregator does not take.
  std::uint64_t messages_malformed = 0;
  std::uint64_t rounds_completed = 0;
  std::uint64_t rounds_failed = 0;
  std::uint64_t plugin_reloads = 0;          ///< aggregation plugin switched to a new build
  std::uint64_t plugin_reload_failures = 0;  ///< a new build refused; the old one kept running
};

class SyncRounds {
 public:
  SyncRounds(SyncOptions options, TensorList initial_model,
             std::unique_ptr<Aggregation> aggregation, const Clock& clock, std::string run_id);

  [[nodiscard]] std::vector<Send> on_hello(const std::string& peer, const Hello& hello);
  [[nodiscard]] std::vector<Send> on_update(const std::string& peer, const Update& update);
  [[nodiscard]] std::vector<Send> on_evaluation(const std::string& peer,
                                                const EvaluationResult& result);
  [[nodiscard]] std::vector<Send> on_heartbeat(const std::string& peer, const Heartbeat& beat);
  /// A message from `peer` that could not be decoded or is of a kind the aggregator does not
  /// take: counted, answered with an error, nothing else changes.
  [[nodiscard]] std::vector<Send> on_bad_message(const std::string& peer, const Error& error);
  /// Deadlines and timeouts; call often (e.g. every 100 ms).
  [[nodiscard]] std::vector<Send> on_tick();

  /// Switches the aggregation plugin to `library` (a new build of it) at the next safe point:
  /// now if no round is collecting updates, else right after the current round closes, so no
  /// accepted update is lost. A failing switch keeps the old build (logged and counted).
  void request_reload(std::shared_ptr<PluginLibrary> library, std::string reason);
  [[nodiscard]] bool reload_pending() const { return pending_reload_ != nullptr; }

  [[nodiscard]] const Aggregation& aggregation() const { return *aggregation_; }

  /// Round records completed since the last call, in round order.
  [[nodiscard]] std::vector<RoundRecord> take_completed();

  [[nodiscard]] bool done() const { return phase_ == Phase::done; }
  /// Why the run failed (e.g. clients never registered); empty if it did not.
  [[nodiscard]] const std::string& failure() const { return failure_; }
  [[nodiscard]] const SyncCounters& counters() const { return counters_; }
  [[nodiscard]] const TensorList& model() const { return model_; }
  [[nodiscard]] std::uint64_t model_version() const { return version_; }
  [[nodiscard]] std::uint64_t round() const { return round_; }
  [[nodiscard]] std::size_t live_clients() const;
  [[nodiscard]] const std::string& run_id() const { return run_id_; }

 private:
  enum class Phase { registering, training, draining, done };
  struct Peer {
    Role role = Role::client;
    std::uint32_t client_id = 0;
    std::uint64_t num_examples = 0;
    Clock::time_point last_seen;
  };

  void start_round(std::vector<Send>& out);
  void apply_pending_reload();
  /// What client `client_id` is sent: the global model, with the aggregation's per-client
  /// tensors (if it has any) in place of the global ones of the same names.
  [[nodiscard]] TensorList model_for(std::uint32_t client_id);
  void fold_queued();
  /// Records that `peer` was heard from now, re-admitting it if it had been timed out.
  void heard_from(const std::string& peer);
  void set_aside(std::map<std::string, Peer>::iterator it, const char* why);
  void close_round(std::vector<Send>& out);
  void finish(std::vector<Send>& out, const std::string& reason);
  void request_evaluation(std::vector<Send>& out, std::uint64_t round);
  void flush_records();
  [[nodiscard]] double seconds_since(Clock::time_point t) const;
  [[nodiscard]] std::optional<std::string> evaluator() const;
  static Send error_to(const std::string& peer, WireErrc code, std::string message);

  SyncOptions options_;
  TensorList model_;
  std::unique_ptr<Aggregation> aggregation_;
  const Clock& clock_;
  std::string run_id_;
  std::mt19937_64 rng_;

  Phase phase_ = Phase::registering;
  std::string failure_;
  std::map<std::string, Peer> peers_;
  /// Peers timed out; re-admitted as soon as anything arrives from them.
  std::map<std::string, Peer> gone_;
  Clock::time_point started_;
  std::optional<Clock::time_point> run_started_;

  std::uint64_t round_ = 0;
  std::uint64_t version_ = 0;
  Clock::time_point round_started_;
  std::set<std::string> sampled_;
  std::set<std::string> replied_;
  RoundRecord current_;
  double loss_sum_ = 0, accuracy_sum_ = 0, weight_sum_ = 0;
  /// Accepted updates waiting to be folded together (at most fold_batch, folded by the next
  /// tick at the latest).
  struct Queued {
    TensorList tensors;
    double weight = 0;
    std::uint32_t client_id = 0;
  };
  std::vector<Queued> fold_queue_;

  /// Records waiting for their version's evaluation, by version.
  std::map<std::uint64_t, RoundRecord> pending_;
  std::map<std::uint64_t, Clock::time_point> evaluation_sent_;
  std::vector<RoundRecord> completed_;
  bool target_reached_ = false;
  SyncCounters counters_;
  std::shared_ptr<PluginLibrary> pending_reload_;
  std::string pending_reason_;
};

}  // namespace flotilla

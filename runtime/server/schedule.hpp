#pragma once
/// The aggregator's seam: a Schedule is a plain state machine fed what arrives (registrations,
/// updates, evaluations, heartbeats, clock ticks) that answers with the messages to send and
/// records what it did as events. No threads, sockets or actors; the aggregator actor routes.
///
/// This base holds what every schedule needs (the peer registry, the evaluation ledger keyed
/// by version, the registration phase, the reload gate, per-client models, the end of the run);
/// SyncRounds, and AsyncSchedule (FedAsync and FedBuff) add how work is handed out and when a
/// version is produced.
#include "runtime/base/clock.hpp"
#include "runtime/base/log_throttle.hpp"
#include "runtime/plugin_host/aggregation.hpp"
#include "runtime/protocol/message.hpp"
#include "runtime/server/checkpoint.hpp"
#include "runtime/server/evaluation_ledger.hpp"
#include "runtime/server/events.hpp"
#include "runtime/server/peer_registry.hpp"
#include "runtime/server/records.hpp"
#include "runtime/server/selection.hpp"
#include "runtime/server/staleness.hpp"
#include "runtime/server/validation.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace flotilla {

enum class ScheduleKind { sync, async, buffered };
[[nodiscard]] const char* to_string(ScheduleKind kind) noexcept;

struct ScheduleOptions {
  ScheduleKind kind = ScheduleKind::sync;
  std::uint32_t rounds = 10;            ///< sync: rounds to run
  /// async/buffered: versions to produce (0: rounds × clients for async, rounds × clients /
  /// buffer-size for buffered, the client work of `rounds` synchronous rounds).
  std::uint64_t versions = 0;
  Duration max_time{0};                 ///< stop after this long (0 = no limit)
  std::uint32_t clients_per_round = 0;  ///< sync: K; 0 = every live client
  /// sync: sample ceil(K·(1+over_selection)) clients and close the round at the first K
  /// updates; the others' updates then arrive late (counted, dropped).
  double over_selection = 0;
  std::uint32_t min_updates = 1;
  std::uint32_t min_clients = 1;        ///< registered clients needed to start
  Duration round_deadline{60'000};
  Duration registration_timeout{120'000};
  Duration evaluation_timeout{120'000};
  Duration peer_timeout{30'000};
  double target_accuracy = 0;           ///< stop after a version reaching it; 0 = off
  /// Validated updates folded together in one pass over memory (1 = fold each on arrival).
  std::uint32_t fold_batch = 4;
  /// The most an update may weigh: a client's claimed examples (its FedAvg weight) are capped
  /// here (a claim above it is counted).
  std::uint64_t max_examples = 1'000'000;
  /// Peers (clients and evaluators, live or set aside) the registry keeps at most: a Hello
  /// from a new peer beyond it is refused, so strangers cannot grow the aggregator's memory.
  std::uint64_t max_clients = 1'000'000;
  /// Peers are named by their keys (security.mode = "curve"): a Hello must claim what its name
  /// says (client-<id> registers as client <id>; an evaluator's name starts with "evaluator"),
  /// so a key cannot take another client's slot, model or role.
  bool ids_from_keys = false;
  /// What is checked in an update before the method sees it (NaN/Inf, norm outliers).
  ValidationOptions validation;
  std::uint64_t seed = 0;
  TrainingConfig training;
  /// Evaluate every N-th version (sync default 1) and/or every T; always the initial and last.
  std::uint64_t evaluate_every = 1;
  Duration evaluate_every_time{0};

  // async and buffered
  std::uint32_t max_concurrency = 0;    ///< clients training at once; 0 = every live client
  Duration task_deadline{120'000};      ///< a task with no update by then is lost (slot freed)
  double alpha = 0.6;                   ///< FedAsync mixing weight
  Staleness staleness;                  ///< FedAsync's s(τ); FedBuff's weights when enabled
  std::uint32_t buffer_size = 10;       ///< FedBuff's K
  double server_learning_rate = 1.0;    ///< FedBuff's η_g
  std::uint64_t max_staleness = 0;      ///< updates based more versions back are dropped; 0 = off
  bool staleness_weighted = false;      ///< FedBuff: weight each delta by s(τ)

  /// Which waiting clients get work and with what settings; null = Selection's defaults.
  std::shared_ptr<const Selection> selection;

  /// The names and shapes of what client `id` trains (its model's trainable_state(), e.g. at
  /// its own LoRA rank), for the aggregation's per-client models (Aggregation::client_model).
  /// Unset: every client trains the global model's tensors.
  std::function<TensorList(std::uint32_t)> client_template;
  /// Tensors clients train but keep (Task::keep_local): never carried by a task, never sent
  /// back (the method declares FLOTILLA_AGG_LORA_LOCAL_B: every adapter's B).
  std::vector<std::string> keep_local;
};
/// The options were first the synchronous rounds' only.
using SyncOptions = ScheduleOptions;

/// What a round, version or task is called in log lines and failure messages ("round 3",
/// "model version 7"): built only when one is written, never on the path where all goes well.
struct Label {
  const char* kind;
  std::uint64_t number;
  [[nodiscard]] std::string str() const { return std::string(kind) + " " + std::to_string(number); }
};

/// One outgoing message: `peer` is the transport's routing id.
struct Send {
  std::string peer;
  Payload payload;
  std::uint64_t reply_to = 0;
};

class Schedule {
 public:
  Schedule(ScheduleOptions options, TensorList initial_model,
           std::unique_ptr<Aggregation> aggregation, const Clock& clock, std::string run_id);
  virtual ~Schedule() = default;
  Schedule(const Schedule&) = delete;
  Schedule& operator=(const Schedule&) = delete;

  /// `protocol_minor`: the minor protocol version the peer's envelope carried.
  [[nodiscard]] std::vector<Send> on_hello(const std::string& peer, const Hello& hello,
                                           std::uint16_t protocol_minor = kProtocolMinor);
  /// An update from `peer` (the counters it reports are recorded first, then the schedule
  /// decides: accepted, folded, or rejected with a reason).
  [[nodiscard]] std::vector<Send> on_update(const std::string& peer, const Update& update);
  /// A registered evaluator's result; anyone else's is refused (counted, answered, not taken).
  [[nodiscard]] std::vector<Send> on_evaluation(const std::string& peer, const EvaluationResult& result);
  /// `acknowledge`: answer with the aggregator's own heartbeat (peers of protocol 1.4 or later,
  /// so that an idle peer notices a dead aggregator). A peer the aggregator does not know is
  /// told it is not registered (it sends a Hello again: the aggregator restarted).
  [[nodiscard]] std::vector<Send> on_heartbeat(const std::string& peer, const Heartbeat& beat,
                                               bool acknowledge = false);
  /// A message from `peer` that could not be decoded or is of a kind the aggregator does not
  /// take: counted, answered with an error, nothing else changes. Warned about at most every
  /// 5 s per kind of error (each at debug): anyone who reaches the port can send garbage.
  [[nodiscard]] std::vector<Send> on_bad_message(const std::string& peer, const Error& error);
  /// An error `peer` reports (its ErrorReply): logged (a registered peer's each time, a
  /// stranger's at most every 5 s); nothing else changes.
  void on_peer_error(const std::string& peer, const std::string& message);
  /// A message for another run (`their_run`): refused and counted. A peer this run does not
  /// know is also told to register (it was in the run of an aggregator this one replaced).
  [[nodiscard]] std::vector<Send> on_other_run(const std::string& peer, const std::string& their_run);
  /// Deadlines and timeouts; call often (e.g. every 100 ms).
  [[nodiscard]] std::vector<Send> on_tick();

  /// Switches the aggregation plugin to `library` (a new build of it) at the next safe point:
  /// now if no update is folded in, else as soon as the pending version is produced, so no
  /// accepted update (or buffered delta) is lost. A failing switch keeps the old build.
  void request_reload(std::shared_ptr<PluginLibrary> library, std::string reason);
  [[nodiscard]] bool reload_pending() const { return pending_reload_ != nullptr; }
  /// A new build of the aggregation plugin could not even be loaded (counted as a failed
  /// reload; the running build goes on).
  void reload_failed(const std::string& why) { emit(PluginReloaded{false, why}); }

  [[nodiscard]] const Aggregation& aggregation() const { return *aggregation_; }
  /// Records completed since the last call, in order (built from the events).
  [[nodiscard]] std::vector<RoundRecord> take_completed() { return recorder_.take_completed(); }
  /// Events since the last call, in order (for metrics and other observers).
  [[nodiscard]] std::vector<Event> take_events();

  [[nodiscard]] bool done() const { return phase_ == Phase::done; }
  /// Why the run failed (e.g. clients never registered); empty if it did not.
  [[nodiscard]] const std::string& failure() const { return failure_; }
  [[nodiscard]] const ScheduleCounters& counters() const { return recorder_.counters(); }
  [[nodiscard]] const TensorList& model() const { return model_; }
  [[nodiscard]] std::uint64_t model_version() const { return version_; }
  /// sync: the current round; async/buffered: versions produced.
  [[nodiscard]] virtual std::uint64_t round() const { return version_; }
  /// What the progress line counts to: rounds (sync) or versions.
  [[nodiscard]] virtual std::uint64_t planned() const = 0;
  [[nodiscard]] std::size_t live_clients() const { return registry_.live_clients(); }
  /// Clients by state (online, holding a task, set aside), as the events say.
  [[nodiscard]] ClientCounts client_counts() const { return recorder_.client_counts(); }
  [[nodiscard]] const std::string& run_id() const { return run_id_; }
  [[nodiscard]] ScheduleKind kind() const { return options_.kind; }
  /// "sync", "async (alpha 0.6, polynomial(a=0.5))", "buffered (K 10, ...)".
  [[nodiscard]] virtual std::string describe() const = 0;

  /// Called where the schedule is between versions (a round closed, a version produced): a
  /// checkpoint taken there with snapshot() is consistent. Not called while resuming.
  void set_checkpoint_hook(std::function<void(Schedule&)> hook) { checkpoint_hook_ = std::move(hook); }
  /// Called with every update an asynchronous schedule accepts, before it is folded (the
  /// journal that makes it survive a crash); what it throws is logged, the update still folded.
  void set_journal(std::function<void(const JournalEntry&)> journal) { journal_ = std::move(journal); }
  /// The state to continue from; only between versions (see set_checkpoint_hook), else
  /// Failure. Throws Failure if the aggregation method cannot export its state.
  [[nodiscard]] ScheduleSnapshot snapshot();
  /// Continues from a checkpoint before any peer has registered: its model, version, counters,
  /// random engine, validation window, method state and peers (set aside: each is live again
  /// once heard from), then replays the updates journaled after it. Errc::invalid_config if
  /// the checkpoint is of another kind of schedule or another model.
  [[nodiscard]] Expected<void> resume(const Resumption& from);

 protected:
  enum class Phase { registering, running, draining, done };

  /// What the schedule does with an update (on_update has recorded its sender's counters).
  [[nodiscard]] virtual std::vector<Send> handle_update(const std::string& peer, const Update& update) = 0;
  /// Registration is complete: hand out the first work.
  virtual void start(std::vector<Send>& out) = 0;
  /// A client registered or came back while the run is going.
  virtual void on_client_ready(const std::string& peer, std::vector<Send>& out) {}
  /// A known client registered again while the run is going: its process restarted, and any
  /// work it held is gone with the old one.
  virtual void on_client_restarted(const std::string& peer, std::vector<Send>& out) {
    on_client_ready(peer, out);
  }
  /// A client was set aside (silent past the peer timeout).
  virtual void on_client_left(const std::string& peer, std::vector<Send>& out) {}
  /// Whether `peer` may be silent because it is training (no heartbeats while it trains).
  [[nodiscard]] virtual bool owes_update(const std::string& peer) const = 0;
  /// Deadlines of the running phase.
  virtual void tick_running(std::vector<Send>& out) = 0;
  /// Whether nothing is folded into the aggregation (a reload may happen now).
  [[nodiscard]] virtual bool at_safe_point() const;
  /// What a checkpoint needs of the subclass (sync: rounds closed; async: the next task).
  virtual void save_position(ScheduleSnapshot& snapshot) const = 0;
  virtual void restore_position(const ScheduleSnapshot& snapshot) = 0;
  /// Folds a journaled update again, as when it was accepted (resuming).
  virtual void replay(const JournalEntry& entry);
  /// The schedule is between versions: a checkpoint may be taken (set_checkpoint_hook).
  void version_point();
  /// Journals an update about to be folded (set_journal).
  void journal(const UpdateAccepted& accepted, const TensorList& tensors);
  /// Enough clients are live to start (registration complete): start().
  void maybe_start(std::vector<Send>& out);

  /// Whether a method with these traits can work under this schedule (a reloaded build is
  /// checked as the first one was at startup).
  [[nodiscard]] virtual Expected<void> accepts(const AggregationTraits& traits,
                                               const std::string& name) const {
    return {};
  }

  void emit(EventBody body);
  [[nodiscard]] double now_seconds() const;
  /// Replaces the model with `next` as a new version of `round` and asks for its evaluation
  /// when due (always when `final`).
  void produce_version(TensorList next, std::uint64_t round, bool final, std::vector<Send>& out);
  /// Finalizes the aggregation (a plugin that fails it is logged; the updates are discarded);
  /// nothing if it failed.
  [[nodiscard]] std::optional<TensorList> finalize_aggregation(Label what);
  /// Runs `make` (producing a version: finalize, mix, replace the model, ask for its
  /// evaluation). Whatever it throws (a plugin, a device copy) fails that version with its
  /// message (VersionFailed for `round`), never the aggregator: the folded updates are
  /// discarded and the model stays as it was. False if it threw.
  bool contain_version(std::uint64_t round, Label what, const std::function<void()>& make);
  /// Folds `batch` into the aggregation, timed (an Aggregated event); the updates the method
  /// failed to fold are counted (FoldFailed, logged with `what`). Returns how many it lost.
  std::uint32_t fold(std::span<const WeightedUpdate> batch, Label what);
  /// After the last version: wait for its evaluation, then finish.
  void end_run(std::vector<Send>& out, const std::string& reason);
  void finish(std::vector<Send>& out, const std::string& reason);
  /// Why the run should stop now (target accuracy reached, max-time passed); nothing if not.
  [[nodiscard]] std::optional<std::string> stop_reason() const;
  void apply_pending_reload();
  /// What client `client_id` is sent: the global model, with the aggregation's per-client
  /// tensors (if it has any) in place of the global ones of the same names.
  [[nodiscard]] TensorList model_for(std::uint32_t client_id);
  /// The tensors of the global model a peer training `trained` receives: those, and every
  /// one that changed since the initial model, never a kept-local one.
  [[nodiscard]] TensorList shared_model(const TensorList& trained) const;
  /// A task for `peer` with the current model.
  [[nodiscard]] Send task_for(const std::string& peer, std::uint64_t round, bool delta);
  void reject(std::vector<Send>& out, const std::string& peer, const Update& update,
              RejectReason reason, const std::string& why);
  void set_aside(const std::string& peer, const char* why, std::vector<Send>& out);
  /// `peer` was heard from (any message): a peer that had been set aside is back, and a client
  /// back while the run is going is ready for work.
  void heard(const std::string& peer, std::vector<Send>& out);
  [[nodiscard]] std::uint32_t client_id_of(const std::string& peer) const;
  /// What `update` weighs: its claimed examples, at least 1, capped at
  /// options_.max_examples.
  struct Weight {
    double value = 1;
    bool capped = false;  ///< the claim was more than that
  };
  [[nodiscard]] Weight weight_of(const Update& update) const;
  /// The tensors of an update that passed validation: `tensors` itself, or a clipped copy
  /// kept in the `storage` given to validate().
  struct Validated {
    const TensorList* tensors = nullptr;
    bool clipped = false;
  };
  /// Validates `tensors` (an update's weights) against the model (options_.validation): a
  /// refused update is rejected (counted, answered) and nothing is returned; an outlier under
  /// norm = "clip" is clipped into `storage`. Call once the method's own check has passed: a
  /// returned update is accepted (its norm joins the running median).
  [[nodiscard]] std::optional<Validated> validate(std::vector<Send>& out, const std::string& peer,
                                                  const Update& update, const TensorList& tensors,
                                                  TensorList& storage);
  static Send error_to(const std::string& peer, WireErrc code, std::string message);
  /// Tells `peer`, which the registry does not know, to register (WireErrc::not_registered).
  [[nodiscard]] Send not_registered(const std::string& peer);

  ScheduleOptions options_;
  TensorList model_;
  /// Per tensor of model_: whether it has changed since the run's initial model (every peer
  /// builds that one from the config, so a tensor that has not changed is not sent).
  std::vector<bool> changed_;
  std::unique_ptr<Aggregation> aggregation_;
  const Clock& clock_;
  /// Warnings others can repeat without bound: on_bad_message's, per kind of error; and what
  /// peers the registry does not know send (updates, errors, refused Hellos).
  std::map<Errc, LogThrottle> bad_message_log_;
  LogThrottle stranger_log_;
  /// Says `what` (a warning) unless `throttle` holds it back (then at debug).
  void warn_throttled(LogThrottle& throttle, const std::string& what);
  std::string run_id_;
  std::mt19937_64 rng_;
  std::shared_ptr<const Selection> selection_;
  PeerRegistry registry_;
  EvaluationLedger ledger_;
  Phase phase_ = Phase::registering;
  std::string failure_;
  Clock::time_point started_;
  std::optional<Clock::time_point> run_started_;
  std::uint64_t version_ = 0;
  bool target_reached_ = false;

 private:
  void request_evaluation(std::vector<Send>& out, std::uint64_t version, std::uint64_t round);
  void expire_evaluations();
  /// The counters a registered client reported (ignored from peers that are not).
  void note_stats(const std::string& peer, const std::optional<ClientStats>& stats);

  VersionRecorder recorder_;
  UpdateValidator validator_;
  std::vector<Event> events_;
  std::shared_ptr<PluginLibrary> pending_reload_;
  std::string pending_reason_;
  std::function<void(Schedule&)> checkpoint_hook_;
  std::function<void(const JournalEntry&)> journal_;
  bool resuming_ = false;
};

/// Who watches a run, whether a real aggregator or a simulator drives its schedule.
struct ScheduleHooks {
  std::function<void(const RoundRecord&)> on_round;   ///< each completed round/version, in order
  std::function<void(const Schedule&)> on_done;       ///< once, when the run is over
  /// The schedule's events, in order, as they happen, with the schedule that emitted them
  /// (metrics and other observers; called on the schedule's thread).
  std::function<void(const Schedule&, const std::vector<Event>&)> on_events;
};

}  // namespace flotilla

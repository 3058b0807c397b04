#pragma once
/// What clients and evaluators share: their link to the aggregator (registration, heartbeats,
/// the connect timeout, shutdown and error replies). Each actor keeps only its own work.
#include "actors/bridge.hpp"
#include "monitoring/peer_metrics.hpp"
#include "runtime/base/tsan.hpp"
#include "runtime/setup/config.hpp"
#include "runtime/ml/model.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <optional>
#include <random>
#include <semaphore>
#include <utility>

namespace flotilla::actors {

using ComputeSlots = std::counting_semaphore<>;

/// Holds one of a process's compute slots for as long as it lives (released on every exit
/// path, exceptions included: a slot lost to a throw would block the other clients forever).
class ComputeSlot {
 public:
  explicit ComputeSlot(ComputeSlots* slots) : slots_(slots) {
    if (slots_ != nullptr) slots_->acquire();
  }
  ~ComputeSlot() {
    if (slots_ != nullptr) slots_->release();
  }
  ComputeSlot(const ComputeSlot&) = delete;
  ComputeSlot& operator=(const ComputeSlot&) = delete;

 private:
  ComputeSlots* slots_;
};

/// What a client or an evaluator is built with: the run's config, its model, and its link to
/// the aggregator.
struct PeerSetup {
  Config config;
  std::unique_ptr<Model> model;
  std::shared_ptr<Endpoint> endpoint;
  std::shared_ptr<Mailbox> mailbox = std::make_shared<Mailbox>();
  std::shared_ptr<Outcome> outcome = std::make_shared<Outcome>();
  /// LibTorch intra-op threads this peer computes with.
  int threads = 1;
  /// Shared by the clients and the evaluator of one process, so that at most one computation
  /// per core runs at once (nullptr = no limit).
  std::shared_ptr<ComputeSlots> compute_slots;
  /// This process's client counters (metrics.listen); shared by its clients; null = off.
  std::shared_ptr<monitoring::ClientMetrics> client_metrics;

  /// Builds the model (client `client_id`'s, at its own LoRA rank, when given; else the
  /// global model) and connects to the aggregator at `address` as `name`.
  [[nodiscard]] Expected<void> connect(const Config& run_config, const std::string& address,
                                       const std::string& name,
                                       std::optional<std::uint32_t> client_id = std::nullopt);
  /// Builds the model again from the config (a new run: tensors a task does not carry must
  /// hold the run's initial values, and tensors kept on the client start afresh).
  [[nodiscard]] Expected<void> rebuild_model();
  std::optional<std::uint32_t> client_id;  ///< set by connect for a client
  /// Sets the thread count and holds a compute slot for one computation.
  [[nodiscard]] ComputeSlot compute() const;
};

class PeerLink {
 public:
  PeerLink(std::string name, const PeerSetup& setup);

  /// Sends a payload to the aggregator in an envelope from this peer.
  void send(Payload payload, std::uint64_t reply_to = 0);
  /// Stops receiving and closes the socket (flushing what is queued).
  void close();

  /// Registers: sends `hello` (kept, to register again if the aggregator restarts).
  void hello(Hello hello);
  /// Registers again (the aggregator said it does not know this peer): the kept Hello, with no
  /// run id (a restarted aggregator may run another run).
  /// `generation`: what registration_generation() was when it was scheduled; a stale one (a
  /// Welcome came in between) does nothing.
  void register_again(std::uint64_t generation);
  /// Bumped by each Welcome.
  [[nodiscard]] std::uint64_t registration_generation() const { return generation_; }
  /// How long to wait before registering again: random in [0, the backoff), the backoff
  /// doubling with each Hello that goes unanswered (from the heartbeat interval up to 30 s),
  /// so a restarted aggregator is not hit by its whole fleet at once.
  [[nodiscard]] std::chrono::milliseconds register_delay();

  enum class Next { handled, not_mine, stop, register_again };
  /// Handles what every peer handles alike: Welcome, Shutdown, ErrorReply, the aggregator's
  /// heartbeats; notes that the aggregator was heard from.
  [[nodiscard]] Next handle_common(const Message& message);
  /// On each heartbeat tick while idle: says so (once) when the aggregator, which answers
  /// heartbeats, has been silent for longer than aggregator.peer-timeout.
  void check_aggregator();
  /// The connect timeout fired: fails the role unless the aggregator has answered.
  [[nodiscard]] bool give_up_if_unanswered();
  /// The link cannot work any more (its transport stopped): the role ends with `why`.
  void fail(const std::string& why);
  /// A heartbeat, with this client's counters when it counts them (count_as_client). None while
  /// a registration is under way, or while the previous message has not left (the aggregator
  /// is unreachable): what would queue up is sent once it is back, not a backlog of beats.
  void heartbeat();

  /// Reports `counters` (kept by the client, without the transport's bytes, which the link adds)
  /// in heartbeats and through report(), and records them into `metrics` (this process's
  /// client endpoint; may be null). `counters` must outlive the link.
  void count_as_client(const ClientStats* counters, monitoring::ClientMetrics* metrics);
  /// The client's counters now (none for an evaluator), also recorded into its metrics.
  [[nodiscard]] std::optional<ClientStats> report();

  [[nodiscard]] const ClientSection& timing() const { return timing_; }
  [[nodiscard]] const std::shared_ptr<spdlog::logger>& log() const { return log_; }
  /// Whether this process has been welcomed by an aggregator (since it started).
  [[nodiscard]] bool welcomed() const { return welcomed_; }
  /// True once after a Welcome at a model version older than the newest this peer has seen
  /// (a new run, or one resumed from before what it had): the peer's model must start afresh.
  [[nodiscard]] bool take_new_run() { return std::exchange(new_run_, false); }
  /// Whether the aggregator's notRegistered should lead to a Hello now: not while one is
  /// scheduled, nor while the last one sent may still be answered (within its backoff).
  [[nodiscard]] bool should_register();

 private:
  std::string name_;
  std::shared_ptr<Endpoint> endpoint_;
  std::shared_ptr<Mailbox> mailbox_;
  std::shared_ptr<Outcome> outcome_;
  ClientSection timing_;
  Duration silence_limit_;  ///< aggregator.peer-timeout
  std::shared_ptr<spdlog::logger> log_;
  std::string run_id_;
  std::uint64_t next_message_id_ = 1;
  bool welcomed_ = false;
  bool new_run_ = false;
  std::uint64_t highest_version_ = 0;  ///< the newest model version of a Welcome or work since
  std::optional<Hello> hello_;
  /// Since when heartbeats have gone unanswered (the first one sent after the aggregator was
  /// last heard from); none while it answers. A long task is not silence.
  std::optional<std::chrono::steady_clock::time_point> unanswered_since_;
  bool aggregator_answers_ = false;  ///< it speaks 1.4+: it answers heartbeats
  bool said_silent_ = false;
  int unanswered_hellos_ = 0;
  bool hello_scheduled_ = false;
  std::optional<std::chrono::steady_clock::time_point> hello_sent_at_;  ///< awaiting a Welcome
  std::uint64_t generation_ = 0;
  [[nodiscard]] std::chrono::milliseconds backoff() const;
  std::minstd_rand rng_;
  const ClientStats* counters_ = nullptr;
  monitoring::ClientMetrics* metrics_ = nullptr;
  ClientStats recorded_;  ///< what metrics_ has been told so far
};

/// Routes one inbound message of a peer actor: undecodable ones are logged and dropped, the
/// common payloads go to the link, the actor's own kind of work (`Work`: Task for a client,
/// EvaluationRequest for the evaluator) to `work`, anything else is logged and ignored.
template <class Work, class Self, class Fn>
void route_peer_message(Self* self, PeerLink& link, const Inbound& in, Fn&& work) {
  if (in.channel == kTransportFailedChannel) {
    link.fail(in.message.error().message);
    self->quit();
    return;
  }
  if (!in.message) {
    link.log()->warn("dropped a message from the aggregator: {}", in.message.error().message);
    return;
  }
  const Message& m = in.message.value();
  switch (link.handle_common(m)) {
    case PeerLink::Next::handled:
      if (link.take_new_run()) {
        if (auto ok = self->state.setup->rebuild_model(); !ok) {
          link.fail("cannot start the new run's model afresh: " + ok.error().message);
          self->quit();
          return;
        }
        link.log()->info("a new run: the model starts again from its initial weights");
      }
      return;
    case PeerLink::Next::stop: self->quit(); return;
    case PeerLink::Next::register_again:
      if (link.should_register()) {
        self->delayed_send(self, link.register_delay(), hello_atom::value,
                           link.registration_generation());
      }
      return;
    case PeerLink::Next::not_mine: break;
  }
  if (const auto* w = std::get_if<Work>(&m.payload)) {
    if (!link.welcomed()) {
      // The aggregator sends a Welcome before any work, on the same connection: work that
      // comes first was meant for the process that held this id before (a ROUTER hands a
      // routing id over to the newest connection). The aggregator gives this one its own work
      // once it registers (the old task is then lost, or sent again).
      link.log()->info("ignored a '{}' sent before this process registered (for the previous "
                       "process under this id)", payload_name(m.payload));
      return;
    }
    work(m, *w);
  } else {
    link.log()->warn("ignored a '{}' message", payload_name(m.payload));
  }
}

/// Heartbeats always (the default of peer_behavior's `beats`).
inline bool always() { return true; }

/// A peer actor's behavior: `handle(self, inbound)` for each message (anything it throws is
/// logged, never fatal), heartbeats every client.heartbeat-interval while `beats()` says so,
/// and the connect timeout.
template <class Self, class Handle, class Beats = bool (*)()>
caf::behavior peer_behavior(Self* self, Handle handle, Beats beats = &always) {
  auto& link = *self->state.link;
  self->delayed_send(self, link.timing().connect_timeout, timeout_atom::value);
  self->delayed_send(self, link.timing().heartbeat_interval, tick_atom::value);
  return {
      [self, handle](const InboundPtr& in) {
        tsan_taken_over(in.get());  // handed over by Mailbox::deliver
        try {
          handle(self, *in);
        } catch (const std::exception& e) {
          self->state.link->log()->error("while handling a message: {}", e.what());
        }
      },
      [self, beats](tick_atom) {
        auto& l = *self->state.link;
        if (beats()) {
          l.check_aggregator();
          l.heartbeat();
        }
        self->delayed_send(self, l.timing().heartbeat_interval, tick_atom::value);
      },
      [self](timeout_atom) {
        if (self->state.link->give_up_if_unanswered()) self->quit();
      },
      [self](hello_atom, std::uint64_t generation) {
        self->state.link->register_again(generation);
      },
  };
}

}  // namespace flotilla::actors

#pragma once
/// Per-version records and run counters, computed from a schedule's events alone (events.hpp):
/// the progress line and the CSV read these, so what they show is what the events say.
#include "runtime/server/events.hpp"

#include <array>
#include <cstdint>
#include <deque>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace flotilla {

/// What one round (sync) or one version (async, buffered) did; complete once its version is
/// evaluated, or is not going to be.
struct RoundRecord {
  std::uint64_t round = 0;          ///< sync: the round; async/buffered: the version's index
  std::uint64_t model_version = 0;  ///< the version it produced (unchanged if failed)
  std::uint32_t sampled = 0;        ///< sync: clients sampled for the round
  std::uint32_t updates = 0;        ///< accepted
  /// sync: sampled clients whose update had not come when the round closed (one that comes
  /// later is dropped); async/buffered: updates that came after their task's deadline, while
  /// this version was being built (dropped)
  std::uint32_t late = 0;
  std::uint32_t rejected = 0;       ///< refused for any other reason (stale ones included)
  std::uint32_t stale = 0;          ///< of which: older than max-staleness
  bool failed = false;              ///< closed with too few updates
  double train_loss = 0;            ///< weight-averaged over the accepted updates
  double train_accuracy = 0;
  std::optional<double> eval_loss;
  std::optional<double> eval_accuracy;
  double round_seconds = 0;         ///< from the round's (or previous version's) start to its close
  double version_seconds = 0;       ///< run start to the close (its version exists)
  double elapsed_seconds = 0;       ///< run start to the record's completion
  std::uint64_t bytes_received = 0; ///< tensor bytes of the accepted updates
  double staleness_mean = 0;        ///< of the accepted updates
  std::uint64_t staleness_max = 0;
  std::uint32_t clients_busy = 0;   ///< at the close: holding a task
  std::uint32_t clients_idle = 0;   ///< registered, no task
  std::uint32_t clients_offline = 0;///< silent past the peer timeout
  std::uint64_t bytes_sent = 0;     ///< tensor bytes of the tasks sent for it
  std::uint32_t tasks = 0;          ///< tasks sent for it
  /// The most optimizer state one client reported holding (moments, projections) while this
  /// record was open; 0 when none reported (clients before protocol 1.3, the simulator).
  std::uint64_t optimizer_state_bytes = 0;

  /// Mean tensor bytes one client sent (bytes_received / updates; 0 without updates).
  [[nodiscard]] double bytes_per_client() const {
    return updates > 0 ? static_cast<double>(bytes_received) / updates : 0.0;
  }
  /// Mean tensor bytes one task carried to its client (bytes_sent / tasks; 0 without tasks).
  [[nodiscard]] double download_per_client() const {
    return tasks > 0 ? static_cast<double>(bytes_sent) / tasks : 0.0;
  }
};

struct ScheduleCounters {
  std::uint64_t updates_accepted = 0;
  std::uint64_t updates_rejected = 0;  ///< every reason but late
  std::uint64_t updates_late = 0;
  std::array<std::uint64_t, kRejectReasons> rejected_by_reason{};
  /// Messages refused before any schedule logic: undecodable, another protocol version, another
  /// run, or a kind the aggregator does not take.
  std::uint64_t messages_malformed = 0;
  std::uint64_t rounds_completed = 0;  ///< versions produced
  std::uint64_t rounds_failed = 0;
  std::uint64_t tasks_sent = 0;
  std::uint64_t tasks_lost = 0;
  std::uint64_t weights_capped = 0;  ///< accepted updates that claimed more than max-examples
  std::uint64_t updates_clipped = 0; ///< accepted updates whose change was clipped (outliers)
  std::uint64_t plugin_reloads = 0;          ///< aggregation plugin switched to a new build
  std::uint64_t plugin_reload_failures = 0;  ///< a new build refused; the old one kept running

  [[nodiscard]] std::uint64_t rejected(RejectReason r) const {
    return rejected_by_reason[static_cast<std::size_t>(r)];
  }
};

/// Clients by state, as the events say: online ones are idle or busy (holding a task); offline
/// ones were set aside after a silence; registered counts both.
struct ClientCounts {
  std::size_t online = 0;
  std::size_t busy = 0;
  std::size_t idle = 0;
  std::size_t offline = 0;
  [[nodiscard]] std::size_t registered() const { return online + offline; }
};

/// Folds events into RoundRecords (released in order, each once its evaluation is in or given
/// up on) and ScheduleCounters.
class VersionRecorder {
 public:
  void on(const Event& event);
  /// Records completed since the last call, in order.
  [[nodiscard]] std::vector<RoundRecord> take_completed();
  [[nodiscard]] const ScheduleCounters& counters() const { return counters_; }
  /// Continues counting from `counters` (a resumed run's, from its checkpoint).
  void restore(const ScheduleCounters& counters) { counters_ = counters; }
  [[nodiscard]] ClientCounts client_counts() const;

 private:
  struct Pending {
    RoundRecord record;
    bool awaiting_evaluation = false;
  };
  void close_open(double at, bool failed, std::uint64_t version);
  void record_clients(RoundRecord& r) const;
  Pending* pending_for_version(std::uint64_t version);

  ScheduleCounters counters_;
  RoundRecord open_;
  double open_since_ = 0;
  std::optional<double> run_started_;
  double staleness_sum_ = 0, loss_sum_ = 0, accuracy_sum_ = 0, weight_sum_ = 0;
  std::deque<Pending> pending_;
  std::vector<RoundRecord> completed_;
  std::set<std::string> online_, busy_, offline_;
  bool rounds_ = false;              ///< a sync schedule (it starts rounds)
  std::set<std::string> awaiting_;   ///< sync: the open round's tasks not yet answered
  std::set<std::string> round_tasks_;  ///< sync: who was sent the open round's task
  double now_ = 0;
};

}  // namespace flotilla

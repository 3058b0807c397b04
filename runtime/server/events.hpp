#pragma once
/// What a schedule did, as a stream of events: the one record of a run. The progress line, the
/// CSV (through VersionRecorder) and the metrics all read these; nothing keeps a second count.
#include "runtime/protocol/message.hpp"

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace flotilla {

/// Why an update was not folded into the model.
enum class RejectReason : std::uint8_t {
  late,           ///< its round had closed (sync), or its task had been given up on
  stale,          ///< based on a version older than max-staleness allows (async, buffered)
  not_sampled,    ///< from a client that holds no task
  duplicate,      ///< a second update for one task
  wrong_version,  ///< based on another version than its task carried
  invalid,        ///< the method refuses it (names, shapes, weight)
  fold_failed,    ///< checked, but the method failed to fold it
  not_finite,     ///< a NaN or an infinity in its tensors (aggregator.update-validation)
  outlier,        ///< its change's norm far above the running median (norm = "reject")
};
inline constexpr std::size_t kRejectReasons = 9;
[[nodiscard]] const char* to_string(RejectReason reason) noexcept;

struct ClientJoined {
  std::string peer;
  Role role = Role::client;
  std::uint32_t client_id = 0;
  bool rejoined = false;  ///< known before (registered again, or heard from after a silence)
};
struct ClientLeft {
  std::string peer;
  std::uint32_t client_id = 0;
  std::string why;
  Role role = Role::client;
};
/// A synchronous round began (async schedules have no rounds).
struct RoundStarted {
  std::uint64_t round = 0;
  std::uint64_t version = 0;
  std::uint32_t sampled = 0;
};
struct TaskSent {
  std::string peer;
  std::uint32_t client_id = 0;
  std::uint64_t round = 0;  ///< sync: the round; async: the task's sequence number
  std::uint64_t version = 0;
  std::uint64_t bytes = 0;  ///< tensor bytes the task carries (what the client downloads)
};
/// A task whose update did not come by its deadline: its slot goes to another client.
struct TaskLost {
  std::string peer;
  std::uint32_t client_id = 0;
  std::uint64_t round = 0;
};
struct UpdateAccepted {
  std::string peer;
  std::uint32_t client_id = 0;
  std::uint64_t round = 0;
  std::uint64_t base_version = 0;
  std::uint64_t staleness = 0;  ///< versions produced since its base
  double weight = 0;
  std::uint64_t bytes = 0;      ///< tensor bytes
  double train_loss = 0;
  double train_accuracy = 0;
  /// The client claimed more examples than aggregator.max-examples: `weight` is the cap.
  bool weight_capped = false;
  /// Its change to the model was scaled down to the norm bound (update-validation norm = "clip").
  bool clipped = false;
};
struct UpdateRejected {
  std::string peer;
  std::uint32_t client_id = 0;
  std::uint64_t round = 0;
  RejectReason reason = RejectReason::invalid;
  std::string message;
};
/// Accepted updates the method then failed to fold (a plugin's bug): counted as rejected.
struct FoldFailed {
  std::uint32_t updates = 0;
  std::string message;
};
/// A message refused before any schedule logic (undecodable, another protocol, another run).
struct MessageRefused {
  std::string peer;
  std::string message;
};
struct VersionProduced {
  std::uint64_t version = 0;
  std::uint64_t round = 0;
};
/// A round (or buffer) closed without producing a version; the model stays as it was.
struct VersionFailed {
  std::uint64_t round = 0;
  std::string why;
};
struct EvaluationRequested {
  std::uint64_t version = 0;
  std::uint64_t round = 0;
};
struct Evaluated {
  std::uint64_t version = 0;
  std::uint64_t round = 0;
  double loss = 0;
  double accuracy = 0;
};
/// No evaluation of this version came in time (or the evaluator left).
struct EvaluationMissed {
  std::uint64_t version = 0;
};
/// One call into the aggregation method: folding accepted updates in, or producing a version
/// from them. `seconds` is wall time (also under a simulator's virtual clock).
enum class AggregationStep : std::uint8_t { fold, finalize };
struct Aggregated {
  AggregationStep step = AggregationStep::fold;
  std::uint32_t updates = 0;  ///< fold: updates folded in; finalize: updates in the version
  double seconds = 0;
};
/// A registered client's own counters (Heartbeat.stats, Update.stats), as it reported them
/// (the device class cut to kMaxDeviceClass bytes; a report with a negative or non-finite
/// training time is dropped).
struct ClientReported {
  std::string peer;
  std::uint32_t client_id = 0;
  ClientStats stats;
};
struct PluginReloaded {
  bool ok = false;
  std::string message;
};
struct RunFinished {
  std::string reason;
  bool failed = false;
};

using EventBody =
    std::variant<ClientJoined, ClientLeft, RoundStarted, TaskSent, TaskLost, UpdateAccepted,
                 UpdateRejected, FoldFailed, MessageRefused, VersionProduced, VersionFailed,
                 EvaluationRequested, Evaluated, EvaluationMissed, Aggregated, ClientReported,
                 PluginReloaded, RunFinished>;

struct Event {
  double at = 0;  ///< seconds since the schedule started
  EventBody body;
};

}  // namespace flotilla

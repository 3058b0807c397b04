#pragma once
/// Checkpoints of a schedule, and the journal of what it accepted since, so that an aggregator
/// killed at any moment (`kill -9`, a power cut) continues where it was (`--resume DIR`)
/// without losing an accepted update.
///
/// A checkpoint is taken where the schedule is between versions (a round closed, a version
/// produced) every `every` of them: a directory `checkpoint-<step>/` (step: the round, or the
/// version under async schedules) holding `model.safetensors`, `method.safetensors` (the
/// aggregation method's exported state) and `state.json` (the rest), written under a private
/// name, flushed, then renamed: a torn checkpoint is never read as good. The `keep` latest are
/// kept. Every update an asynchronous schedule accepts is appended to `journal-<step>.log` (the
/// checkpoint it follows) and flushed before it is folded; resuming replays the journals after
/// the checkpoint, through the same code that folded them.
#include "runtime/server/records.hpp"
#include "runtime/storage/record_log.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace flotilla {

class Schedule;

/// A registered peer as a checkpoint keeps it (restored set aside: live once heard from).
struct PeerSnapshot {
  std::string peer;
  Role role = Role::client;
  std::uint32_t client_id = 0;
  std::uint64_t num_examples = 0;
};

/// Everything a schedule needs to continue, taken between versions.
struct ScheduleSnapshot {
  std::string kind;               ///< "sync", "async", "buffered": resumed only under the same
  std::string run_id;
  std::uint64_t step = 0;         ///< sync: rounds closed; async/buffered: versions produced
  std::uint64_t version = 0;
  std::uint64_t next_task = 1;    ///< async/buffered: the next task's number
  std::string rng;                ///< the schedule's random engine, as its operator<< writes it
  ScheduleCounters counters;
  std::vector<PeerSnapshot> peers;
  std::vector<double> norms;      ///< update validation's window of accepted norms
  bool finished = false;          ///< the run was over
  TensorList model;
  TensorList method_state;        ///< what the aggregation method exported
};

/// One accepted update as it was folded (validated, rebased, clipped): what replay needs.
struct JournalEntry {
  UpdateAccepted accepted;
  TensorList tensors;
};

[[nodiscard]] std::string encode_entry(const JournalEntry& entry);
[[nodiscard]] Expected<JournalEntry> decode_entry(const std::string& bytes, const std::string& where);

struct CheckpointOptions {
  std::filesystem::path dir;
  std::uint64_t every = 1;   ///< checkpoint every N steps (the last one always)
  std::uint32_t keep = 3;    ///< checkpoints kept (and the journals after the oldest)
  bool sync_journal = true;  ///< flush each journal record to the disk before folding it
};

/// What a checkpoint directory holds to continue from.
struct Resumption {
  ScheduleSnapshot snapshot;
  std::vector<JournalEntry> journal;  ///< accepted after the snapshot, in order
  /// One line for the log: which checkpoint, how many updates replayed, what was skipped.
  std::string report;
  std::vector<std::string> warnings;  ///< newer checkpoints that could not be read, torn tails
  /// The journal appends continue in (the last one read, or the checkpoint's new one), and
  /// where its last good record ends (a torn tail after it is cut).
  std::filesystem::path journal_path;
  std::uint64_t journal_good_bytes = 0;
  /// Journals after a torn one (they cannot follow on from it): set aside when the store opens.
  std::vector<std::filesystem::path> stale_journals;
};

/// Reads the newest good checkpoint in `dir` and the journals after it (Errc::io if there is
/// none: names what was found). `max_record` bounds a journal record (the largest message).
[[nodiscard]] Expected<Resumption> load_checkpoint(const std::filesystem::path& dir,
                                                   std::uint64_t max_record);

/// Writes checkpoints and the journal for one run.
class CheckpointStore {
 public:
  /// Creates `options.dir` (owner-only) if missing. After `resumed`, appends to the journal it
  /// was read from (its torn tail cut); else the first offer() starts one.
  [[nodiscard]] static Expected<std::unique_ptr<CheckpointStore>> open(CheckpointOptions options,
                                                                      const Resumption* resumed = nullptr);

  /// Whether a checkpoint at `step` is due: every N steps or the run's last (`planned`), and
  /// not written yet.
  [[nodiscard]] bool due(std::uint64_t step, std::uint64_t planned) const;
  /// A checkpoint of `snapshot` if one is due (every N steps, the run's last, or `force`);
  /// starts a new journal after it and drops checkpoints beyond `keep`.
  [[nodiscard]] Expected<bool> offer(const ScheduleSnapshot& snapshot, std::uint64_t planned,
                                     bool force = false);
  /// Appends an accepted update to the journal (flushed if sync_journal).
  [[nodiscard]] Expected<void> append(const JournalEntry& entry);

  [[nodiscard]] const CheckpointOptions& options() const { return options_; }
  [[nodiscard]] std::uint64_t checkpoints_written() const { return written_; }
  [[nodiscard]] std::uint64_t journal_records() const { return appended_; }

 private:
  explicit CheckpointStore(CheckpointOptions options) : options_(std::move(options)) {}
  [[nodiscard]] Expected<void> write(const ScheduleSnapshot& snapshot);
  void prune();

  CheckpointOptions options_;
  std::optional<RecordLog> journal_;
  std::optional<std::uint64_t> last_step_;
  std::uint64_t written_ = 0;
  std::uint64_t appended_ = 0;
};

/// Has `schedule` write its checkpoints to `store` where due, and journal every update an
/// asynchronous schedule accepts; failures are logged, the run goes on. A new run (not
/// `resumed`) gets its first checkpoint now, so that every journaled update follows one.
[[nodiscard]] Expected<void> keep_checkpoints(Schedule& schedule,
                                              const std::shared_ptr<CheckpointStore>& store,
                                              bool resumed);

/// A last checkpoint when the run ends (if it is between versions and not written yet).
void checkpoint_at_end(CheckpointStore& store, Schedule& schedule);

}  // namespace flotilla

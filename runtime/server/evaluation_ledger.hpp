#pragma once
/// Which model versions the evaluator is asked to score, and which answers are still owed,
/// keyed by version (an async run produces far more versions than a sync run has rounds, so
/// it evaluates every N versions or every T seconds, and always the last one).
#include "runtime/base/clock.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace flotilla {

class EvaluationLedger {
 public:
  struct Options {
    Duration timeout{120'000};         ///< an answer not in by then is given up on
    std::uint64_t every_versions = 1;  ///< evaluate every N-th version (0 = only by time/final)
    Duration every_time{0};            ///< ... or once this long has passed since the last one
  };

  EvaluationLedger(const Clock& clock, Options options) : clock_(clock), options_(options) {}

  /// Whether `version` should be evaluated: the initial model, every N-th version, one that
  /// comes at least every_time after the last evaluated one, or the run's final version.
  [[nodiscard]] bool due(std::uint64_t version, bool final) const;
  /// An evaluation of `version` was requested now.
  void sent(std::uint64_t version, std::uint64_t round);
  /// The round `version` was requested for, if it was awaited (it no longer is).
  [[nodiscard]] std::optional<std::uint64_t> received(std::uint64_t version);
  /// Versions whose answer is overdue (all of them when `evaluator_present` is false); they are
  /// no longer awaited.
  [[nodiscard]] std::vector<std::uint64_t> expire(bool evaluator_present);
  [[nodiscard]] bool waiting() const { return !sent_.empty(); }
  /// Whether `version` was requested (or passed over: versions only go up, so one at or below
  /// the last requested is never due again). Kept as that one number, not a set that would
  /// grow with every version a long run evaluates.
  [[nodiscard]] bool requested(std::uint64_t version) const {
    return last_requested_ && version <= *last_requested_;
  }
  void clear() { sent_.clear(); }

 private:
  struct Sent {
    Clock::time_point at;
    std::uint64_t round = 0;
  };
  const Clock& clock_;
  Options options_;
  std::map<std::uint64_t, Sent> sent_;
  std::optional<std::uint64_t> last_requested_;
  std::optional<Clock::time_point> last_;
};

}  // namespace flotilla

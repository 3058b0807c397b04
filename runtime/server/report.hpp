#pragma once
/// Per-round results for people: the one-line progress display and the CSV file.
#include "runtime/base/error.hpp"
#include "runtime/server/records.hpp"
#include "runtime/server/schedule.hpp"

#include <fstream>
#include <string>

namespace flotilla {

/// "round  3/15  updates 8/8  late 0  rejected 0  train-loss 0.6123  loss 0.5532  acc 79.84%
///  up 24.1 KiB/client  round 3.1s  elapsed 12.5s" (up: tensor bytes each client sent, mean)
/// "512 B", "24.1 KiB", "1.5 MiB": binary units, one decimal.
[[nodiscard]] std::string human_bytes(double bytes);

/// sync: "round  3/15  updates 8/8 ..."; async and buffered, one line per version:
/// "version  37/400  updates 1  rejected 0 (stale 0)  train-loss 0.61  loss 0.55  acc 79.84%
///  staleness 2.0/2  busy 8 idle 0 offline 1  up 203.7 KiB/client  elapsed 12.5s".
[[nodiscard]] std::string progress_line(const RoundRecord& record, std::uint64_t planned,
                                        ScheduleKind kind = ScheduleKind::sync);

/// Writes DIR/rounds.csv, one row per round, flushed as each round completes so a run that
/// is killed keeps what it had.
class RoundsCsv {
 public:
  [[nodiscard]] static Expected<RoundsCsv> open(const std::string& dir);
  void append(const RoundRecord& record);
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::shared_ptr<std::ofstream> out_;
};

}  // namespace flotilla

#include "runtime/server/report.hpp"

#include <filesystem>
#include <fmt/format.h>

namespace flotilla {

std::string human_bytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  std::size_t unit = 0;
  while (bytes >= 1024 && unit + 1 < std::size(kUnits)) {
    bytes /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, kUnits[unit]);
}

namespace {

/// "  train-loss 0.61  loss 0.55  acc 79.84%", or "  FAILED (why)".
std::string outcome(const RoundRecord& r, const char* why_failed) {
  if (r.failed) return fmt::format("  FAILED ({})", why_failed);
  std::string s = fmt::format("  train-loss {:.4f}", r.train_loss);
  if (r.eval_accuracy) s += fmt::format("  loss {:.4f}  acc {:6.2f}%", *r.eval_loss, 100 * *r.eval_accuracy);
  return s;
}

std::string async_line(const RoundRecord& r, std::uint64_t planned) {
  std::string line = fmt::format("version {:>4}/{}  updates {}  late {}  rejected {} (stale {})",
                                 r.model_version, planned, r.updates, r.late, r.rejected, r.stale);
  line += outcome(r, "the aggregation method failed");
  line += fmt::format("  staleness {:.1f}/{}  busy {} idle {} offline {}", r.staleness_mean,
                      r.staleness_max, r.clients_busy, r.clients_idle, r.clients_offline);
  if (r.updates > 0) line += "  up " + human_bytes(r.bytes_per_client()) + "/client";
  line += fmt::format("  elapsed {:.1f}s", r.version_seconds);
  return line;
}

}  // namespace

std::string progress_line(const RoundRecord& r, std::uint64_t total_rounds, ScheduleKind kind) {
  if (r.round == 0 && kind != ScheduleKind::sync) {
    return fmt::format("version {:>4}/{}  initial model                              loss {:.4f}  acc {:6.2f}%",
                       0, total_rounds, r.eval_loss.value_or(NAN), 100 * r.eval_accuracy.value_or(NAN));
  }
  if (kind != ScheduleKind::sync) return async_line(r, total_rounds);
  if (r.round == 0) {
    return fmt::format("round {:>3}/{}  initial model                                     loss {:.4f}  acc {:6.2f}%",
                       0, total_rounds, r.eval_loss.value_or(NAN), 100 * r.eval_accuracy.value_or(NAN));
  }
  std::string line = fmt::format("round {:>3}/{}  updates {}/{}  late {}  rejected {}", r.round,
                                 total_rounds, r.updates, r.sampled, r.late, r.rejected);
  line += outcome(r, "too few updates by the deadline");
  if (r.updates > 0) line += "  up " + human_bytes(r.bytes_per_client()) + "/client";
  if (r.tasks > 0) line += "  down " + human_bytes(r.download_per_client()) + "/client";
  line += fmt::format("  round {:.1f}s  elapsed {:.1f}s", r.round_seconds, r.elapsed_seconds);
  return line;
}

Expected<RoundsCsv> RoundsCsv::open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error{Errc::io, "cannot create output directory '" + dir + "': " + ec.message()};
  RoundsCsv csv;
  csv.path_ = (std::filesystem::path(dir) / "rounds.csv").string();
  csv.out_ = std::make_shared<std::ofstream>(csv.path_, std::ios::trunc);
  if (!*csv.out_) return Error{Errc::io, "cannot write '" + csv.path_ + "'"};
  *csv.out_ << "round,model_version,sampled,updates,late,rejected,failed,train_loss,"
               "train_accuracy,eval_loss,eval_accuracy,round_seconds,version_seconds,elapsed_seconds,"
               "bytes_received,bytes_per_client,staleness_mean,staleness_max,stale,clients_busy,"
               "clients_idle,clients_offline,bytes_sent,download_per_client,optimizer_state_bytes\n";
  csv.out_->flush();
  return csv;
}

void RoundsCsv::append(const RoundRecord& r) {
  auto opt = [](const std::optional<double>& v) { return v ? fmt::format("{:.6f}", *v) : std::string(); };
  *out_ << fmt::format("{},{},{},{},{},{},{},{:.6f},{:.6f},{},{},{:.3f},{:.3f},{:.3f},{},{:.0f},{:.3f},{},{},{},{},{},{},{:.0f},{}\n", r.round,
                       r.model_version, r.sampled, r.updates, r.late, r.rejected, r.failed ? 1 : 0,
                       r.train_loss, r.train_accuracy, opt(r.eval_loss), opt(r.eval_accuracy),
                       r.round_seconds, r.version_seconds, r.elapsed_seconds, r.bytes_received,
                       r.bytes_per_client(), r.staleness_mean, r.staleness_max, r.stale,
                       r.clients_busy, r.clients_idle, r.clients_offline, r.bytes_sent,
                       r.download_per_client(), r.optimizer_state_bytes);
  out_->flush();
}

}  // namespace flotilla

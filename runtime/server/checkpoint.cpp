#include "runtime/server/checkpoint.hpp"

#include "runtime/base/log.hpp"
#include "runtime/server/schedule.hpp"
#include "runtime/storage/durable.hpp"
#include "runtime/storage/safetensors.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <random>

namespace flotilla {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kFormat = 1;
/// state.json holds the registry: bounded before it is read (a million peers fit).
constexpr std::uint64_t kMaxState = 512ull << 20;

/// Peer ids are ZeroMQ routing ids, any bytes: kept as hex (JSON strings must be UTF-8).
std::string hex(const std::string& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::optional<std::string> unhex(const std::string& text) {
  if (text.size() % 2 != 0) return std::nullopt;
  std::string out(text.size() / 2, '\0');
  for (std::size_t i = 0; i < out.size(); ++i) {
    unsigned v = 0;
    const auto [p, ec] = std::from_chars(text.data() + 2 * i, text.data() + 2 * i + 2, v, 16);
    if (ec != std::errc() || p != text.data() + 2 * i + 2) return std::nullopt;
    out[i] = static_cast<char>(v);
  }
  return out;
}

std::string step_name(const char* prefix, std::uint64_t step, const char* suffix = "") {
  return fmt::format("{}-{:012}{}", prefix, step, suffix);
}

/// The step in "<prefix>-<digits><suffix>", if `name` is one.
std::optional<std::uint64_t> step_of(const std::string& name, const std::string& prefix,
                                     const std::string& suffix) {
  if (name.size() <= prefix.size() + 1 + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name[prefix.size()] != '-' || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return std::nullopt;
  }
  std::uint64_t step = 0;
  const char* first = name.data() + prefix.size() + 1;
  const char* last = name.data() + name.size() - suffix.size();
  const auto [p, ec] = std::from_chars(first, last, step);
  if (ec != std::errc() || p != last) return std::nullopt;
  return step;
}

/// Steps of the entries of `dir` named "<prefix>-<step><suffix>", ascending.
std::vector<std::uint64_t> steps_in(const fs::path& dir, const std::string& prefix, const std::string& suffix) {
  std::vector<std::uint64_t> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (auto s = step_of(e.path().filename().string(), prefix, suffix)) steps.push_back(*s);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

json counters_json(const ScheduleCounters& c) {
  return {{"updates_accepted", c.updates_accepted},
          {"updates_rejected", c.updates_rejected},
          {"updates_late", c.updates_late},
          {"rejected_by_reason", c.rejected_by_reason},
          {"messages_malformed", c.messages_malformed},
          {"rounds_completed", c.rounds_completed},
          {"rounds_failed", c.rounds_failed},
          {"tasks_sent", c.tasks_sent},
          {"tasks_lost", c.tasks_lost},
          {"weights_capped", c.weights_capped},
          {"updates_clipped", c.updates_clipped},
          {"plugin_reloads", c.plugin_reloads},
          {"plugin_reload_failures", c.plugin_reload_failures}};
}

ScheduleCounters counters_from(const json& j) {
  ScheduleCounters c;
  j.at("updates_accepted").get_to(c.updates_accepted);
  j.at("updates_rejected").get_to(c.updates_rejected);
  j.at("updates_late").get_to(c.updates_late);
  const auto& reasons = j.at("rejected_by_reason");
  // A checkpoint of an older build may know fewer reasons.
  for (std::size_t i = 0; i < std::min(reasons.size(), c.rejected_by_reason.size()); ++i) {
    reasons[i].get_to(c.rejected_by_reason[i]);
  }
  j.at("messages_malformed").get_to(c.messages_malformed);
  j.at("rounds_completed").get_to(c.rounds_completed);
  j.at("rounds_failed").get_to(c.rounds_failed);
  j.at("tasks_sent").get_to(c.tasks_sent);
  j.at("tasks_lost").get_to(c.tasks_lost);
  j.at("weights_capped").get_to(c.weights_capped);
  j.at("updates_clipped").get_to(c.updates_clipped);
  j.at("plugin_reloads").get_to(c.plugin_reloads);
  j.at("plugin_reload_failures").get_to(c.plugin_reload_failures);
  return c;
}

std::string state_json(const ScheduleSnapshot& s) {
  json peers = json::array();
  for (const auto& p : s.peers) {
    peers.push_back({{"peer", hex(p.peer)},
                     {"role", p.role == Role::evaluator ? "evaluator" : "client"},
                     {"client_id", p.client_id},
                     {"num_examples", p.num_examples}});
  }
  const json j = {{"format", kFormat},      {"kind", s.kind},       {"run_id", s.run_id},
                  {"step", s.step},         {"version", s.version}, {"next_task", s.next_task},
                  {"rng", s.rng},           {"finished", s.finished},
                  {"counters", counters_json(s.counters)},
                  {"norms", s.norms},       {"peers", peers}};
  return j.dump(1);
}

Expected<ScheduleSnapshot> read_snapshot(const fs::path& dir) {
  auto text = read_file(dir / "state.json", kMaxState);
  if (!text) return text.error();
  ScheduleSnapshot s;
  try {
    const auto j = json::parse(*text);
    if (j.at("format").get<int>() != kFormat) {
      return Error{Errc::malformed, (dir / "state.json").string() + ": format " +
                                        std::to_string(j.at("format").get<int>()) +
                                        ", this build reads " + std::to_string(kFormat)};
    }
    j.at("kind").get_to(s.kind);
    j.at("run_id").get_to(s.run_id);
    j.at("step").get_to(s.step);
    j.at("version").get_to(s.version);
    j.at("next_task").get_to(s.next_task);
    j.at("rng").get_to(s.rng);
    j.at("finished").get_to(s.finished);
    s.counters = counters_from(j.at("counters"));
    j.at("norms").get_to(s.norms);
    for (const auto& p : j.at("peers")) {
      auto id = unhex(p.at("peer").get<std::string>());
      if (!id) throw std::runtime_error("a peer id is not hex");
      s.peers.push_back(PeerSnapshot{*id, p.at("role").get<std::string>() == "evaluator" ? Role::evaluator
                                                                                         : Role::client,
                                     p.at("client_id").get<std::uint32_t>(),
                                     p.at("num_examples").get<std::uint64_t>()});
    }
  } catch (const std::exception& e) {
    return Error{Errc::malformed, (dir / "state.json").string() + ": " + e.what()};
  }
  auto model = read_safetensors(dir / "model.safetensors");
  if (!model) return model.error();
  s.model = std::move(model->tensors);
  auto method = read_safetensors(dir / "method.safetensors");
  if (!method) return method.error();
  s.method_state = std::move(method->tensors);
  return s;
}

std::string number(double v) { return fmt::format("{}", v); }

template <class T>
T parse_number(const SafetensorsMetadata& m, const char* key, const std::string& where) {
  const auto it = m.find(key);
  if (it == m.end()) throw Failure(Errc::malformed, where + ": no '" + key + "'");
  T value{};
  const auto& text = it->second;
  if constexpr (std::is_floating_point_v<T>) {
    std::size_t used = 0;
    try {
      value = static_cast<T>(std::stod(text, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || text.empty()) throw Failure(Errc::malformed, where + ": '" + key + "' is not a number");
  } else {
    const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || p != text.data() + text.size()) {
      throw Failure(Errc::malformed, where + ": '" + key + "' is not a count");
    }
  }
  return value;
}

}  // namespace

std::string encode_entry(const JournalEntry& e) {
  const auto& a = e.accepted;
  SafetensorsMetadata m{{"peer", hex(a.peer)},
                        {"client_id", std::to_string(a.client_id)},
                        {"round", std::to_string(a.round)},
                        {"base_version", std::to_string(a.base_version)},
                        {"staleness", std::to_string(a.staleness)},
                        {"weight", number(a.weight)},
                        {"bytes", std::to_string(a.bytes)},
                        {"train_loss", number(a.train_loss)},
                        {"train_accuracy", number(a.train_accuracy)},
                        {"weight_capped", a.weight_capped ? "1" : "0"},
                        {"clipped", a.clipped ? "1" : "0"}};
  auto bytes = encode_safetensors(e.tensors, m);
  // The tensors were accepted (and so decoded) from the wire: their dtypes and names fit.
  if (!bytes) throw Failure(bytes.error());
  return std::move(bytes).value();
}

Expected<JournalEntry> decode_entry(const std::string& bytes, const std::string& where) {
  auto file = decode_safetensors(std::as_bytes(std::span(bytes.data(), bytes.size())), where);
  if (!file) return file.error();
  JournalEntry e;
  try {
    const auto& m = file->metadata;
    auto& a = e.accepted;
    const auto peer = m.find("peer");
    if (peer == m.end() || !unhex(peer->second)) throw Failure(Errc::malformed, where + ": no peer");
    a.peer = *unhex(peer->second);
    a.client_id = parse_number<std::uint32_t>(m, "client_id", where);
    a.round = parse_number<std::uint64_t>(m, "round", where);
    a.base_version = parse_number<std::uint64_t>(m, "base_version", where);
    a.staleness = parse_number<std::uint64_t>(m, "staleness", where);
    a.weight = parse_number<double>(m, "weight", where);
    a.bytes = parse_number<std::uint64_t>(m, "bytes", where);
    a.train_loss = parse_number<double>(m, "train_loss", where);
    a.train_accuracy = parse_number<double>(m, "train_accuracy", where);
    a.weight_capped = parse_number<int>(m, "weight_capped", where) != 0;
    a.clipped = parse_number<int>(m, "clipped", where) != 0;
  } catch (const Failure& f) {
    return f.error();
  }
  e.tensors = std::move(file->tensors);
  return e;
}

Expected<Resumption> load_checkpoint(const fs::path& dir, std::uint64_t max_record) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Error{Errc::io, dir.string() + ": no such checkpoint directory (aggregator --resume takes "
                                          "the checkpoint.dir of the run to continue)"};
  }
  Resumption r;
  auto steps = steps_in(dir, "checkpoint", "");
  std::optional<std::uint64_t> chosen;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    const auto path = dir / step_name("checkpoint", *it);
    auto snapshot = read_snapshot(path);
    if (snapshot) {
      r.snapshot = std::move(snapshot).value();
      chosen = *it;
      break;
    }
    r.warnings.push_back("skipped " + path.string() + ", which cannot be read: " + snapshot.error().message);
  }
  if (!chosen) {
    return Error{Errc::io, dir.string() + ": no readable checkpoint (" + std::to_string(steps.size()) +
                               " found" + (r.warnings.empty() ? "" : "; " + r.warnings.front()) + ")"};
  }
  // The journals after it, in order: each continues where the one before stopped.
  r.journal_path = dir / step_name("journal", *chosen, ".log");
  r.journal_good_bytes = 0;
  std::size_t journals = 0;
  bool torn = false;
  for (const auto step : steps_in(dir, "journal", ".log")) {
    if (step < *chosen) continue;
    const auto path = dir / step_name("journal", step, ".log");
    if (torn) {
      // A journal after a torn one cannot follow on from it.
      r.stale_journals.push_back(path);
      r.warnings.push_back(path.string() + " follows a torn journal: not replayed (set aside as .stale)");
      continue;
    }
    auto read = RecordLog::read(path, max_record);
    if (!read) return read.error();
    ++journals;
    std::size_t n = 0;
    for (const auto& record : read->records) {
      auto entry = decode_entry(record, path.string() + " record " + std::to_string(++n));
      if (!entry) return entry.error();
      r.journal.push_back(std::move(entry).value());
    }
    r.journal_path = path;
    r.journal_good_bytes = read->good_bytes;
    if (!read->torn.empty()) {
      // Only the last record can be torn (a crash while appending it): it was never folded.
      r.warnings.push_back(path.string() + ": " + read->torn + "; the " + std::to_string(read->records.size()) +
                           " records before it are replayed, the torn one was never folded");
      torn = true;
    }
  }
  r.report = fmt::format("resuming run {} from {} ({} {}, model version {}) and {} accepted update(s) "
                         "journaled after it ({} journal file(s))",
                         r.snapshot.run_id, (dir / step_name("checkpoint", *chosen)).string(),
                         r.snapshot.kind == "sync" ? "round" : "version", r.snapshot.step,
                         r.snapshot.version, r.journal.size(), journals);
  return r;
}

Expected<std::unique_ptr<CheckpointStore>> CheckpointStore::open(CheckpointOptions options,
                                                                 const Resumption* resumed) {
  std::error_code ec;
  if (!fs::exists(options.dir, ec)) {
    fs::create_directories(options.dir, ec);
    if (ec) return Error{Errc::io, options.dir.string() + ": cannot create the checkpoint directory: " + ec.message()};
    ::chmod(options.dir.c_str(), 0700);  // model weights and the fleet's ids: the owner's only
  }
  if (resumed == nullptr && !steps_in(options.dir, "checkpoint", "").empty()) {
    // A new run would mix its checkpoints with another run's (and the older would be pruned).
    return Error{Errc::invalid_config, options.dir.string() +
                                           " already holds checkpoints: continue that run with `flotilla "
                                           "aggregator CONFIG --resume " + options.dir.string() +
                                           "`, or set checkpoint.dir to a new directory"};
  }
  // Directories a crash left half written.
  for (const auto& e : fs::directory_iterator(options.dir, ec)) {
    if (e.path().filename().string().rfind(".tmp-checkpoint-", 0) == 0) fs::remove_all(e.path(), ec);
  }
  std::unique_ptr<CheckpointStore> store(new CheckpointStore(std::move(options)));
  if (resumed != nullptr) {
    for (const auto& stale : resumed->stale_journals) {
      // After a torn one: never replayed again, kept for a post-mortem.
      fs::rename(stale, stale.string() + ".stale", ec);
    }
    auto log = RecordLog::open(resumed->journal_path, resumed->journal_good_bytes, store->options_.sync_journal);
    if (!log) return log.error();
    store->journal_.emplace(std::move(log).value());
    store->last_step_ = resumed->snapshot.step;
  }
  return store;
}

bool CheckpointStore::due(std::uint64_t step, std::uint64_t planned) const {
  if (last_step_ == step) return false;
  return step >= planned || step % std::max<std::uint64_t>(options_.every, 1) == 0;
}

Expected<bool> CheckpointStore::offer(const ScheduleSnapshot& snapshot, std::uint64_t planned, bool force) {
  if (!force && !snapshot.finished && !due(snapshot.step, planned)) return false;
  if (!force && last_step_ == snapshot.step) return false;
  if (auto ok = write(snapshot); !ok) return ok.error();
  return true;
}

Expected<void> CheckpointStore::write(const ScheduleSnapshot& s) {
  const auto final_dir = options_.dir / step_name("checkpoint", s.step);
  std::random_device entropy;
  const auto tmp = options_.dir / (".tmp-" + step_name("checkpoint", s.step) + "-" + std::to_string(entropy()));
  std::error_code ec;
  fs::create_directory(tmp, ec);
  if (ec) return Error{Errc::io, tmp.string() + ": cannot create: " + ec.message()};
  const SafetensorsMetadata meta{{"flotilla.run", s.run_id}, {"flotilla.version", std::to_string(s.version)}};
  auto ok = write_safetensors(tmp / "model.safetensors", s.model, meta);
  if (ok) ok = write_safetensors(tmp / "method.safetensors", s.method_state, meta);
  // Written last: a checkpoint directory with a good state.json has everything.
  if (ok) ok = write_file_durably(tmp / "state.json", state_json(s));
  // The journal after it exists (empty, flushed) before the checkpoint does: updates accepted
  // once it is in place are never appended to a journal that resuming from it would skip.
  std::optional<RecordLog> next;
  if (ok) {
    auto log = RecordLog::open(options_.dir / step_name("journal", s.step, ".log"), 0, options_.sync_journal);
    if (log) {
      next.emplace(std::move(log).value());
    } else {
      ok = log.error();
    }
  }
  if (ok) {
    fs::remove_all(final_dir, ec);  // one a resumed run is writing again (or an unreadable one)
    fs::rename(tmp, final_dir, ec);
    if (ec) ok = Error{Errc::io, final_dir.string() + ": cannot rename the new checkpoint: " + ec.message()};
  }
  if (!ok) {
    fs::remove_all(tmp, ec);
    return ok;
  }
  // In place now (its name is): from here on updates go to the journal after it.
  ++written_;
  last_step_ = s.step;
  journal_ = std::move(next);
  prune();
  return sync_directory(options_.dir);
}

void CheckpointStore::prune() {
  const auto steps = steps_in(options_.dir, "checkpoint", "");
  if (steps.size() <= options_.keep || options_.keep == 0) return;
  const auto oldest_kept = steps[steps.size() - options_.keep];
  std::error_code ec;
  for (const auto step : steps) {
    if (step < oldest_kept) fs::remove_all(options_.dir / step_name("checkpoint", step), ec);
  }
  for (const auto step : steps_in(options_.dir, "journal", ".log")) {
    if (step < oldest_kept) fs::remove(options_.dir / step_name("journal", step, ".log"), ec);
  }
}

Expected<void> CheckpointStore::append(const JournalEntry& entry) {
  if (!journal_) {
    return Error{Errc::internal, "no journal is open (no checkpoint was written before the first update)"};
  }
  if (auto ok = journal_->append(encode_entry(entry)); !ok) return ok;
  ++appended_;
  return {};
}

Expected<void> keep_checkpoints(Schedule& schedule, const std::shared_ptr<CheckpointStore>& store,
                                bool resumed) {
  schedule.set_checkpoint_hook([weak = std::weak_ptr(store)](Schedule& s) {
    auto store = weak.lock();
    if (!store || !store->due(s.round(), s.planned())) return;
    const auto started = std::chrono::steady_clock::now();
    try {
      if (auto ok = store->offer(s.snapshot(), s.planned()); !ok) throw Failure(ok.error());
      logger("aggregator")->debug("checkpoint at step {} written in {:.3f} s", s.round(),
                                  seconds_since(started));
    } catch (const std::exception& e) {
      // The run goes on (the journal and the last good checkpoint still hold); said each time.
      logger("aggregator")->error("checkpoint at step {} failed: {}", s.round(), e.what());
    }
  });
  if (schedule.kind() != ScheduleKind::sync) {
    schedule.set_journal([weak = std::weak_ptr(store)](const JournalEntry& entry) {
      if (auto store = weak.lock()) {
        if (auto ok = store->append(entry); !ok) throw Failure(ok.error());
      }
    });
  }
  if (resumed) return {};
  auto ok = store->offer(schedule.snapshot(), schedule.planned(), true);
  if (!ok) return ok.error();
  return {};
}

void checkpoint_at_end(CheckpointStore& store, Schedule& schedule) {
  try {
    // Written again if its step was: this one says the run is over (resumed, it ends at once).
    const auto snapshot = schedule.snapshot();
    if (auto ok = store.offer(snapshot, schedule.planned(), snapshot.finished); !ok) throw Failure(ok.error());
  } catch (const Failure& f) {
    // Not between versions (a buffer half full): the journal holds what the checkpoint would.
    logger("aggregator")->debug("no checkpoint at the end: {}", f.what());
  }
}

}  // namespace flotilla

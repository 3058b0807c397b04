#include "runtime/fleet/fleet.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numbers>
#include <string_view>
#include <system_error>

namespace flotilla {
namespace {

constexpr std::uintmax_t max_trace_bytes = 64U << 20U;
constexpr double infinity = std::numeric_limits<double>::infinity();

std::string number(double v) {
  std::array<char, 32> buf{};
  auto r = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return {buf.data(), r.ptr};
}

// ---- deterministic randomness ----------------------------------------------------------------

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30U)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27U)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31U);
}

/// One independent stream per (seed, client, purpose), so that no client's or purpose's draws
/// shift another's.
std::uint64_t stream_seed(std::uint64_t seed, std::uint32_t client, std::uint64_t purpose) {
  return splitmix64(splitmix64(seed ^ splitmix64(client)) + purpose);
}

/// Box-Muller with both uniforms drawn per sample and the sine half discarded: a fixed two
/// draws per normal, so the stream position never depends on a cached value.
double standard_normal(SplitMix& rng) {
  double radius = std::sqrt(-2 * std::log(rng.open_uniform()));
  return radius * std::cos(2 * std::numbers::pi * rng.open_uniform());
}

// ---- validation ------------------------------------------------------------------------------

Error config_error(const DeviceProfileSpec& p, const std::string& what) {
  return Error{Errc::invalid_config, "fleet profile '" + p.name + "': " + what};
}

/// `ok` must reject NaN by itself (compare so that NaN fails); infinity is never a setting.
Expected<void> check(const DeviceProfileSpec& p, const char* key, double v, bool ok,
                     const char* rule) {
  if (ok && std::isfinite(v)) return {};
  return config_error(p, std::string(key) + " must be " + rule + ", got " + number(v));
}

// ---- trace files -----------------------------------------------------------------------------

Expected<std::string> read_trace(const std::string& path) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (!ec && size > max_trace_bytes)
    return Error{Errc::io, path + ": " + std::to_string(size) + " bytes, over the 64 MiB limit"};
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{Errc::io, path + ": cannot open trace file"};
  // Chunked and bounded even where file_size lies (pipes, files still growing).
  std::string text;
  std::array<char, 1U << 16U> chunk{};
  while (in.read(chunk.data(), chunk.size()) || in.gcount() > 0) {
    text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
    if (text.size() > max_trace_bytes) return Error{Errc::io, path + ": over the 64 MiB limit"};
  }
  if (in.bad()) return Error{Errc::io, path + ": read failed"};
  return text;
}

std::string_view trim(std::string_view s) {
  auto first = s.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r") - first + 1);
}

struct Row {
  std::size_t line = 0;
  std::vector<std::string_view> fields;  ///< views into the file's text
};

Error trace_error(const std::string& path, std::size_t line, const std::string& what) {
  return Error{Errc::invalid_config, path + ":" + std::to_string(line) + ": " + what};
}

/// Calls `on_row` for each row after the header, each with exactly the header's number of
/// fields; rows are streamed, not collected, so a large file costs only its parsed values.
template <class OnRow>
Expected<void> for_each_row(const std::string& path, std::string_view text,
                            const std::vector<std::string_view>& header, OnRow on_row) {
  std::string header_text;
  for (auto h : header) {
    if (!header_text.empty()) header_text += ',';
    header_text.append(h);
  }
  std::size_t rows = 0;
  Row row;
  bool seen_header = false;
  std::size_t line = 0;
  for (std::size_t pos = 0; pos < text.size();) {
    auto end = std::min(text.find('\n', pos), text.size());
    auto content = trim(text.substr(pos, end - pos));
    pos = end + 1;
    ++line;
    if (content.empty() || content.front() == '#') continue;
    row.line = line;
    row.fields.clear();
    for (std::size_t f = 0;;) {
      auto comma = content.find(',', f);
      auto length = comma == std::string_view::npos ? comma : comma - f;
      row.fields.push_back(trim(content.substr(f, length)));
      if (comma == std::string_view::npos) break;
      f = comma + 1;
    }
    if (!seen_header) {
      if (row.fields != header)
        return trace_error(path, line, "expected the header '" + header_text + "', got '" +
                                           std::string(content) + "'");
      seen_header = true;
      continue;
    }
    if (row.fields.size() != header.size())
      return trace_error(path, line, "expected " + std::to_string(header.size()) +
                                         " fields (" + header_text + "), got " +
                                         std::to_string(row.fields.size()));
    if (auto r = on_row(row); !r) return r;
    ++rows;
  }
  if (!seen_header)
    return Error{Errc::invalid_config, path + ": missing header '" + header_text + "'"};
  if (rows == 0) return Error{Errc::invalid_config, path + ": no rows after the header"};
  return {};
}

Expected<std::uint32_t> parse_client(const std::string& path, const Row& row) {
  auto s = row.fields[0];
  std::uint32_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc{} || r.ptr != s.data() + s.size())
    return trace_error(path, row.line, "bad client id '" + std::string(s) + "'");
  return v;
}

Expected<double> parse_number(const std::string& path, const Row& row, std::size_t field) {
  auto s = row.fields[field];
  double v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc{} || r.ptr != s.data() + s.size() || !std::isfinite(v))
    return trace_error(path, row.line, "bad number '" + std::string(s) + "'");
  return v;
}

Expected<double> parse_seconds(const std::string& path, const Row& row, std::size_t field) {
  auto v = parse_number(path, row, field);
  if (v && *v < 0)
    return trace_error(path, row.line, "negative duration " + std::string(row.fields[field]));
  return v;
}

/// `client`'s row of a trace sorted by client id, else the row of the k-th client in it,
/// k = client mod the number of clients: a small trace serves a large fleet.
template <class Value>
const Value& named_or_modulo(const std::vector<std::pair<std::uint32_t, Value>>& rows,
                             std::uint32_t client) {
  auto it = std::lower_bound(rows.begin(), rows.end(), client,
                             [](const auto& entry, std::uint32_t id) { return entry.first < id; });
  if (it != rows.end() && it->first == client) return it->second;
  return rows[client % rows.size()].second;
}

}  // namespace

std::uint64_t SplitMix::operator()() { return splitmix64(state_ += 0x9e3779b97f4a7c15ULL); }

// ---- profiles --------------------------------------------------------------------------------

Expected<void> validate(const DeviceProfileSpec& p) {
  using K = TaskTime::Kind;
  const auto& t = p.task_time;
  const LinkSpec& l = p.link;
  for (auto r : {
           check(p, "compute-speed", p.compute_speed, p.compute_speed > 0, "> 0"),
           check(p, "availability", p.availability, p.availability > 0 && p.availability <= 1,
                 "in (0, 1]"),
           check(p, "mean-session", p.mean_session_seconds,
                 p.availability >= 1 ? p.mean_session_seconds >= 0 : p.mean_session_seconds > 0,
                 p.availability >= 1 ? ">= 0" : "> 0 when availability is below 1"),
           check(p, "dropout", p.dropout, p.dropout >= 0 && p.dropout < 1, "in [0, 1)"),
           check(p, "up-bandwidth", l.up_bytes_per_second, l.up_bytes_per_second >= 0, ">= 0"),
           check(p, "down-bandwidth", l.down_bytes_per_second, l.down_bytes_per_second >= 0,
                 ">= 0"),
           check(p, "up-latency", l.up_latency_seconds, l.up_latency_seconds >= 0, ">= 0"),
           check(p, "down-latency", l.down_latency_seconds, l.down_latency_seconds >= 0, ">= 0"),
       }) {
    if (!r) return r;
  }
  if (t.kind == K::lognormal) {
    if (auto r = check(p, "task-median", t.median_seconds, t.median_seconds > 0, "> 0"); !r)
      return r;
    if (auto r = check(p, "task-sigma", t.sigma, t.sigma >= 0, ">= 0"); !r) return r;
  }
  if (t.kind == K::pareto) {
    if (auto r = check(p, "task-scale", t.scale_seconds, t.scale_seconds > 0, "> 0"); !r)
      return r;
    if (auto r = check(p, "task-shape", t.shape, t.shape > 0, "> 0"); !r) return r;
  }
  if (t.kind == K::trace && t.trace_file.empty())
    return config_error(p, "task-trace must name a file when task-time is 'trace'");
  return {};
}

Expected<void> validate_fleet(const std::vector<DeviceProfileSpec>& profiles) {
  std::map<std::uint32_t, const DeviceProfileSpec*> owner;
  for (const auto& p : profiles) {
    if (auto r = validate(p); !r) return r;
    for (auto id : p.clients) {
      auto [it, inserted] = owner.emplace(id, &p);
      if (inserted) continue;
      if (it->second == &p)
        return config_error(p, "client " + std::to_string(id) + " is listed twice");
      return Error{Errc::invalid_config, "fleet: client " + std::to_string(id) +
                                             " is named by both profile '" + it->second->name +
                                             "' and profile '" + p.name + "'"};
    }
  }
  return {};
}

const DeviceProfileSpec& profile_for(const std::vector<DeviceProfileSpec>& profiles,
                                     std::uint32_t id) {
  static const DeviceProfileSpec fallback;
  const DeviceProfileSpec* catch_all = nullptr;
  for (const auto& p : profiles) {
    if (std::find(p.clients.begin(), p.clients.end(), id) != p.clients.end()) return p;
    if (p.clients.empty() && catch_all == nullptr) catch_all = &p;
  }
  return catch_all != nullptr ? *catch_all : fallback;
}

// ---- traces ----------------------------------------------------------------------------------

Expected<std::shared_ptr<const Traces>> Traces::load(
    const std::vector<DeviceProfileSpec>& profiles) {
  auto traces = std::make_shared<Traces>();
  for (const auto& p : profiles) {
    if (p.task_time.kind == TaskTime::Kind::trace)
      if (auto r = traces->load_task_times(p.task_time.trace_file); !r) return r.error();
    if (!p.availability_trace.empty())
      if (auto r = traces->load_availability(p.availability_trace); !r) return r.error();
    if (!p.device_trace.empty())
      if (auto r = traces->load_devices(p.device_trace); !r) return r.error();
  }
  return std::shared_ptr<const Traces>(std::move(traces));
}

Expected<void> Traces::load_task_times(const std::string& path) {
  if (task_times_.contains(path)) return {};
  auto text = read_trace(path);
  if (!text) return text.error();
  std::map<std::uint32_t, std::vector<double>> by_client;
  auto parsed = for_each_row(path, *text, {"client", "seconds"}, [&](const Row& row) {
    auto client = parse_client(path, row);
    if (!client) return Expected<void>(client.error());
    auto seconds = parse_seconds(path, row, 1);
    if (!seconds) return Expected<void>(seconds.error());
    by_client[*client].push_back(*seconds);
    return Expected<void>();
  });
  if (!parsed) return parsed;
  auto& sorted = task_times_[path];
  for (auto& [client, rows] : by_client) sorted.emplace_back(client, std::move(rows));
  return {};
}

Expected<void> Traces::load_availability(const std::string& path) {
  if (availability_.contains(path)) return {};
  auto text = read_trace(path);
  if (!text) return text.error();
  struct Lined {
    OnlineWindow w;
    std::size_t line;
  };
  std::map<std::uint32_t, std::vector<Lined>> by_client;
  auto read = for_each_row(path, *text, {"client", "online", "offline"}, [&](const Row& row) {
    auto client = parse_client(path, row);
    if (!client) return Expected<void>(client.error());
    auto on = parse_seconds(path, row, 1);
    if (!on) return Expected<void>(on.error());
    auto off = parse_seconds(path, row, 2);
    if (!off) return Expected<void>(off.error());
    if (*off <= *on)
      return Expected<void>(trace_error(
          path, row.line, "offline " + number(*off) + " is not after online " + number(*on)));
    by_client[*client].push_back({{*on, *off}, row.line});
    return Expected<void>();
  });
  if (!read) return read;
  std::map<std::uint32_t, std::vector<OnlineWindow>> parsed;
  for (auto& [client, windows] : by_client) {
    std::sort(windows.begin(), windows.end(),
              [](const Lined& x, const Lined& y) { return x.w.online < y.w.online; });
    auto& out = parsed[client];
    const Lined* previous = nullptr;
    for (const auto& cur : windows) {
      if (previous != nullptr && cur.w.online < previous->w.offline) {
        const Lined& later = cur.line > previous->line ? cur : *previous;
        const Lined& earlier = cur.line > previous->line ? *previous : cur;
        return trace_error(path, later.line, "client " + std::to_string(client) +
                                                 ": window overlaps the one on line " +
                                                 std::to_string(earlier.line));
      }
      // Touching windows merge so that next_change_after never reports a non-change.
      if (!out.empty() && out.back().offline == cur.w.online)
        out.back().offline = cur.w.offline;
      else
        out.push_back(cur.w);
      previous = &cur;
    }
  }
  availability_.emplace(path, std::move(parsed));
  return {};
}

Expected<void> Traces::load_devices(const std::string& path) {
  if (devices_.contains(path)) return {};
  auto text = read_trace(path);
  if (!text) return text.error();
  std::map<std::uint32_t, DeviceCapacity> by_client;
  auto parsed = for_each_row(
      path, *text, {"client", "compute-speed", "up-bandwidth", "down-bandwidth"},
      [&](const Row& row) {
        auto client = parse_client(path, row);
        if (!client) return Expected<void>(client.error());
        DeviceCapacity c;
        double* fields[] = {&c.compute_speed, &c.up_bytes_per_second, &c.down_bytes_per_second};
        for (std::size_t f = 1; f <= 3; ++f) {
          auto v = parse_number(path, row, f);
          if (!v) return Expected<void>(v.error());
          if (f == 1 ? !(*v > 0) : !(*v >= 0))
            return Expected<void>(trace_error(path, row.line,
                                              std::string(f == 1 ? "compute-speed must be > 0"
                                                                 : "bandwidth must be >= 0") +
                                                  ", got " + std::string(row.fields[f])));
          *fields[f - 1] = *v;
        }
        if (!by_client.emplace(*client, c).second)
          return Expected<void>(trace_error(path, row.line,
                                            "client " + std::to_string(*client) + " named twice"));
        return Expected<void>();
      });
  if (!parsed) return parsed;
  auto& sorted = devices_[path];
  sorted.assign(by_client.begin(), by_client.end());
  return {};
}

const DeviceCapacity* Traces::device(const std::string& path, std::uint32_t client) const {
  auto file = devices_.find(path);
  if (file == devices_.end()) return nullptr;
  return &named_or_modulo(file->second, client);
}

const std::vector<double>* Traces::task_times(const std::string& path,
                                              std::uint32_t client) const {
  auto file = task_times_.find(path);
  if (file == task_times_.end()) return nullptr;
  return &named_or_modulo(file->second, client);
}

const std::vector<OnlineWindow>* Traces::availability(const std::string& path,
                                                      std::uint32_t client) const {
  auto file = availability_.find(path);
  if (file == availability_.end()) return nullptr;
  auto it = file->second.find(client);
  return it == file->second.end() ? nullptr : &it->second;
}

// ---- emulator --------------------------------------------------------------------------------

DeviceEmulator::DeviceEmulator(DeviceProfileSpec profile, std::uint32_t client_id,
                               std::uint64_t seed, std::shared_ptr<const Traces> traces)
    : DeviceEmulator(std::make_shared<const DeviceProfileSpec>(std::move(profile)), client_id,
                     seed, std::move(traces)) {}

DeviceEmulator::DeviceEmulator(std::shared_ptr<const DeviceProfileSpec> profile,
                               std::uint32_t client_id, std::uint64_t seed,
                               std::shared_ptr<const Traces> traces)
    : profile_(std::move(profile)),
      traces_(std::move(traces)),
      client_id_(client_id),
      task_rng_(stream_seed(seed, client_id, 1)),
      dropout_rng_(stream_seed(seed, client_id, 2)),
      availability_rng_(stream_seed(seed, client_id, 3)),
      availability_seed_(stream_seed(seed, client_id, 3)) {
  if (!profile_) throw Failure(Errc::invalid_argument, "a device emulator needs a profile");
  if (auto r = validate(*profile_); !r) throw Failure(r.error());
  attach_traces();
  restart_availability();
}

void DeviceEmulator::attach_traces() {
  const auto& p = *profile_;
  auto not_loaded = [&](const std::string& file) {
    return Failure(Errc::invalid_argument,
                   "fleet profile '" + p.name + "': trace '" + file + "' is not loaded");
  };
  if (p.task_time.kind == TaskTime::Kind::trace) {
    if (traces_) trace_rows_ = traces_->task_times(p.task_time.trace_file, client_id_);
    if (trace_rows_ == nullptr) throw not_loaded(p.task_time.trace_file);
  }
  if (!p.availability_trace.empty()) {
    if (!traces_ || !traces_->loaded(p.availability_trace)) throw not_loaded(p.availability_trace);
    windows_ = traces_->availability(p.availability_trace, client_id_);
  }
  if (!p.device_trace.empty()) {
    if (traces_) capacity_ = traces_->device(p.device_trace, client_id_);
    if (capacity_ == nullptr) throw not_loaded(p.device_trace);
  }
}

DeviceEmulator::TaskPlan DeviceEmulator::plan_task(double measured_seconds) {
  const auto& t = profile_->task_time;
  double seconds = 0;
  switch (t.kind) {
    case TaskTime::Kind::measured: seconds = std::max(0.0, measured_seconds); break;
    case TaskTime::Kind::lognormal:
      seconds = t.median_seconds * std::exp(t.sigma * standard_normal(task_rng_));
      break;
    case TaskTime::Kind::pareto:
      seconds = t.scale_seconds / std::pow(task_rng_.open_uniform(), 1 / t.shape);
      break;
    case TaskTime::Kind::trace:
      seconds = (*trace_rows_)[next_row_];
      next_row_ = static_cast<std::uint32_t>((next_row_ + 1) % trace_rows_->size());
      break;
  }
  TaskPlan plan;
  plan.compute_seconds = seconds / compute_speed();
  // Two draws every task, whatever the outcome, so task k's fate depends on k alone.
  double u_drop = dropout_rng_.open_uniform();
  double u_when = dropout_rng_.open_uniform();
  plan.drops = u_drop < profile_->dropout;
  if (plan.drops) plan.drop_after_seconds = u_when * plan.compute_seconds;
  return plan;
}

double DeviceEmulator::up_bandwidth() const {
  return capacity_ != nullptr ? capacity_->up_bytes_per_second : profile_->link.up_bytes_per_second;
}

double DeviceEmulator::down_bandwidth() const {
  return capacity_ != nullptr ? capacity_->down_bytes_per_second
                              : profile_->link.down_bytes_per_second;
}

double DeviceEmulator::upload_seconds(std::uint64_t bytes) const {
  const double bw = up_bandwidth();
  return profile_->link.up_latency_seconds + (bw > 0 ? static_cast<double>(bytes) / bw : 0);
}

double DeviceEmulator::download_seconds(std::uint64_t bytes) const {
  const double bw = down_bandwidth();
  return profile_->link.down_latency_seconds + (bw > 0 ? static_cast<double>(bytes) / bw : 0);
}

void DeviceEmulator::restart_availability() {
  availability_rng_.seed(availability_seed_);
  period_online_ = availability_rng_.open_uniform() < profile_->availability;
  period_start_ = 0;
  period_end_ = draw_period(period_online_);
}

double DeviceEmulator::draw_period(bool online) {
  double a = profile_->availability;
  double mean = online ? profile_->mean_session_seconds
                       : profile_->mean_session_seconds * (1 - a) / a;
  return period_start_ - mean * std::log(availability_rng_.open_uniform());
}

void DeviceEmulator::seek(double t) {
  if (windows_ != nullptr) {
    const auto& w = *windows_;
    if (window_ > 0 && w[window_ - 1].offline > t) {
      window_ = static_cast<std::size_t>(
          std::upper_bound(w.begin(), w.end(), t,
                           [](double x, const OnlineWindow& win) { return x < win.offline; }) -
          w.begin());
    }
    while (window_ < w.size() && w[window_].offline <= t) ++window_;
    return;
  }
  if (t < period_start_) restart_availability();
  while (period_end_ <= t) {
    period_start_ = period_end_;
    period_online_ = !period_online_;
    period_end_ = draw_period(period_online_);
  }
}

bool DeviceEmulator::online_at(double t) {
  if (windows_ == nullptr && profile_->availability >= 1) return true;
  seek(t);
  if (windows_ != nullptr) return window_ < windows_->size() && (*windows_)[window_].online <= t;
  return period_online_;
}

double DeviceEmulator::next_change_after(double t) {
  if (windows_ == nullptr && profile_->availability >= 1) return infinity;
  seek(t);
  if (windows_ != nullptr) {
    if (window_ == windows_->size()) return infinity;
    const auto& w = (*windows_)[window_];
    return w.online <= t ? w.offline : w.online;
  }
  return period_end_;
}

}  // namespace flotilla

#pragma once
/// Emulated heterogeneous device fleets: per-device compute speed, task-time distribution,
/// link, availability and dropout.
///
/// Plain, deterministic C++ so that a real client process (which sleeps for the planned
/// times) and a virtual-clock simulator draw exactly the same behaviour for a seed.
///
/// Trace files are CSV: the first line that is neither blank nor a `#` comment is the header,
/// every later such line is a row; spaces around fields are ignored.
///  - Task-time trace, header `client,seconds`: each row is one task's duration at compute
///    speed 1 for that client; a device's tasks cycle through its rows in file order. A client
///    with no rows uses the rows of the k-th distinct client in the file (ids sorted), where
///    k = client id mod the number of distinct clients, so a small trace serves a large fleet.
///  - Availability trace, header `client,online,offline`: each row is a window
///    [online, offline) in seconds since the run started during which the client is online;
///    outside its windows it is offline. Windows of one client may not overlap (touching ones
///    merge). Clients the file does not name keep the profile's stochastic availability.
///  - Device trace, header `client,compute-speed,up-bandwidth,down-bandwidth`: one row per
///    client with its own relative compute speed (> 0) and link bandwidths in bytes per second
///    (0 = unlimited), replacing the profile's. Clients the file does not name use the row of
///    the k-th client in the file (ids sorted), k = client id mod the number of rows, as the
///    task-time trace does. FedScale's device-capacity trace converts to it (docs/simulation.md).
/// Files over 64 MiB are refused.
#include "runtime/base/error.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace flotilla {

/// A task-time distribution: how long a device takes for one local task at compute speed 1.
struct TaskTime {
  enum class Kind { measured, lognormal, pareto, trace };
  Kind kind = Kind::measured;  ///< measured: the real training time, no sampling
  double median_seconds = 1;   ///< lognormal: exp(mu)
  double sigma = 1;            ///< lognormal: standard deviation of the log
  double scale_seconds = 1;    ///< pareto: x_m, the smallest possible time
  double shape = 2;            ///< pareto: alpha; the mean is finite only above 1
  std::string trace_file;      ///< trace: a task-time trace (see the file comment)
};

/// One direction's bandwidth 0 means unlimited, so a message costs only the latency.
struct LinkSpec {
  double up_bytes_per_second = 0;
  double down_bytes_per_second = 0;
  double up_latency_seconds = 0;
  double down_latency_seconds = 0;
};

struct DeviceProfileSpec {
  std::string name = "default";
  double compute_speed = 1.0;  ///< > 0; 2 = twice as fast as the reference device
  LinkSpec link;
  double availability = 1.0;          ///< long-run probability of being online, in (0, 1]
  double mean_session_seconds = 0;    ///< mean online session (exponential); needed below 1
  double dropout = 0.0;               ///< probability a task is abandoned mid-way, [0, 1)
  TaskTime task_time;
  std::string availability_trace;     ///< overrides availability for the clients it names
  std::string device_trace;           ///< overrides compute speed and bandwidths per client
  std::vector<std::uint32_t> clients; ///< empty = every client no other profile names
};

/// Checks one profile; the message names the profile and the kebab-case key, e.g.
/// "fleet profile 'phones': compute-speed must be > 0, got -1".
[[nodiscard]] Expected<void> validate(const DeviceProfileSpec& profile);

/// Checks every profile and that no client id is named twice.
[[nodiscard]] Expected<void> validate_fleet(const std::vector<DeviceProfileSpec>& profiles);

/// The profile that lists `id`; else the first with an empty client list; else a default
/// (reference speed, always online, measured times).
[[nodiscard]] const DeviceProfileSpec& profile_for(const std::vector<DeviceProfileSpec>& profiles,
                                                   std::uint32_t id);

struct OnlineWindow {
  double online = 0;
  double offline = 0;
};

/// One client's row of a device trace.
struct DeviceCapacity {
  double compute_speed = 1;
  double up_bytes_per_second = 0;
  double down_bytes_per_second = 0;
};

/// Parsed trace files keyed by path, loaded once and shared by every client's emulator.
class Traces {
 public:
  /// Loads every trace file the profiles name.
  [[nodiscard]] static Expected<std::shared_ptr<const Traces>> load(
      const std::vector<DeviceProfileSpec>& profiles);
  /// Loading a path again is a no-op. Errc::io for a missing or oversized file,
  /// Errc::invalid_config for bad content as "PATH:LINE: problem".
  [[nodiscard]] Expected<void> load_task_times(const std::string& path);
  [[nodiscard]] Expected<void> load_availability(const std::string& path);
  [[nodiscard]] Expected<void> load_devices(const std::string& path);
  /// Whether `path` was loaded, as any kind of trace.
  [[nodiscard]] bool loaded(const std::string& path) const {
    return task_times_.contains(path) || availability_.contains(path) || devices_.contains(path);
  }
  /// `client`'s task durations (with the modulo fallback); null when `path` is not loaded.
  [[nodiscard]] const std::vector<double>* task_times(const std::string& path,
                                                      std::uint32_t client) const;
  /// `client`'s sorted windows; null when `path` is not loaded or does not name `client`.
  [[nodiscard]] const std::vector<OnlineWindow>* availability(const std::string& path,
                                                              std::uint32_t client) const;
  /// `client`'s capacity (with the modulo fallback); null when `path` is not loaded.
  [[nodiscard]] const DeviceCapacity* device(const std::string& path, std::uint32_t client) const;

 private:
  /// Sorted by client id, so the modulo fallback indexes it directly.
  std::map<std::string, std::vector<std::pair<std::uint32_t, std::vector<double>>>> task_times_;
  std::map<std::string, std::map<std::uint32_t, std::vector<OnlineWindow>>> availability_;
  std::map<std::string, std::vector<std::pair<std::uint32_t, DeviceCapacity>>> devices_;
};

/// A small deterministic generator (SplitMix64): 8 bytes of state, so a fleet of a million
/// emulated devices costs little memory, and its output is fixed by its seed alone.
class SplitMix {
 public:
  explicit SplitMix(std::uint64_t seed = 0) : state_(seed) {}
  std::uint64_t operator()();
  /// In (0, 1) with 53 random bits; the half-step offset keeps log() and 1/u finite.
  double open_uniform() { return (static_cast<double>((*this)() >> 11U) + 0.5) * 0x1.0p-53; }
  void seed(std::uint64_t seed) { state_ = seed; }

 private:
  std::uint64_t state_;
};

/// One device's behaviour over a run. Deterministic for (seed, client id) and independent of
/// other clients; task times, dropouts and availability draw from separate streams, so
/// changing one setting does not shift the others' draws. About 150 bytes: a simulator keeps
/// one per client of a fleet of millions, sharing the profile and the traces.
class DeviceEmulator {
 public:
  /// Throws Failure for an invalid profile or a trace `traces` has not loaded.
  DeviceEmulator(DeviceProfileSpec profile, std::uint32_t client_id, std::uint64_t seed,
                 std::shared_ptr<const Traces> traces = nullptr);
  /// The same with a profile shared by many devices.
  DeviceEmulator(std::shared_ptr<const DeviceProfileSpec> profile, std::uint32_t client_id,
                 std::uint64_t seed, std::shared_ptr<const Traces> traces = nullptr);

  struct TaskPlan {
    double compute_seconds = 0;     ///< on this device, already divided by compute_speed
    bool drops = false;             ///< the device abandons the task and never answers
    double drop_after_seconds = 0;  ///< when it goes silent, uniform over compute_seconds
  };

  /// The next task's plan. `measured_seconds` is the real training time, used only by
  /// Kind::measured (a simulator passes its reference cost).
  [[nodiscard]] TaskPlan plan_task(double measured_seconds);

  /// Latency plus bytes / bandwidth.
  [[nodiscard]] double upload_seconds(std::uint64_t bytes) const;
  [[nodiscard]] double download_seconds(std::uint64_t bytes) const;

  /// Whether the device is online `t` seconds after the run started. Stochastic availability
  /// alternates exponential online (mean mean_session) and offline (mean
  /// mean_session*(1-a)/a) periods, starting online with probability a. Amortized O(1) for
  /// non-decreasing t; an earlier t replays from the start.
  [[nodiscard]] bool online_at(double t);
  /// The first time after `t` at which the online state changes; infinity if never.
  [[nodiscard]] double next_change_after(double t);

  [[nodiscard]] const DeviceProfileSpec& profile() const { return *profile_; }
  [[nodiscard]] std::uint32_t client_id() const { return client_id_; }
  /// The profile's compute speed, or this client's row of the device trace.
  [[nodiscard]] double compute_speed() const {
    return capacity_ != nullptr ? capacity_->compute_speed : profile_->compute_speed;
  }

 private:
  void attach_traces();
  void seek(double t);
  void restart_availability();
  [[nodiscard]] double draw_period(bool online);
  [[nodiscard]] double up_bandwidth() const;
  [[nodiscard]] double down_bandwidth() const;

  std::shared_ptr<const DeviceProfileSpec> profile_;
  std::shared_ptr<const Traces> traces_;  ///< keeps the rows below alive
  std::uint32_t client_id_;
  std::uint32_t next_row_ = 0;
  SplitMix task_rng_;
  SplitMix dropout_rng_;
  SplitMix availability_rng_;
  std::uint64_t availability_seed_;
  const std::vector<double>* trace_rows_ = nullptr;
  const DeviceCapacity* capacity_ = nullptr;
  const std::vector<OnlineWindow>* windows_ = nullptr;
  std::size_t window_ = 0;  ///< first window ending after the last queried t
  bool period_online_ = true;
  double period_start_ = 0;
  double period_end_ = 0;
};

}  // namespace flotilla

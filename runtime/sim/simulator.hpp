#pragma once
/// A fleet on a virtual clock (run.mode = "simulate"): one process drives the schedule the
/// config names (the same SyncRounds or AsyncSchedule object a real aggregator holds, fed the
/// same messages) with a discrete-event loop. Compute is real, time is virtual: every task's
/// local training really runs, on a pool of worker threads, while its duration, its links, the
/// device's availability and its dropouts come from the fleet's profiles and traces
/// (docs/simulation.md). Results are the same for a seed whatever the number of workers.
#include "runtime/server/schedule.hpp"
#include "runtime/setup/config.hpp"

#include <cstdint>
#include <functional>
#include <string>

namespace flotilla {

/// How the simulator is doing, for a progress line.
struct SimulationStatus {
  double virtual_seconds = 0;
  double wall_seconds = 0;
  std::uint64_t events = 0;
  std::uint64_t versions = 0;   ///< model version now
  std::uint64_t training = 0;   ///< tasks training now (devices busy)
};

struct SimulationReport {
  std::uint32_t clients = 0;
  int workers = 0;                    ///< training threads (run.threads)
  double virtual_seconds = 0;         ///< simulated time when the run ended
  double wall_seconds = 0;            ///< the simulator's own time, setup excluded
  double setup_seconds = 0;           ///< data, partition, population, registration
  double training_seconds = 0;        ///< local training compute performed (sum over tasks)
  double evaluation_seconds = 0;      ///< evaluation compute performed
  std::uint64_t events = 0;           ///< timers, arrivals and heartbeats the loop handled
  std::uint64_t heartbeats = 0;
  std::uint64_t tasks_trained = 0;
  std::uint64_t tasks_dropped = 0;    ///< the device abandoned it (profile dropout)
  std::uint64_t tasks_unreached = 0;  ///< sent to a device that was offline
  std::uint64_t tasks_failed = 0;     ///< training failed (the client answered an error)
  std::uint64_t evaluations = 0;
  std::uint64_t idle_bytes_per_client = 0;  ///< resident memory per registered idle client
  std::uint64_t peak_resident_bytes = 0;
  std::string failure;  ///< why the schedule failed the run (as a real aggregator would); empty if not

  /// Wall time x workers / training compute: 1.0 when the workers did nothing but train.
  [[nodiscard]] double overhead() const {
    return training_seconds > 0 ? wall_seconds * workers / training_seconds : 0;
  }
  /// The same counting evaluation as useful work.
  [[nodiscard]] double overhead_with_evaluation() const {
    const double useful = training_seconds + evaluation_seconds;
    return useful > 0 ? wall_seconds * workers / useful : 0;
  }
};

struct SimulationHooks {
  ScheduleHooks schedule;
  /// Called every `simulation.progress` of virtual time, or every 10 s of wall time when 0.
  std::function<void(const SimulationStatus&)> on_status;
};

/// Runs the federation `config` describes on a virtual clock. Errc::invalid_config (naming the
/// config file) for what the config cannot do, Errc::rejected for a run that stalled (nothing
/// can happen any more); the schedule's own failure (e.g. every task lost) is the report's
/// `failure`, as a real aggregator reports it.
[[nodiscard]] Expected<SimulationReport> simulate(const Config& config, SimulationHooks hooks);

}  // namespace flotilla

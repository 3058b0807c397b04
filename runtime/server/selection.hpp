#pragma once
/// How a schedule configures the work (the "configure fit" step of a Flower strategy): which
/// of the clients waiting for work get a task, and each task's training settings. Every
/// schedule asks it; the default samples uniformly at random (seeded) and gives each client the
/// run's [training] with a seed of its own per task. A policy of its own (by device class,
/// by data size, a per-client learning rate) subclasses it.
#include "runtime/protocol/message.hpp"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace flotilla {

class Selection {
 public:
  virtual ~Selection() = default;
  /// At most `count` of `candidates` (live clients holding no task), in the order work is
  /// handed out. Default: a uniform random sample drawn with `rng`, in O(count) draws whatever
  /// the number of candidates (a fleet of a million idle clients is not copied or shuffled).
  [[nodiscard]] virtual std::vector<std::string> pick(const std::vector<std::string>& candidates,
                                                      std::size_t count, std::mt19937_64& rng) const;
  /// The training settings of client `client_id`'s task `task` (sync: the round; async: the
  /// task's sequence number). Default: `base` with a seed drawn from (run seed, task, client).
  [[nodiscard]] virtual TrainingConfig configure(std::uint32_t client_id, std::uint64_t task,
                                                 const TrainingConfig& base,
                                                 std::uint64_t run_seed) const;
};

}  // namespace flotilla

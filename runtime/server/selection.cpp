#include "runtime/server/selection.hpp"

#include <algorithm>

namespace flotilla {

std::vector<std::string> Selection::pick(std::vector<std::string> candidates, std::size_t count,
                                         std::mt19937_64& rng) const {
  std::shuffle(candidates.begin(), candidates.end(), rng);
  candidates.resize(std::min(count, candidates.size()));
  return candidates;
}

TrainingConfig Selection::configure(std::uint32_t client_id, std::uint64_t task,
                                    const TrainingConfig& base, std::uint64_t run_seed) const {
  TrainingConfig config = base;
  config.seed = run_seed * 1000003ULL + task * 7919ULL + client_id;
  return config;
}

}  // namespace flotilla

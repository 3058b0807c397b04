#include "runtime/server/selection.hpp"

#include <algorithm>
#include <unordered_set>

namespace flotilla {

std::vector<std::string> Selection::pick(const std::vector<std::string>& candidates,
                                         std::size_t count, std::mt19937_64& rng) const {
  const std::size_t n = candidates.size();
  count = std::min(count, n);
  // Floyd's algorithm: `count` distinct positions, each subset equally likely. The order is
  // then shuffled so that the first handed out is a uniform pick too.
  std::vector<std::size_t> chosen;
  chosen.reserve(count);
  std::unordered_set<std::size_t> seen;
  seen.reserve(count * 2);
  for (std::size_t m = n - count; m < n; ++m) {
    const std::size_t t = std::uniform_int_distribution<std::size_t>(0, m)(rng);
    const std::size_t pick = seen.insert(t).second ? t : m;
    if (pick == m) seen.insert(m);
    chosen.push_back(pick);
  }
  for (std::size_t i = chosen.size(); i > 1; --i) std::swap(chosen[i - 1], chosen[rng() % i]);
  std::vector<std::string> out;
  out.reserve(count);
  for (auto i : chosen) out.push_back(candidates[i]);
  return out;
}

TrainingConfig Selection::configure(std::uint32_t client_id, std::uint64_t task,
                                    const TrainingConfig& base, std::uint64_t run_seed) const {
  TrainingConfig config = base;
  config.seed = run_seed * 1000003ULL + task * 7919ULL + client_id;
  return config;
}

}  // namespace flotilla

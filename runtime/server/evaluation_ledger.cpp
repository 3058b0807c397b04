#include "runtime/server/evaluation_ledger.hpp"

#include <algorithm>

namespace flotilla {

bool EvaluationLedger::due(std::uint64_t version, bool final) const {
  if (requested(version)) return false;
  if (version == 0 || final) return true;
  if (options_.every_versions > 0 && version % options_.every_versions == 0) return true;
  return options_.every_time.count() > 0 && (!last_ || clock_.now() - *last_ >= options_.every_time);
}

void EvaluationLedger::sent(std::uint64_t version, std::uint64_t round) {
  sent_[version] = Sent{clock_.now(), round};
  last_requested_ = std::max(last_requested_.value_or(0), version);
  last_ = clock_.now();
}

std::optional<std::uint64_t> EvaluationLedger::received(std::uint64_t version) {
  auto it = sent_.find(version);
  if (it == sent_.end()) return std::nullopt;
  const auto round = it->second.round;
  sent_.erase(it);
  return round;
}

std::vector<std::uint64_t> EvaluationLedger::expire(bool evaluator_present) {
  std::vector<std::uint64_t> out;
  const auto now = clock_.now();
  for (auto it = sent_.begin(); it != sent_.end();) {
    if (!evaluator_present || now - it->second.at >= options_.timeout) {
      out.push_back(it->first);
      it = sent_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

}  // namespace flotilla

#pragma once
/// The evaluator: scores each new model version on held-out data and reports loss and
/// accuracy back to the aggregator. Spawned detached (evaluation blocks).
#include "actors/peer_link.hpp"
#include "runtime/ml/data.hpp"

namespace flotilla::actors {

struct EvaluatorSetup : PeerSetup {
  Dataset test;
  /// Its latest scores (metrics.listen); null = off.
  std::shared_ptr<monitoring::EvaluatorMetrics> metrics;
};

struct EvaluatorState {
  std::shared_ptr<EvaluatorSetup> setup;
  std::unique_ptr<PeerLink> link;
  static inline const char* name = "evaluator";
};

caf::behavior evaluator_actor(caf::stateful_actor<EvaluatorState>* self,
                              std::shared_ptr<EvaluatorSetup> setup);

}  // namespace flotilla::actors

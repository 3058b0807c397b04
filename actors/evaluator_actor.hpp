#pragma once
/// The evaluator: scores each new model version on held-out data and reports loss and
/// accuracy back to the aggregator. Spawned detached (evaluation blocks).
#include "actors/peer_link.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/model.hpp"

#include <semaphore>

namespace flotilla::actors {

struct EvaluatorSetup {
  Config config;
  Dataset test;
  std::unique_ptr<Model> model;
  std::shared_ptr<Endpoint> endpoint;
  std::shared_ptr<Mailbox> mailbox;
  std::shared_ptr<Outcome> outcome;
  int threads = 1;
  /// Shared with the clients of the same process, so evaluation never oversubscribes the cores.
  std::shared_ptr<std::counting_semaphore<>> compute_slots;
};

struct EvaluatorState {
  std::shared_ptr<EvaluatorSetup> setup;
  std::unique_ptr<PeerLink> link;
  static inline const char* name = "evaluator";
};

caf::behavior evaluator_actor(caf::stateful_actor<EvaluatorState>* self,
                              std::shared_ptr<EvaluatorSetup> setup);

}  // namespace flotilla::actors

#pragma once
/// A client: registers, trains each task it is given on its own data, sends the update back.
/// Spawned detached: local training blocks for seconds and must not hold a scheduler thread.
#include "actors/peer_link.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/model.hpp"

#include <semaphore>

namespace flotilla::actors {

struct ClientSetup {
  Config config;
  std::uint32_t id = 0;
  Dataset train;
  std::unique_ptr<Model> model;
  std::shared_ptr<Endpoint> endpoint;
  std::shared_ptr<Mailbox> mailbox;
  std::shared_ptr<Outcome> outcome;
  DeviceProfile profile;
  /// LibTorch intra-op threads this client's thread trains with.
  int threads = 1;
  /// Limits how many trainings and evaluations of one process run at once (nullptr = none).
  std::shared_ptr<std::counting_semaphore<>> compute_slots;
};

struct ClientState {
  std::shared_ptr<ClientSetup> setup;
  std::unique_ptr<PeerLink> link;
  static inline const char* name = "client";
};

caf::behavior client_actor(caf::stateful_actor<ClientState>* self,
                           std::shared_ptr<ClientSetup> setup);

}  // namespace flotilla::actors

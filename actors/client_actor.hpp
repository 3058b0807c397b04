#pragma once
/// A client: registers, trains each task it is given on its own data, sends the update back.
/// Spawned detached: local training blocks for seconds and must not hold a scheduler thread.
#include "actors/peer_link.hpp"
#include "runtime/fleet/fleet.hpp"
#include "runtime/ml/data.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

namespace flotilla::actors {

struct ClientSetup : PeerSetup {
  std::uint32_t id = 0;
  Dataset train;
  DeviceProfile profile;
  /// The optimizer plugin (training.optimizer), reloaded between tasks when its file changes;
  /// shared by the clients of one process. Each task gets a fresh optimizer state from it.
  std::shared_ptr<WatchedPlugin> optimizer;
  /// The device profile this client emulates ([[fleet.profile]]): slower compute, links,
  /// availability, dropouts around real training. None: the machine as it is.
  std::optional<DeviceEmulator> device;
  /// What its counters are reported under (client.device-class, else the profile's name, else
  /// the model's device type).
  std::string device_class;
};

struct ClientState {
  std::shared_ptr<ClientSetup> setup;
  std::unique_ptr<PeerLink> link;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  bool offline = false;  ///< emulated: the device is off the network (no heartbeats, no work)
  ClientStats counters;  ///< what it reports (heartbeats, updates, its process's metrics)
  static inline const char* name = "client";
};

caf::behavior client_actor(caf::stateful_actor<ClientState>* self,
                           std::shared_ptr<ClientSetup> setup);

}  // namespace flotilla::actors

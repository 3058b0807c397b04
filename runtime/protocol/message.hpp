#pragma once
/// Flotilla's messages as plain C++ values, mirroring schemas/flotilla.capnp one to one.
/// The round logic works on these; runtime/protocol/wire.hpp converts them to and from the wire.
#include "runtime/base/tensor.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace flotilla {

inline constexpr std::uint16_t kProtocolMajor = 1;
/// 1.1: admin commands. 1.2: delta updates (Task.sendDelta, Update.isDelta). 1.3: clients
/// report their counters (Heartbeat.stats, Update.stats). 1.4: the aggregator answers
/// heartbeats; ErrorCode notRegistered tells a peer to register again (the aggregator restarted).
/// 1.5: Task.keepLocal; a task or evaluation request carries only the tensors that changed
/// since the run's initial model and those the client trains (the rest keep their value).
inline constexpr std::uint16_t kProtocolMinor = 5;

enum class Role : std::uint8_t { client, evaluator, aggregator, admin };

struct DeviceProfile {
  std::string kind = "cpu";
  float compute_speed = 1.0F;
  std::uint64_t memory_bytes = 0;
};

struct Metric {
  std::string name;
  double value = 0;
};
using Metrics = std::vector<Metric>;

/// Value of the metric called `name`, or `fallback`.
[[nodiscard]] double metric(const Metrics& metrics, const std::string& name, double fallback = 0);

struct Hello {
  Role role = Role::client;
  std::uint32_t client_id = 0;
  DeviceProfile profile;
  std::uint64_t num_examples = 0;
};

struct Welcome {
  std::string run_id;
  std::uint64_t model_version = 0;
};

struct TrainingConfig {
  std::uint32_t local_steps = 0;  ///< 0 = use local_epochs
  std::uint32_t local_epochs = 1;
  std::uint32_t batch_size = 32;
  float learning_rate = 0.01F;
  float momentum = 0.0F;
  float weight_decay = 0.0F;
  std::uint64_t seed = 0;
};

struct Task {
  std::uint64_t round = 0;
  std::uint64_t model_version = 0;
  TensorList tensors;
  TrainingConfig config;
  /// Send the update as a delta (trained − received) instead of the trained weights (FedBuff).
  bool send_delta = false;
  /// Tensors the client trains but keeps (since 1.5): left out of `tensors` and of its update,
  /// so each client's own value carries on from task to task (FedSA-LoRA's B).
  std::vector<std::string> keep_local;
};

/// The longest device class the aggregator keeps (longer ones are cut).
inline constexpr std::size_t kMaxDeviceClass = 64;

/// What a client has done since it started (cumulative), reported in its heartbeats and
/// updates so that the aggregator can show the fleet by device class.
struct ClientStats {
  std::string device_class;
  std::uint64_t tasks_completed = 0;
  std::uint64_t tasks_failed = 0;
  double training_seconds = 0;
  std::uint64_t examples = 0;  ///< examples trained on (steps x batch size)
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  std::uint64_t optimizer_state_bytes = 0;  ///< in the last task
};

struct Update {
  std::uint64_t round = 0;
  std::uint64_t base_model_version = 0;
  std::uint64_t num_examples = 0;
  Metrics metrics;
  TensorList tensors;
  /// `tensors` are trained − received (the task asked for a delta), not weights.
  bool is_delta = false;
  std::optional<ClientStats> stats;  ///< since 1.3
};

struct EvaluationRequest {
  std::uint64_t round = 0;
  std::uint64_t model_version = 0;
  TensorList tensors;
};

struct EvaluationResult {
  std::uint64_t round = 0;
  std::uint64_t model_version = 0;
  std::uint64_t num_examples = 0;
  double loss = 0;
  double accuracy = 0;
  Metrics metrics;
};

struct Heartbeat {
  std::uint64_t model_version = 0;
  bool busy = false;
  std::optional<ClientStats> stats;  ///< since 1.3
};

struct Shutdown {
  std::string reason;
};

enum class WireErrc : std::uint8_t {
  unknown,
  protocol_version,
  malformed,
  rejected,
  internal,
  not_registered,  ///< since 1.4: the aggregator does not know the peer; it should send a Hello
};

struct ErrorReply {
  WireErrc code = WireErrc::unknown;
  std::string message;
};

/// An operator's command to the aggregator (`flotilla admin reload`).
struct AdminCommand {
  std::string command;
  std::vector<std::string> args;
};

struct AdminReply {
  bool ok = false;
  std::string message;
};

using Payload = std::variant<Hello, Welcome, Task, Update, EvaluationRequest, EvaluationResult,
                             Heartbeat, Shutdown, ErrorReply, AdminCommand, AdminReply>;

struct Message {
  std::uint16_t protocol_major = kProtocolMajor;
  std::uint16_t protocol_minor = kProtocolMinor;
  std::string run_id;
  std::string sender;
  std::uint64_t message_id = 0;
  std::uint64_t reply_to = 0;
  Payload payload;
};

/// Name of the payload's kind ("hello", "task", ...), for logs and errors.
[[nodiscard]] const char* payload_name(const Payload& payload) noexcept;

}  // namespace flotilla

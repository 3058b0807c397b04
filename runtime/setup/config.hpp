#pragma once
/// A run's configuration: one TOML file shared by every role of the run, validated on load.
/// Every key, its default and its meaning is documented in docs/config.md.
#include "runtime/fleet/fleet.hpp"
#include "runtime/ml/data.hpp"
#include "runtime/base/clock.hpp"
#include "runtime/base/error.hpp"
#include "runtime/protocol/message.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/plugin_host/options.hpp"
#include "runtime/server/schedule.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace flotilla {

/// real: every role trains and waits in wall-clock time (one process or many). simulate: one
/// process drives the same schedule on a virtual clock (docs/simulation.md).
enum class RunMode { real, simulate };

struct RunSection {
  RunMode mode = RunMode::real;
  std::string name = "flotilla";
  std::uint64_t seed = 0;
  std::uint32_t rounds = 10;
  /// async/buffered: versions to produce; 0 = the client work of `rounds` sync rounds.
  std::uint64_t versions = 0;
  Duration max_time{0};          ///< stop after this long; 0 = no limit
  std::string device = "cpu";
  int threads = 0;               ///< LibTorch intra-op threads per process; 0 = all cores
  double target_accuracy = 0;    ///< stop once the evaluator reports this; 0 = run all rounds
  std::string output;            ///< directory for rounds.csv; empty = none
  /// Directories searched for plugins before $FLOTILLA_PLUGIN_PATH and the built-in ones.
  std::vector<std::string> plugin_path;
};

struct DataSection {
  std::string dataset = "fashion-mnist";
  std::string path = "/usr/share/datasets/fashion-mnist";
  PartitionKind partition = PartitionKind::dirichlet;
  double alpha = 0.5;
  int clients = 8;                ///< how many clients the data is split into
  double test_fraction = 0.1;     ///< each client's held-out share
  std::int64_t min_examples = 10;
  int classes_per_client = 2;               ///< partition "classes"
  std::int64_t examples_per_client = 64;    ///< partition "classes"
  /// dataset "instructions" (a Dolly-shaped JSON-lines file at `path`, for the llama model):
  std::int64_t max_length = 256;  ///< tokens per example (prompt and response)
  std::string tokenizer = "bytes";  ///< or "sentencepiece" (tokenizer_model)
  std::string tokenizer_model;      ///< a SentencePiece tokenizer.model file
  double held_out = 0.1;          ///< share of the records kept for the evaluator
};

struct AggregatorSection {
  std::string listen = "tcp://127.0.0.1:5555";
  /// Where operators' commands (`flotilla admin`) are taken: never on `listen`, which any
  /// client can reach. Empty: no admin commands. An ipc:// socket is made owner-only.
  std::string admin_listen;
  std::uint32_t clients_per_round = 0;  ///< K; 0 = every registered client
  std::uint32_t min_updates = 1;        ///< a round closing with fewer fails and is retried
  Duration round_deadline{60'000};
  std::uint32_t min_clients = 0;        ///< registered clients needed to start; 0 = data.clients
  Duration registration_timeout{120'000};
  Duration evaluation_timeout{120'000};
  Duration peer_timeout{30'000};        ///< a peer silent this long is considered gone
  std::uint64_t max_message_bytes = 8ULL << 30;
  std::uint64_t max_tensors = 100'000;  ///< tensors one message may carry
  std::uint64_t max_clients = 1'000'000;  ///< peers the aggregator keeps track of at most
  std::uint32_t fold_batch = 4;         ///< waiting updates folded in one pass
  std::uint64_t max_examples = 1'000'000;  ///< the most one update may weigh (claimed examples)
  /// What is checked in every update before the method sees it: "finite" (NaN/Inf refused),
  /// "reject" / "clip" (also norm outliers refused / clipped), "off".
  std::string update_validation = "finite";
  double outlier_factor = 5.0;          ///< an outlier's norm: more than this × the median
  std::uint32_t outlier_window = 50;    ///< accepted updates the running median covers
  /// Messages received and not yet handled at most (back-pressure: reading stops at it).
  std::uint32_t max_in_flight = 32;
  /// Aggregation plugin: a name on the plugin path or a path to a .so; "builtin" = the core's
  /// FedAvg fold without a plugin.
  std::string strategy = "fedavg";
  PluginOptions options;                ///< [aggregator.options], checked by the plugin's specs
  bool watch_plugins = true;            ///< reload a plugin whose file changes
  ScheduleKind schedule = ScheduleKind::sync;
  double over_selection = 0;            ///< sync: sample K·(1+x), close at the first K
  std::uint32_t max_concurrency = 0;    ///< async/buffered: clients training at once; 0 = all
  Duration task_deadline{120'000};      ///< async/buffered: a task's update is given up on after
  double alpha = 0.6;                   ///< FedAsync's mixing weight
  Staleness staleness;                  ///< FedAsync's s(τ) (and FedBuff's, when weighted)
  std::uint32_t buffer_size = 10;       ///< FedBuff's K
  double buffer_learning_rate = 1.0;    ///< FedBuff's server learning rate η_g
  std::uint64_t max_staleness = 0;      ///< drop updates this many versions old; 0 = off
  bool staleness_weighted = false;      ///< FedBuff: weight deltas by s(τ)
  std::uint64_t evaluate_every = 0;     ///< versions; 0 = 1 for sync, max-concurrency (or clients)
                                        ///< for async, 1 for buffered
  Duration evaluate_every_time{0};      ///< also evaluate once this long passed; 0 = off
};

/// The client's optimizer plugin ([training] optimizer and [training.options]).
struct OptimizerSection {
  std::string name = "sgd";
  PluginOptions options;
};

/// Low-rank adapters (LoRA) on the model's linear layers; rank 0 = train the full weights.
struct LoraSection {
  std::int64_t rank = 0;                ///< the global model's rank
  std::vector<std::int64_t> ranks;      ///< per client id (overrides rank); empty = rank for all
  double alpha = 16;                    ///< scale alpha/r of B·A
  double dropout = 0;                   ///< on the adapter's input, while training
  std::vector<std::string> targets = {"fc1", "fc2"};  ///< linear layers adapted, by name
  bool freeze_a = false;                ///< FFA-LoRA: A from the shared seed, never trained
};

struct ClientSection {
  Duration connect_timeout{30'000};
  Duration heartbeat_interval{2'000};
  /// The class this device reports its counters under (flotilla_fleet_*{device_class}); empty:
  /// its fleet profile's name when it emulates one, else the model's device type ("cpu").
  std::string device_class;
};

/// Prometheus metrics ([metrics], docs/monitoring.md).
struct MetricsSection {
  /// "HOST:PORT" to serve /metrics on (port 0: any free port); empty = off. A process's roles
  /// share one endpoint.
  std::string listen;
  /// Keep serving this long after the run ends, so that the last values are scraped.
  Duration hold{0};
};

/// CurveZMQ on every link ([security], docs/security.md).
struct SecuritySection {
  enum class Mode { none, curve };
  Mode mode = Mode::none;
  /// This role's key: <key-dir>/<its id>.key (aggregator.key, client-3.key, evaluator.key).
  std::string key_dir = "keys";
  /// The aggregator's public key (peers); default <key-dir>/aggregator.pub.
  std::string server_key;
  /// Aggregator: who may connect, as NAME.pub files (NAME: the peer's id); default
  /// <key-dir>/authorized.
  std::string authorized;
  /// Aggregator: who may send admin commands (NAME.pub); default <key-dir>/admins.
  std::string admins;
};

/// The aggregator's checkpoints and journal ([checkpoint], docs/reliability.md).
struct CheckpointSection {
  /// Where they are written; empty = none. `flotilla aggregator --resume DIR` continues there.
  std::string dir;
  /// A checkpoint every N rounds (sync) or versions (async, buffered); 0: 1 round (sync), 100
  /// versions (async, buffered: the journal holds what lies between).
  std::uint64_t every = 0;
  std::uint32_t keep = 3;    ///< the latest N are kept
  bool sync_journal = true;  ///< flush each accepted update to the disk before folding it
  /// Continue the run checkpointed in `dir` (`flotilla aggregator --resume DIR`; not a key).
  bool resume = false;
};

struct EvaluatorSection {
  bool enabled = true;
  std::int64_t examples = 0;      ///< test examples used; 0 = the whole test set
  std::int64_t batch_size = 1000;
};

/// run.mode = "simulate": how virtual time passes (docs/simulation.md).
struct SimulationSection {
  /// How often the schedule's deadlines and timeouts are checked, in virtual time.
  Duration tick{1'000};
  /// Virtual seconds one training example takes on the reference device (compute speed 1),
  /// for devices whose task-time is "measured": a task costs examples seen x this / speed.
  double example_seconds = 0.001;
  /// Virtual seconds between progress lines (0 = none).
  Duration progress{0};
};

struct Config {
  std::string source;  ///< the file it was read from
  RunSection run;
  DataSection data;
  ModelSpec model;
  TrainingConfig training;
  OptimizerSection optimizer;
  LoraSection lora;
  AggregatorSection aggregator;
  ClientSection client;
  EvaluatorSection evaluator;
  SimulationSection simulation;
  MetricsSection metrics;
  CheckpointSection checkpoint;
  SecuritySection security;
  /// Device profiles ([[fleet.profile]]): emulated task times, links, availability, dropouts.
  std::vector<DeviceProfileSpec> fleet;
};

/// Reads and validates a config file. An unknown key, a value of the wrong type or out of
/// range, or a TOML syntax error is Errc::invalid_config with a message naming the file, the
/// key, the value and what was expected.
[[nodiscard]] Expected<Config> load_config(const std::string& path);

/// The same from TOML text (`source` names it in messages).
[[nodiscard]] Expected<Config> parse_config(const std::string& text, const std::string& source);

/// Why `admin_listen` cannot take admin commands next to the clients' endpoint `listen`
/// (the same address; an abstract ipc socket, which has no permissions); empty if it can.
/// Checked when a config is read and again once the command line has overridden either.
[[nodiscard]] std::string admin_listen_problem(const std::string& admin_listen,
                                               const std::string& listen);

/// Parses "250ms", "30s", "2m", "1h" (a unit is required).
[[nodiscard]] Expected<Duration> parse_duration(const std::string& text);

/// Parses "512", "64KiB", "64MiB", "8GiB", "1GB" into bytes.
[[nodiscard]] Expected<std::uint64_t> parse_bytes(const std::string& text);

}  // namespace flotilla

// What metrics cost on the aggregation hot path: a FedAsync schedule (every update is checked,
// folded, finalized and mixed into a new version) fed updates as fast as it takes them, with
// the aggregator's metrics reading its events (and the counters each update carries) vs the
// same with metrics off, alternating in one process. Prints updates/s for both and the overhead.
// With --compare validation: update validation off vs "finite" (the default) vs "clip" (norms).
// With --compare checkpoint: no checkpoints vs the journal written (sync-journal = false) vs
// written and flushed to the disk (the default), checkpoints every --every versions in --dir.
//   metrics_bench [--kib 204] [--updates 4000] [--clients 32] [--repeats 5]
//                 [--compare metrics|validation|checkpoint] [--dir DIR] [--every 100]
#include "monitoring/aggregator_metrics.hpp"
#include "runtime/base/log.hpp"
#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/server/async_schedule.hpp"
#include "runtime/server/checkpoint.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <string>

using namespace flotilla;

namespace {

/// Updates per second over `updates` updates from `clients` clients, with metrics or without,
/// validating updates as `validation` says, checkpointing as `checkpoints` says (none if null).
double run(std::int64_t floats, int updates, int clients, bool with_metrics,
           ValidationOptions validation = {}, const CheckpointOptions* checkpoints = nullptr) {
  ScheduleOptions o;
  o.validation = validation;
  o.kind = ScheduleKind::async;
  o.min_clients = static_cast<std::uint32_t>(clients);
  o.versions = static_cast<std::uint64_t>(updates) * 2;
  o.max_concurrency = static_cast<std::uint32_t>(clients);
  o.alpha = 0.5;
  o.staleness.kind = Staleness::Kind::constant;
  o.peer_timeout = std::chrono::hours(1);
  o.task_deadline = std::chrono::hours(1);
  const TensorList initial{{"w", torch::zeros({floats})}};
  ManualClock clock;
  AsyncSchedule schedule(o, initial, std::make_unique<FedAvg>(initial), clock, "bench");
  std::shared_ptr<CheckpointStore> store;
  if (checkpoints != nullptr) {
    std::filesystem::remove_all(checkpoints->dir);
    store = CheckpointStore::open(*checkpoints).value();
    if (!keep_checkpoints(schedule, store, false)) throw std::runtime_error("checkpoints failed");
  }
  monitoring::Metrics registry;
  monitoring::AggregatorMetrics metrics(registry);
  const auto observe = [&] {
    auto events = schedule.take_events();
    if (with_metrics) metrics.on_events(schedule, events);
    (void)schedule.take_completed();
  };
  std::deque<std::pair<std::string, Task>> waiting;
  const auto take = [&](std::vector<Send> out) {
    for (auto& s : out) {
      if (auto* t = std::get_if<Task>(&s.payload)) waiting.emplace_back(s.peer, std::move(*t));
    }
    observe();
  };
  std::vector<ClientStats> stats(static_cast<std::size_t>(clients));
  for (int i = 0; i < clients; ++i) {
    take(schedule.on_hello("client-" + std::to_string(i), Hello{Role::client, std::uint32_t(i), {}, 100}));
    stats[static_cast<std::size_t>(i)].device_class = i % 2 == 0 ? "phone" : "laptop";
  }
  const TensorList trained{{"w", torch::full({floats}, 1.0F)}};
  const auto start = std::chrono::steady_clock::now();
  for (int n = 0; n < updates && !waiting.empty(); ++n) {
    auto [peer, task] = std::move(waiting.front());
    waiting.pop_front();
    auto& s = stats[static_cast<std::size_t>(std::stoi(peer.substr(7)))];
    ++s.tasks_completed;
    s.training_seconds += 0.5;
    s.examples += 1600;
    s.bytes_sent += 4 * static_cast<std::uint64_t>(floats);
    Update u;
    u.round = task.round;
    u.base_model_version = task.model_version;
    u.num_examples = 100;
    u.tensors = trained;
    u.stats = s;
    take(schedule.on_update(peer, u));
  }
  return updates / seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t kib = 204;
  int updates = 4000, clients = 32, repeats = 5;
  std::string compare = "metrics";
  std::string dir = "build/bench-checkpoints";
  std::uint64_t every = 100;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--kib") kib = std::stoll(argv[i + 1]);
    else if (a == "--updates") updates = std::stoi(argv[i + 1]);
    else if (a == "--clients") clients = std::stoi(argv[i + 1]);
    else if (a == "--repeats") repeats = std::stoi(argv[i + 1]);
    else if (a == "--compare") compare = argv[i + 1];
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--every") every = std::stoull(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  at::set_num_threads(1);
  (void)set_log_level("warn");
  const std::int64_t floats = std::max<std::int64_t>(1, kib * 1024 / 4);
  (void)run(floats, updates / 4, clients, true);  // warm up
  if (compare == "checkpoint") {
    CheckpointOptions written{dir, every, 2, false};
    CheckpointOptions flushed{dir, every, 2, true};
    double off = 0, wrote = 0, synced = 0;
    for (int r = 0; r < repeats; ++r) {  // interleaved, best of each
      off = std::max(off, run(floats, updates, clients, false));
      wrote = std::max(wrote, run(floats, updates, clients, false, {}, &written));
      synced = std::max(synced, run(floats, updates, clients, false, {}, &flushed));
    }
    std::filesystem::remove_all(dir);
    std::printf("checkpoint model_kib=%lld updates=%d every=%llu off_updates_per_s=%.0f "
                "journal_updates_per_s=%.0f journal_flushed_updates_per_s=%.0f journal_vs_off=%.4f "
                "flushed_vs_off=%.4f\n",
                static_cast<long long>(kib), updates, static_cast<unsigned long long>(every), off, wrote,
                synced, wrote / off, synced / off);
    return 0;
  }
  if (compare == "validation") {
    ValidationOptions none;
    none.finite = false;
    ValidationOptions finite;
    ValidationOptions clip;
    clip.norm = ValidationOptions::Norm::clip;
    double off = 0, fin = 0, nrm = 0;
    for (int r = 0; r < repeats; ++r) {  // interleaved, best of each
      off = std::max(off, run(floats, updates, clients, false, none));
      fin = std::max(fin, run(floats, updates, clients, false, finite));
      nrm = std::max(nrm, run(floats, updates, clients, false, clip));
    }
    std::printf("validation model_kib=%lld updates=%d off_updates_per_s=%.0f finite_updates_per_s=%.0f "
                "clip_updates_per_s=%.0f finite_vs_off=%.4f clip_vs_off=%.4f\n",
                static_cast<long long>(kib), updates, off, fin, nrm, fin / off, nrm / off);
    return 0;
  }
  double off = 0, on = 0;
  for (int r = 0; r < repeats; ++r) {  // alternating (and which goes first), best of each
    const bool on_first = r % 2 == 1;
    if (on_first) on = std::max(on, run(floats, updates, clients, true));
    off = std::max(off, run(floats, updates, clients, false));
    if (!on_first) on = std::max(on, run(floats, updates, clients, true));
  }
  std::printf("metrics model_kib=%lld updates=%d clients=%d off_updates_per_s=%.0f "
              "on_updates_per_s=%.0f on_vs_off=%.4f overhead_pct=%.2f\n",
              static_cast<long long>(kib), updates, clients, off, on, on / off, 100 * (1 - on / off));
  return 0;
}

// The fleet simulator: the same schedules on a virtual clock, real training, virtual time from
// the device profiles, the same results whatever the number of worker threads.
#include "runtime/sim/simulator.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

using namespace flotilla;

namespace {

/// A small simulated federation: the MLP on Fashion-MNIST, few steps per task.
std::string base_config(const std::string& aggregator_keys, const std::string& extra = "",
                        int clients = 12, int threads = 1, const std::string& run_keys = "",
                        int examples = 48) {
  return "[run]\nmode = \"simulate\"\nname = \"sim-test\"\nseed = 5\nrounds = 3\nthreads = " +
         std::to_string(threads) + "\n" + run_keys +
         "\n[data]\npartition = \"classes\"\nclasses-per-client = 2\nexamples-per-client = " +
         std::to_string(examples) + "\nclients = " + std::to_string(clients) +
         "\n[model]\nname = \"mlp\"\nhidden = 16\n"
         "[training]\nlocal-steps = 4\nbatch-size = 16\nlearning-rate = 0.05\n"
         "[aggregator]\n" + aggregator_keys +
         "\n[evaluator]\nexamples = 300\n" + extra;
}

Config parse(const std::string& text) {
  auto c = parse_config(text, "sim.toml");
  if (!c) throw std::runtime_error(c.error().message);
  return std::move(c).value();
}

struct Run {
  SimulationReport report;
  std::vector<RoundRecord> records;
  std::uint64_t accepted = 0;
  std::uint64_t version = 0;
};

Run simulate_config(const Config& config) {
  Run run;
  SimulationHooks hooks;
  hooks.schedule.on_round = [&](const RoundRecord& r) { run.records.push_back(r); };
  hooks.schedule.on_done = [&](const Schedule& s) {
    run.accepted = s.counters().updates_accepted;
    run.version = s.model_version();
  };
  auto report = simulate(config, hooks);
  if (!report) throw std::runtime_error(report.error().message);
  run.report = *report;
  return run;
}

/// What rounds.csv would hold for a record, every figure included.
std::string row(const RoundRecord& r) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "%llu %llu %u %u %u %.9g %.9g %.9g %.9g %.6f %.6f %u %u %u",
                static_cast<unsigned long long>(r.round),
                static_cast<unsigned long long>(r.model_version), r.updates, r.late, r.rejected,
                r.train_loss, r.train_accuracy, r.eval_loss.value_or(-1), r.eval_accuracy.value_or(-1),
                r.version_seconds, r.elapsed_seconds, r.clients_busy, r.clients_idle,
                r.clients_offline);
  return buf;
}

/// A [[fleet.profile]] whose devices' task times are lognormal(median, sigma) and whose clients
/// 0..clients-1 are online exactly in `windows` (an availability trace written for the test).
struct OnlineTrace {
  std::filesystem::path dir;
  std::string profile;
  OnlineTrace(const std::string& name, int clients,
              const std::vector<std::pair<int, int>>& windows, const std::string& median,
              double sigma)
      : dir(std::filesystem::temp_directory_path() / ("flotilla-sim-" + name)) {
    std::filesystem::create_directories(dir);
    const auto trace = (dir / "availability.csv").string();
    std::ofstream out(trace);
    out << "client,online,offline\n";
    for (int c = 0; c < clients; ++c) {
      for (const auto& [on, off] : windows) out << c << ',' << on << ',' << off << '\n';
    }
    profile = "[[fleet.profile]]\nname = \"" + name + "\"\ntask-time = \"lognormal\"\ntask-median = \"" +
              median + "\"\ntask-sigma = " + std::to_string(sigma) + "\navailability-trace = \"" +
              trace + "\"\n";
  }
  ~OnlineTrace() { std::filesystem::remove_all(dir); }
};

std::vector<std::string> rows(const Run& run) {
  std::vector<std::string> out;
  for (const auto& r : run.records) out.push_back(row(r));
  return out;
}

}  // namespace

TEST(Simulator, SameSeedSameResultsWithOneOrTwoWorkerThreads) {
  const std::string keys =
      "schedule = \"buffered\"\nbuffer-size = 3\nmax-concurrency = 5\nevaluate-every = 2";
  const std::string fleet =
      "[[fleet.profile]]\nname = \"phones\"\ntask-time = \"lognormal\"\ntask-median = \"4s\"\n"
      "task-sigma = 1.0\ndropout = 0.2\nup-bandwidth = \"1MiB\"\nup-latency = \"200ms\"\n";
  const auto one = simulate_config(parse(base_config(keys, fleet, 12, 1)));
  const auto again = simulate_config(parse(base_config(keys, fleet, 12, 1)));
  const auto two = simulate_config(parse(base_config(keys, fleet, 12, 2)));
  ASSERT_EQ(one.version, 12U) << "rounds 3 x 12 clients / buffer 3";
  EXPECT_EQ(rows(one), rows(again)) << "the same run twice";
  EXPECT_EQ(rows(one), rows(two)) << "one worker thread or two";
  EXPECT_EQ(two.report.workers, 2);
  EXPECT_GT(one.report.tasks_dropped, 0U) << "dropout 0.2 over dozens of tasks";
  EXPECT_GT(one.report.training_seconds, 0);
  // The model learned: the last evaluation beats the initial model's.
  ASSERT_TRUE(one.records.front().eval_accuracy && one.records.back().eval_accuracy);
  EXPECT_GT(*one.records.back().eval_accuracy, *one.records.front().eval_accuracy + 0.1);
}

TEST(Simulator, VirtualTimeComesFromTheProfilesNotTheMachine) {
  // Every task takes exactly 10 s at speed 1 (lognormal with sigma 0), these devices run at
  // speed 2, and a 1 MiB/s uplink with 0.5 s latency carries each update: a synchronous round
  // lasts 5 s of compute plus the upload, whatever this machine takes to train.
  const std::string fleet =
      "[[fleet.profile]]\nname = \"steady\"\ncompute-speed = 2.0\ntask-time = \"lognormal\"\n"
      "task-median = \"10s\"\ntask-sigma = 0.0\nup-latency = \"500ms\"\n";
  const auto run = simulate_config(parse(base_config("round-deadline = \"60s\"", fleet, 6)));
  ASSERT_EQ(run.version, 3U);
  std::vector<double> closes;
  for (const auto& r : run.records) {
    if (r.updates > 0) closes.push_back(r.version_seconds);
  }
  ASSERT_EQ(closes.size(), 3U);
  for (std::size_t k = 0; k < closes.size(); ++k) {
    EXPECT_NEAR(closes[k], 5.5 * static_cast<double>(k + 1), 1e-3) << "round " << k + 1;
  }
  EXPECT_NEAR(run.report.virtual_seconds, 16.5, 1e-3);
  EXPECT_EQ(run.accepted, 18U) << "6 clients x 3 rounds";
  EXPECT_EQ(run.report.tasks_trained, 18U);
}

TEST(Simulator, MeasuredTaskTimeIsExamplesTimesTheReferenceCost) {
  // No profile: tasks cost local-steps x batch-size x example-seconds on the reference device.
  const auto run = simulate_config(
      parse(base_config("round-deadline = \"60s\"", "[simulation]\nexample-seconds = 0.01\n", 4)));
  // 4 steps x 16 examples x 0.01 s = 0.64 s per round.
  ASSERT_EQ(run.version, 3U);
  EXPECT_NEAR(run.report.virtual_seconds, 3 * 0.64, 1e-3);
}

TEST(Simulator, OfflineDevicesGetNoWorkAndTheRunGoesOn) {
  // Clients 0-3 are online only for the first 2 s; async tasks sent to them later never arrive,
  // they are set aside after the peer timeout, and the others finish the run.
  const OnlineTrace flaky("flaky", 4, {{0, 2}}, "3s", 0.5);
  const std::string& fleet = flaky.profile;
  const auto run = simulate_config(parse(base_config(
      "schedule = \"async\"\nmax-concurrency = 4\ntask-deadline = \"20s\"\npeer-timeout = \"10s\"",
      fleet, 10)));
  EXPECT_EQ(run.version, 30U) << "rounds 3 x 10 clients' work";
  EXPECT_GT(run.report.tasks_unreached + run.report.tasks_trained, run.accepted);
  EXPECT_FALSE(run.records.empty());
  EXPECT_GT(run.records.back().clients_offline, 0U) << "the offline devices were set aside";
}

TEST(Simulator, ANightWithEveryDeviceOfflineIsNotAStall) {
  // Every device is online for the first 2 s and again from 600 s on: the run waits out the
  // night (its tasks are lost, the devices set aside) and finishes once they are back.
  const OnlineTrace nightly("nightly", 4, {{0, 2}, {600, 100000}}, "5s", 0.0);
  const std::string& fleet = nightly.profile;
  const auto run = simulate_config(parse(base_config(
      "schedule = \"async\"\nmax-concurrency = 2\ntask-deadline = \"20s\"\npeer-timeout = \"10s\"",
      fleet, 4, 1, "versions = 6")));
  EXPECT_EQ(run.version, 6U);
  EXPECT_GT(run.report.virtual_seconds, 600);
}

TEST(Simulator, IdleClientsCostLessThanOneKibibyteEach) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "measured with glibc's heap statistics, which the sanitizer's allocator replaces";
#endif
  // A registered population of 50,000, two of them training at a time: what each idle one
  // costs in memory (its data indices, its device, its place in the schedule's registry).
  const auto run = simulate_config(parse(base_config(
      "schedule = \"buffered\"\nbuffer-size = 2\nmax-concurrency = 2\nevaluate-every = 100",
      "", 50'000, 1, "versions = 2", 16)));
  EXPECT_EQ(run.version, 2U);
  EXPECT_EQ(run.report.clients, 50'000U);
  EXPECT_GT(run.report.idle_bytes_per_client, 0U);
  EXPECT_LT(run.report.idle_bytes_per_client, 1024U);
  std::cout << "bytes per idle client: " << run.report.idle_bytes_per_client << std::endl;
}

TEST(Simulator, ConfigErrorsNameTheKey) {
  auto config = parse(base_config("peer-timeout = \"4s\"", "[simulation]\ntick = \"3s\"\n"));
  auto report = simulate(config, {});
  ASSERT_FALSE(report);
  EXPECT_NE(report.error().message.find("simulation.tick"), std::string::npos)
      << report.error().message;
}

TEST(Simulator, EachClientKeepsItsOwnBUnderFedSaLora) {
  // The workers' models are shared by every client of a rank: a client's B must be kept for it,
  // or one client would start from another's B, and the run would depend on which worker ran
  // which task.
  const std::string keys = "strategy = \"fedsa-lora\"\nmin-clients = 6";
  const std::string lora = "[lora]\nrank = 4\nalpha = 8.0\ntargets = [\"fc1\", \"fc2\"]\n";
  const auto one = simulate_config(parse(base_config(keys, lora, 6, 1)));
  const auto two = simulate_config(parse(base_config(keys, lora, 6, 2)));
  ASSERT_EQ(one.version, 3U);
  EXPECT_EQ(rows(one), rows(two)) << "one worker thread or two";
  // The clients' own models learn round after round (the global B never trains).
  ASSERT_EQ(one.records.size(), 4U);
  EXPECT_GT(one.records.back().train_accuracy, one.records[1].train_accuracy);
}

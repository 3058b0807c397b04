#include "monitoring/aggregator_metrics.hpp"
#include "monitoring/metrics.hpp"
#include "monitoring/peer_metrics.hpp"
#include "monitoring/server.hpp"

#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/server/async_schedule.hpp"
#include "runtime/server/sync_rounds.hpp"

#include "../runtime/schedule_testing.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

/// The value of the sample `series` (name with its labels, as written) in exposition text.
std::optional<double> sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

double value(const std::string& text, const std::string& series) {
  auto v = sample(text, series);
  EXPECT_TRUE(v.has_value()) << "no sample " << series;
  return v.value_or(-1);
}

TensorList model_of(float value) { return {{"w", torch::full({3}, value)}}; }


/// A schedule whose events feed an AggregatorMetrics, driven by a fleet of fake clients.
struct Watched {
  Watched(ScheduleKind kind, int clients) {
    ScheduleOptions o;
    o.kind = kind;
    o.min_clients = static_cast<std::uint32_t>(clients);
    o.rounds = 5;
    o.versions = 40;
    o.max_staleness = 2;
    o.buffer_size = 4;
    o.max_concurrency = static_cast<std::uint32_t>(clients);
    o.peer_timeout = 1h;
    o.registration_timeout = 1h;
    o.seed = 11;
    if (kind == ScheduleKind::sync) {
      schedule = std::make_unique<SyncRounds>(o, model_of(0), std::make_unique<flotilla::testing::BrokenAggregation>(model_of(0), 7), clock, "run-7");
    } else {
      schedule = std::make_unique<AsyncSchedule>(o, model_of(0), std::make_unique<flotilla::testing::BrokenAggregation>(model_of(0), 7), clock, "run-7");
    }
    for (int i = 0; i < clients; ++i) {
      take(schedule->on_hello("client-" + std::to_string(i), Hello{Role::client, std::uint32_t(i), {}, 100}));
    }
  }
  void take(const std::vector<Send>& out) {
    for (const auto& s : out) {
      if (const auto* t = std::get_if<Task>(&s.payload)) tasks[s.peer] = *t;
    }
    metrics.on_events(*schedule, schedule->take_events());
  }
  Update answer_for(const std::string& peer, bool bad_shape = false) {
    const Task& t = tasks.at(peer);
    Update u;
    u.round = t.round;
    u.base_model_version = t.model_version;
    u.num_examples = 10;
    u.is_delta = t.send_delta;
    u.tensors = bad_shape ? TensorList{{"w", torch::ones({4})}} : TensorList{{"w", torch::ones({3})}};
    return u;
  }
  std::string scrape() const { return registry.scrape(); }

  ManualClock clock;
  monitoring::Metrics registry;
  monitoring::AggregatorMetrics metrics{registry};
  std::unique_ptr<Schedule> schedule;
  std::map<std::string, Task> tasks;
};

/// Answers tasks in a random order (some twice, some malformed, some from strangers) until the
/// run is over, then checks that every metric equals the run's own count.
void run_and_compare(ScheduleKind kind) {
  Watched w(kind, 24);
  std::mt19937 rng(5);
  int steps = 0;
  while (!w.schedule->done() && steps++ < 5000) {
    if (w.tasks.empty()) {
      w.clock.advance(61s);  // deadlines pass: rounds close, tasks are lost
      w.take(w.schedule->on_tick());
      continue;
    }
    auto it = w.tasks.begin();
    std::advance(it, static_cast<long>(rng() % w.tasks.size()));
    const std::string peer = it->first;
    const int roll = static_cast<int>(rng() % 20);
    Update u = w.answer_for(peer, roll == 0);
    if (roll == 5) u.num_examples = 1'000'000'000;  // more than it registered with: capped
    w.tasks.erase(peer);
    w.take(w.schedule->on_update(peer, u));
    if (roll == 1) w.take(w.schedule->on_update(peer, u));          // a duplicate
    if (roll == 2) w.take(w.schedule->on_update("stranger", u));    // never registered
    if (roll == 3) w.take(w.schedule->on_bad_message("client-1", Error{Errc::malformed, "junk"}));
    if (roll == 4) w.take(w.schedule->on_tick());
  }
  ASSERT_TRUE(w.schedule->done()) << "the run did not end";
  // The evaluation of the last version never comes; the run ends without it.
  const auto& c = w.schedule->counters();
  const std::string text = w.scrape();
  EXPECT_GT(c.updates_accepted, 20U);
  EXPECT_EQ(static_cast<double>(c.updates_accepted), value(text, "flotilla_aggregator_updates_accepted_total"));
  double rejected = 0;
  for (std::size_t i = 0; i < kRejectReasons; ++i) {
    const auto reason = static_cast<RejectReason>(i);
    const double got = value(text, std::string("flotilla_aggregator_updates_rejected_total{reason=\"") +
                                        to_string(reason) + "\"}");
    EXPECT_EQ(static_cast<double>(c.rejected(reason)), got) << to_string(reason);
    rejected += got;
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(c.rejected(RejectReason::fold_failed), 0U) << "the broken method's lost folds are counted";
  EXPECT_EQ(static_cast<double>(c.updates_accepted) + rejected,
            value(text, "flotilla_aggregator_updates_received_total"));
  EXPECT_EQ(static_cast<double>(c.updates_late), value(text, "flotilla_aggregator_updates_late_total"));
  EXPECT_EQ(static_cast<double>(c.rejected(RejectReason::stale)),
            value(text, "flotilla_aggregator_updates_stale_dropped_total"));
  EXPECT_EQ(static_cast<double>(c.rounds_completed), value(text, "flotilla_aggregator_versions_produced_total"));
  EXPECT_EQ(static_cast<double>(c.rounds_failed), value(text, "flotilla_aggregator_versions_failed_total"));
  EXPECT_EQ(static_cast<double>(w.schedule->model_version()), value(text, "flotilla_aggregator_model_version"));
  EXPECT_EQ(static_cast<double>(c.tasks_sent), value(text, "flotilla_aggregator_tasks_sent_total"));
  EXPECT_EQ(static_cast<double>(c.tasks_lost), value(text, "flotilla_aggregator_tasks_lost_total"));
  EXPECT_EQ(static_cast<double>(c.messages_malformed), value(text, "flotilla_aggregator_messages_refused_total"));
  EXPECT_GT(c.weights_capped, 0U);
  EXPECT_EQ(static_cast<double>(c.weights_capped),
            value(text, "flotilla_aggregator_updates_weight_capped_total"));
  // Staleness is observed as an update passes the checks, before the method folds it (or fails to).
  EXPECT_EQ(static_cast<double>(c.updates_accepted + c.rejected(RejectReason::fold_failed)),
            value(text, "flotilla_aggregator_update_staleness_versions_count"));
  EXPECT_EQ(static_cast<double>(c.rounds_completed + c.rounds_failed),
            value(text, "flotilla_aggregator_round_duration_seconds_count"));
  EXPECT_EQ(static_cast<double>(c.rounds_completed),
            value(text, "flotilla_aggregator_finalize_duration_seconds_count"));
  EXPECT_EQ(24.0, value(text, "flotilla_aggregator_clients{state=\"registered\"}"));
  EXPECT_EQ(24.0, value(text, "flotilla_aggregator_clients_joined_total"));
}

}  // namespace

TEST(AggregatorMetrics, CountersEqualTheSynchronousRunsOwnCounts) { run_and_compare(ScheduleKind::sync); }
TEST(AggregatorMetrics, CountersEqualTheBufferedRunsOwnCounts) { run_and_compare(ScheduleKind::buffered); }
TEST(AggregatorMetrics, CountersEqualTheAsyncRunsOwnCounts) { run_and_compare(ScheduleKind::async); }

TEST(AggregatorMetrics, InfoAndEveryRejectionReasonExistBeforeAnyEvent) {
  monitoring::Metrics m;
  monitoring::AggregatorMetrics a(m);
  a.describe("run-1", "async", "fedavgm", true);
  const auto text = m.scrape();
  EXPECT_EQ(1.0, value(text, "flotilla_aggregator_info{run_id=\"run-1\",schedule=\"async\",strategy=\"fedavgm\"}"));
  EXPECT_EQ(1.0, value(text, "flotilla_aggregator_plugin_loads_total{result=\"ok\"}"));
  EXPECT_EQ(0.0, value(text, "flotilla_aggregator_evaluators"));
  EXPECT_EQ(0.0, value(text, "flotilla_aggregator_updates_rejected_total{reason=\"fold-failed\"}"));
  EXPECT_EQ(0.0, value(text, "flotilla_aggregator_plugin_reloads_total{result=\"failed\"}"));
  EXPECT_NE(std::string::npos, text.find("# HELP flotilla_aggregator_model_version "));
}

TEST(AggregatorMetrics, ClientReportsAddUpByDeviceClassWithoutClientLabels) {
  Watched w(ScheduleKind::async, 3);
  const auto report = [&](const std::string& peer, std::uint64_t tasks, double seconds,
                          const std::string& cls) {
    ClientStats s;
    s.device_class = cls;
    s.tasks_completed = tasks;
    s.training_seconds = seconds;
    s.examples = tasks * 100;
    s.bytes_sent = tasks * 1000;
    s.optimizer_state_bytes = 64;
    w.take(w.schedule->on_heartbeat(peer, Heartbeat{0, true, s}));
  };
  report("client-0", 2, 1.0, "phone");
  report("client-1", 3, 2.0, "phone");
  report("client-2", 5, 1.0, "laptop");
  report("client-0", 4, 2.0, "phone");  // +2 tasks, +1 s
  report("client-1", 1, 0.5, "phone");  // restarted: counts from zero again, +1 task, +0.5 s
  report("stranger", 100, 9.0, "phone");  // not registered: ignored
  const auto text = w.scrape();
  EXPECT_EQ(8.0, value(text, "flotilla_fleet_tasks_completed_total{device_class=\"phone\"}"));
  EXPECT_EQ(5.0, value(text, "flotilla_fleet_tasks_completed_total{device_class=\"laptop\"}"));
  EXPECT_EQ(2.0, value(text, "flotilla_fleet_clients{device_class=\"phone\"}"));
  // (200 + 300 + 200 + 100) examples over (1 + 2 + 1 + 0.5) s of training
  EXPECT_DOUBLE_EQ(800.0 / 4.5, value(text, "flotilla_fleet_samples_per_second{device_class=\"phone\"}"));
  EXPECT_EQ(64.0, value(text, "flotilla_fleet_optimizer_state_bytes{device_class=\"phone\"}"));
  EXPECT_EQ(std::string::npos, text.find("client-0")) << "a client id must never be a label";
}

TEST(AggregatorMetrics, ReportsThatAreNotTimesAreRefusedAndLongClassesCut) {
  Watched w(ScheduleKind::async, 2);
  ClientStats s;
  s.device_class = std::string(10'000, 'p');
  s.tasks_completed = 3;
  for (double bad : {std::nan(""), -1.0, std::numeric_limits<double>::infinity()}) {
    s.training_seconds = bad;
    (void)w.schedule->on_heartbeat("client-0", Heartbeat{0, true, s});
    for (const auto& e : w.schedule->take_events()) {
      EXPECT_FALSE(std::holds_alternative<ClientReported>(e.body)) << "training seconds " << bad;
    }
  }
  s.training_seconds = 2;
  (void)w.schedule->on_heartbeat("client-0", Heartbeat{0, true, s});
  auto events = w.schedule->take_events();
  ASSERT_EQ(1U, events.size());
  EXPECT_EQ(kMaxDeviceClass, std::get<ClientReported>(events[0].body).stats.device_class.size());
  w.metrics.on_events(*w.schedule, events);
  EXPECT_EQ(3.0, value(w.scrape(), "flotilla_fleet_tasks_completed_total{device_class=\"" +
                                       std::string(48, 'p') + "\"}"));
}

TEST(FleetMetrics, ClientsThatLeaveOrChangeClassAreCountedOnce) {
  monitoring::FleetMetrics fleet;
  const auto scrape = [&] {
    std::vector<prometheus::MetricFamily> families;
    fleet.collect(families);
    return monitoring::serialize(families);
  };
  ClientStats a;
  a.device_class = "phone";
  a.optimizer_state_bytes = std::numeric_limits<std::uint64_t>::max() / 2;  // a wild claim
  fleet.report("p1", a);
  a.optimizer_state_bytes = 100;
  fleet.report("p1", a);
  ClientStats b = a;
  b.optimizer_state_bytes = 300;
  fleet.report("p2", b);
  EXPECT_EQ(2.0, value(scrape(), "flotilla_fleet_clients{device_class=\"phone\"}"));
  EXPECT_EQ(200.0, value(scrape(), "flotilla_fleet_optimizer_state_bytes{device_class=\"phone\"}"))
      << "the mean is exact after the wild claim is replaced";
  fleet.left("p2");
  EXPECT_EQ(1.0, value(scrape(), "flotilla_fleet_clients{device_class=\"phone\"}"));
  EXPECT_EQ(100.0, value(scrape(), "flotilla_fleet_optimizer_state_bytes{device_class=\"phone\"}"));
  fleet.report("p2", b);  // back
  b.device_class = "laptop";
  fleet.report("p2", b);  // restarted as another class
  const auto text = scrape();
  EXPECT_EQ(1.0, value(text, "flotilla_fleet_clients{device_class=\"phone\"}"));
  EXPECT_EQ(1.0, value(text, "flotilla_fleet_clients{device_class=\"laptop\"}"));
  EXPECT_EQ(300.0, value(text, "flotilla_fleet_optimizer_state_bytes{device_class=\"laptop\"}"));
}

TEST(FleetMetrics, HostileDeviceClassesAreBoundedAndSanitized) {
  monitoring::FleetMetrics fleet(4);
  for (int i = 0; i < 50; ++i) {
    ClientStats s;
    s.device_class = "class-" + std::to_string(i);
    s.tasks_completed = 1;
    fleet.report("peer-" + std::to_string(i), s);
  }
  ClientStats evil;
  evil.device_class = std::string("a\"b\nc}") + std::string(500, 'x');
  fleet.report("peer-evil", evil);
  std::vector<prometheus::MetricFamily> families;
  fleet.collect(families);
  const auto text = monitoring::serialize(families);
  EXPECT_EQ(46.0, value(text, "flotilla_fleet_tasks_completed_total{device_class=\"other\"}"));
  std::size_t classes = 0;
  for (std::size_t at = 0; (at = text.find("flotilla_fleet_clients{", at)) != std::string::npos; ++at) ++classes;
  EXPECT_EQ(5U, classes) << "4 classes and 'other'";
  EXPECT_EQ("a_b_c_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", monitoring::device_class_label(evil.device_class));
  EXPECT_EQ("unknown", monitoring::device_class_label(""));
}

TEST(ClientMetrics, RecordsWhatEachReportAdds) {
  monitoring::Metrics m;
  monitoring::ClientMetrics client(m);
  ClientStats before, now;
  now.device_class = before.device_class = "cpu";
  now.tasks_completed = 2;
  now.training_seconds = 4;
  now.examples = 800;
  now.bytes_sent = 5000;
  now.optimizer_state_bytes = 1024;
  client.record(now, before);
  ClientStats later = now;
  later.tasks_failed = 1;
  client.record(later, now);
  const auto text = m.scrape();
  EXPECT_EQ(2.0, value(text, "flotilla_client_tasks_completed_total{device_class=\"cpu\"}"));
  EXPECT_EQ(1.0, value(text, "flotilla_client_tasks_failed_total{device_class=\"cpu\"}"));
  EXPECT_EQ(200.0, value(text, "flotilla_client_samples_per_second{device_class=\"cpu\"}"));
  EXPECT_EQ(5000.0, value(text, "flotilla_client_sent_bytes_total{device_class=\"cpu\"}"));
  EXPECT_EQ(1024.0, value(text, "flotilla_client_optimizer_state_bytes{device_class=\"cpu\"}"));
}

TEST(Metrics, ProcessAndBuildInfoUseTheStandardNames) {
  monitoring::Metrics m;
  double counted = 0;
  m.add_counter("flotilla_test_bytes_total", "Bytes.", [&] { return counted; });
  counted = 42;
  const auto text = m.scrape();
  EXPECT_GT(value(text, "process_cpu_seconds_total"), 0.0);
  EXPECT_GT(value(text, "process_resident_memory_bytes"), 1e6);
  EXPECT_GT(value(text, "process_open_fds"), 2.0);
  EXPECT_GT(value(text, "process_max_fds"), 2.0);
  EXPECT_GT(value(text, "flotilla_process_threads"), 0.0);
  const double start = value(text, "process_start_time_seconds");
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 3600) << "the test process started within the hour";
  EXPECT_EQ(42.0, value(text, "flotilla_test_bytes_total"));
  EXPECT_NE(std::string::npos, text.find("flotilla_build_info{"));
  EXPECT_NE(std::string::npos, text.find("# TYPE process_cpu_seconds_total counter"));
}

// ---- the HTTP endpoint ----

namespace {

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

/// Sends `request` and reads until the server closes (or 20 s pass).
std::string http_exchange(int port, const std::string& request) {
  const int fd = connect_to(port);
  if (fd < 0) return "";
  (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

const std::string kGet = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

}  // namespace

TEST(MetricsServer, ServesMetricsAndRefusesTheRest) {
  auto metrics = std::make_shared<monitoring::Metrics>();
  auto server = monitoring::MetricsServer::start("127.0.0.1:0", metrics);
  ASSERT_TRUE(server) << server.error().message;
  const int port = (*server)->port();
  EXPECT_EQ("http://127.0.0.1:" + std::to_string(port) + "/metrics", (*server)->url());
  const auto ok = http_exchange(port, kGet);
  EXPECT_EQ(0U, ok.rfind("HTTP/1.1 200", 0)) << ok.substr(0, 80);
  EXPECT_NE(std::string::npos, ok.find("text/plain; version=0.0.4"));
  EXPECT_NE(std::string::npos, ok.find("flotilla_build_info"));
  EXPECT_NE(std::string::npos, http_exchange(port, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").find(" 404 "));
  EXPECT_EQ(0U, http_exchange(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\nConnection: close\r\n\r\n")
                    .rfind("HTTP/1.1 4", 0)) << "a body bigger than a scrape needs is refused";
  EXPECT_EQ(std::string::npos, http_exchange(port, "\x16\x03\x01garbage\r\n\r\n\xff\xfe").find(" 200 "));
}

TEST(MetricsServer, BadAddressesAndTakenPortsAreClearErrors) {
  auto metrics = std::make_shared<monitoring::Metrics>();
  for (const std::string bad : {"9464", "localhost:", "127.0.0.1:99999", "127.0.0.1:http"}) {
    auto s = monitoring::MetricsServer::start(bad, metrics);
    ASSERT_FALSE(s) << bad;
    EXPECT_EQ(Errc::invalid_config, s.error().code) << bad;
    EXPECT_NE(std::string::npos, s.error().message.find(bad)) << s.error().message;
  }
  auto first = monitoring::MetricsServer::start("127.0.0.1:0", metrics);
  ASSERT_TRUE(first);
  auto second = monitoring::MetricsServer::start("127.0.0.1:" + std::to_string((*first)->port()), metrics);
  ASSERT_FALSE(second);
  EXPECT_EQ(Errc::address_in_use, second.error().code);
}

TEST(MetricsServer, StopsAtOnceEvenRightAfterStarting) {
  auto metrics = std::make_shared<monitoring::Metrics>();
  for (int i = 0; i < 20; ++i) {
    auto server = monitoring::MetricsServer::start("127.0.0.1:0", metrics);
    ASSERT_TRUE(server);
    const auto started = std::chrono::steady_clock::now();
    (*server)->stop();
    EXPECT_LT(std::chrono::steady_clock::now() - started, 4s) << "stop() must not wait for a peer";
  }
}

TEST(MetricsServer, GarbageAndFloodsLeaveItServing) {
  auto metrics = std::make_shared<monitoring::Metrics>();
  auto server = monitoring::MetricsServer::start("127.0.0.1:0", metrics);
  ASSERT_TRUE(server);
  const int port = (*server)->port();
  std::atomic<int> answered{0};
  std::vector<std::thread> threads;
  std::vector<int> idle;  // connections that never say anything
  for (int i = 0; i < 16; ++i) idle.push_back(connect_to(port));
  ASSERT_TRUE(std::all_of(idle.begin(), idle.end(), [](int fd) { return fd >= 0; }));
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      for (int i = 0; i < 5; ++i) {
        std::string junk(static_cast<std::size_t>(rng() % 3000), '\0');
        for (auto& c : junk) c = static_cast<char>(rng());
        (void)http_exchange(port, junk + "\r\n\r\n");
        if (http_exchange(port, kGet).rfind("HTTP/1.1 200", 0) == 0) ++answered;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int fd : idle) ::close(fd);
  EXPECT_EQ(40, answered.load()) << "every scrape among the garbage was answered";
  EXPECT_EQ(0U, http_exchange(port, kGet).rfind("HTTP/1.1 200", 0));
}

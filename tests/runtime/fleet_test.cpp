#include "runtime/fleet/fleet.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

using namespace flotilla;

namespace {

DeviceProfileSpec lognormal(double median, double sigma) {
  DeviceProfileSpec p;
  p.task_time.kind = TaskTime::Kind::lognormal;
  p.task_time.median_seconds = median;
  p.task_time.sigma = sigma;
  return p;
}

std::vector<double> times(DeviceEmulator& d, int n) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(d.plan_task(1.0).compute_seconds);
  return v;
}

/// A fresh directory per test, so files from one test never satisfy another.
std::string write_file(const std::string& name, const std::string& text) {
  const auto* test = testing::UnitTest::GetInstance()->current_test_info();
  auto dir = std::filesystem::temp_directory_path() /
             ("flotilla_fleet_" + std::string(test->name()));
  std::filesystem::create_directories(dir);
  auto path = (dir / name).string();
  std::ofstream(path) << text;
  return path;
}

Error task_trace_error(const std::string& text) {
  Traces t;
  auto r = t.load_task_times(write_file("bad.csv", text));
  EXPECT_FALSE(r) << "accepted:\n" << text;
  return r ? Error{} : r.error();
}

Error availability_trace_error(const std::string& text) {
  Traces t;
  auto r = t.load_availability(write_file("bad.csv", text));
  EXPECT_FALSE(r) << "accepted:\n" << text;
  return r ? Error{} : r.error();
}

std::string validation_message(const DeviceProfileSpec& p) {
  auto r = validate(p);
  EXPECT_FALSE(r) << "accepted an invalid profile";
  return r ? "" : r.error().message;
}

}  // namespace

TEST(Fleet, LognormalMatchesMedianAndSigmaAndScalesWithSpeed) {
  DeviceEmulator slow(lognormal(4.0, 0.5), 7, 42);
  auto fast_profile = lognormal(4.0, 0.5);
  fast_profile.compute_speed = 2;
  DeviceEmulator fast(fast_profile, 7, 42);
  auto s = times(slow, 20000);
  auto f = times(fast, 20000);
  for (std::size_t i = 0; i < s.size(); ++i) ASSERT_DOUBLE_EQ(f[i], s[i] / 2) << i;

  double mean_log = 0;
  for (double x : s) mean_log += std::log(x) / static_cast<double>(s.size());
  double var_log = 0;
  for (double x : s) var_log += std::pow(std::log(x) - mean_log, 2) / (s.size() - 1.0);
  EXPECT_NEAR(std::sqrt(var_log), 0.5, 0.5 * 0.03);
  std::nth_element(s.begin(), s.begin() + 10000, s.end());
  EXPECT_NEAR(s[10000], 4.0, 4.0 * 0.03);
}

TEST(Fleet, ParetoNeverBelowScaleAndHasTheRightMean) {
  DeviceProfileSpec p;
  p.task_time.kind = TaskTime::Kind::pareto;
  p.task_time.scale_seconds = 2.0;
  p.task_time.shape = 3.0;
  DeviceEmulator d(p, 1, 9);
  auto v = times(d, 20000);
  EXPECT_GE(*std::min_element(v.begin(), v.end()), 2.0);
  double mean = 0;
  for (double x : v) mean += x / static_cast<double>(v.size());
  EXPECT_NEAR(mean, 3.0 * 2.0 / 2.0, 3.0 * 0.05);
}

TEST(Fleet, MeasuredTimeIsDividedBySpeed) {
  DeviceProfileSpec p;
  p.compute_speed = 4;
  DeviceEmulator d(p, 0, 1);
  EXPECT_DOUBLE_EQ(d.plan_task(10.0).compute_seconds, 2.5);
  EXPECT_DOUBLE_EQ(d.plan_task(3.0).compute_seconds, 0.75);
}

TEST(Fleet, DropoutRateAndItDoesNotShiftTaskTimes) {
  auto with_drops = lognormal(1.0, 1.0);
  with_drops.dropout = 0.1;
  DeviceEmulator a(with_drops, 3, 5);
  DeviceEmulator b(lognormal(1.0, 1.0), 3, 5);
  int drops = 0;
  for (int i = 0; i < 20000; ++i) {
    auto pa = a.plan_task(1.0);
    auto pb = b.plan_task(1.0);
    ASSERT_EQ(pa.compute_seconds, pb.compute_seconds) << i;
    EXPECT_FALSE(pb.drops);
    if (pa.drops) {
      ++drops;
      EXPECT_GE(pa.drop_after_seconds, 0);
      EXPECT_LE(pa.drop_after_seconds, pa.compute_seconds);
    }
  }
  EXPECT_NEAR(drops / 20000.0, 0.1, 0.01);
}

TEST(Fleet, SameSeedAndClientRepeatOtherClientsDiffer) {
  DeviceEmulator a(lognormal(1, 1), 5, 77);
  DeviceEmulator b(lognormal(1, 1), 5, 77);
  DeviceEmulator c(lognormal(1, 1), 6, 77);
  DeviceEmulator d(lognormal(1, 1), 5, 78);
  auto va = times(a, 100);
  EXPECT_EQ(va, times(b, 100));
  EXPECT_NE(va, times(c, 100));
  EXPECT_NE(va, times(d, 100));
}

TEST(Fleet, LinkTimes) {
  DeviceProfileSpec p;
  p.link.up_bytes_per_second = 1 << 20;
  p.link.up_latency_seconds = 0.05;
  p.link.down_latency_seconds = 0.2;
  DeviceEmulator d(p, 0, 0);
  EXPECT_DOUBLE_EQ(d.upload_seconds(1 << 20), 1.05);
  EXPECT_DOUBLE_EQ(d.download_seconds(1ULL << 40), 0.2);
}

TEST(Fleet, StochasticAvailabilityOnlineFraction) {
  DeviceProfileSpec p;
  p.availability = 0.75;
  p.mean_session_seconds = 10;
  DeviceEmulator d(p, 2, 11);
  const double horizon = 1e6;
  double online = 0;
  int changes = 0;
  for (double t = 0; t < horizon; ++changes) {
    double next = d.next_change_after(t);
    ASSERT_GT(next, t);
    if (d.online_at(t)) online += std::min(next, horizon) - t;
    t = next;
  }
  EXPECT_NEAR(online / horizon, 0.75, 0.03);
  EXPECT_GT(changes, 100000);  // about 2 * 1e6 / (10 + 3.33)

  // Going back in time replays the same timeline.
  bool at_500 = d.online_at(500.5);
  DeviceEmulator fresh(p, 2, 11);
  EXPECT_EQ(fresh.online_at(500.5), at_500);
  EXPECT_EQ(fresh.next_change_after(500.5), d.next_change_after(500.5));
}

TEST(Fleet, FullAvailabilityIsAlwaysOnline) {
  DeviceProfileSpec p;
  p.mean_session_seconds = 10;
  DeviceEmulator d(p, 0, 0);
  for (double t : {0.0, 1.0, 1e9}) {
    EXPECT_TRUE(d.online_at(t));
    EXPECT_TRUE(std::isinf(d.next_change_after(t)));
  }
}

TEST(Fleet, TaskTimeTraceCyclesAndFallsBackByModulo) {
  DeviceProfileSpec p;
  p.task_time.kind = TaskTime::Kind::trace;
  p.task_time.trace_file = write_file("times.csv",
                                      "# measured on the lab's phones\n"
                                      "client,seconds\n"
                                      "10, 1.5\n"
                                      "20,4\n"
                                      "\n"
                                      "10,2.5\n");
  p.compute_speed = 2;
  auto traces = Traces::load({p});
  ASSERT_TRUE(traces) << traces.error().message;
  DeviceEmulator named(p, 10, 0, *traces);
  EXPECT_EQ(times(named, 5), (std::vector<double>{0.75, 1.25, 0.75, 1.25, 0.75}));
  // Distinct clients sorted: [10, 20]; 7 % 2 = 1 -> client 20's rows, 4 % 2 = 0 -> client 10's.
  DeviceEmulator odd(p, 7, 0, *traces);
  EXPECT_EQ(times(odd, 2), (std::vector<double>{2.0, 2.0}));
  DeviceEmulator even(p, 4, 0, *traces);
  EXPECT_EQ(times(even, 2), (std::vector<double>{0.75, 1.25}));
  EXPECT_THROW(DeviceEmulator(p, 0, 0), Failure);  // trace not loaded
}

TEST(Fleet, AvailabilityTraceWindows) {
  DeviceProfileSpec p;
  p.availability_trace = write_file("online.csv",
                                    "client,online,offline\n"
                                    "1,100,200\n"
                                    "1,0,10\n"
                                    "1,200,250\n");  // touches the one before: one window
  auto traces = Traces::load({p});
  ASSERT_TRUE(traces) << traces.error().message;
  DeviceEmulator d(p, 1, 0, *traces);
  EXPECT_TRUE(d.online_at(0));
  EXPECT_EQ(d.next_change_after(0), 10);
  EXPECT_FALSE(d.online_at(10));
  EXPECT_EQ(d.next_change_after(10), 100);
  EXPECT_TRUE(d.online_at(150));
  EXPECT_EQ(d.next_change_after(150), 250);
  EXPECT_FALSE(d.online_at(250));
  EXPECT_TRUE(std::isinf(d.next_change_after(250)));
  EXPECT_TRUE(d.online_at(5));  // back in time
  // A client the file does not name keeps the profile's (here: full) availability.
  DeviceEmulator other(p, 2, 0, *traces);
  EXPECT_TRUE(other.online_at(50));
  auto unloaded = p;
  unloaded.availability_trace += ".other";
  EXPECT_THROW(DeviceEmulator(unloaded, 1, 0, *traces), Failure);
}

TEST(Fleet, DeviceTraceGivesEachClientItsSpeedAndLinks) {
  DeviceProfileSpec p = lognormal(4.0, 0.0);  // every task: exactly 4 s at speed 1
  p.compute_speed = 1.0;
  p.link.up_latency_seconds = 0.5;
  p.device_trace = write_file("devices.csv",
                              "# client,speed,bytes/s up,bytes/s down\n"
                              "client,compute-speed,up-bandwidth,down-bandwidth\n"
                              "7,2.0,1000,0\n"
                              "3,0.5,0,4000\n");
  auto traces = Traces::load({p});
  ASSERT_TRUE(traces) << traces.error().message;
  DeviceEmulator fast(p, 7, 1, *traces);
  EXPECT_DOUBLE_EQ(fast.compute_speed(), 2.0);
  EXPECT_DOUBLE_EQ(fast.plan_task(0).compute_seconds, 2.0);
  EXPECT_DOUBLE_EQ(fast.upload_seconds(3000), 0.5 + 3.0) << "latency from the profile, bandwidth from the trace";
  EXPECT_DOUBLE_EQ(fast.download_seconds(1 << 20), 0.0) << "0 = unlimited";
  DeviceEmulator slow(p, 3, 1, *traces);
  EXPECT_DOUBLE_EQ(slow.plan_task(0).compute_seconds, 8.0);
  EXPECT_DOUBLE_EQ(slow.download_seconds(8000), 2.0);
  // Client 10 is not named: the rows sorted by id are (3, 7), and 10 mod 2 = 0 picks client 3's.
  DeviceEmulator unnamed(p, 10, 1, *traces);
  EXPECT_DOUBLE_EQ(unnamed.compute_speed(), 0.5);

  Traces t;
  auto bad = t.load_devices(write_file("bad.csv", "client,compute-speed,up-bandwidth,down-bandwidth\n1,0,1,1\n"));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("bad.csv:2: compute-speed must be > 0"), std::string::npos)
      << bad.error().message;
  bad = t.load_devices(write_file("twice.csv", "client,compute-speed,up-bandwidth,down-bandwidth\n1,1,1,1\n1,2,1,1\n"));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("twice.csv:3: client 1 named twice"), std::string::npos)
      << bad.error().message;
  auto unloaded = p;
  unloaded.device_trace += ".other";
  EXPECT_THROW(DeviceEmulator(unloaded, 1, 0, *traces), Failure);
}

TEST(Fleet, EmulatorsAreSmallAndShareTheirProfile) {
  // A simulator keeps one per client of a fleet of millions.
  EXPECT_LE(sizeof(DeviceEmulator), 160U);
  auto profile = std::make_shared<const DeviceProfileSpec>(lognormal(1.0, 1.0));
  DeviceEmulator a(profile, 1, 9);
  DeviceEmulator b(profile, 1, 9);
  EXPECT_EQ(&a.profile(), &b.profile());
  EXPECT_EQ(times(a, 50), times(b, 50));
}

TEST(Fleet, MalformedTracesNameFileAndLine) {
  auto has = [](const Error& e, const std::string& part) {
    return e.message.find(part) != std::string::npos;
  };
  auto e = task_trace_error("client,seconds\n1,2\n1,abc\n");
  EXPECT_TRUE(has(e, "bad.csv:3:") && has(e, "bad number 'abc'")) << e.message;
  e = task_trace_error("# note\nclient,seconds\n1,-2\n");
  EXPECT_TRUE(has(e, ":3:") && has(e, "negative duration")) << e.message;
  e = task_trace_error("1,2\n");
  EXPECT_TRUE(has(e, ":1:") && has(e, "header 'client,seconds'")) << e.message;
  e = task_trace_error("client,seconds\n1,2,3\n");
  EXPECT_TRUE(has(e, ":2:") && has(e, "2 fields")) << e.message;
  e = task_trace_error("client,seconds\n-1,2\n");
  EXPECT_TRUE(has(e, ":2:") && has(e, "client id")) << e.message;
  e = task_trace_error("# nothing\n");
  EXPECT_TRUE(has(e, "missing header")) << e.message;
  e = availability_trace_error("client,online,offline\n1,5,5\n");
  EXPECT_TRUE(has(e, ":2:") && has(e, "not after online")) << e.message;
  e = availability_trace_error("client,online,offline\n1,50,60\n2,0,100\n1,0,55\n");
  EXPECT_TRUE(has(e, ":4:") && has(e, "overlaps the one on line 2")) << e.message;

  Traces t;
  auto missing = t.load_task_times("/nonexistent/flotilla/times.csv");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::io);
  EXPECT_TRUE(has(missing.error(), "/nonexistent/flotilla/times.csv")) << missing.error().message;

  auto huge = write_file("huge.csv", "client,seconds\n");
  std::filesystem::resize_file(huge, (64U << 20U) + 1);  // sparse: costs no disk
  auto big = t.load_task_times(huge);
  ASSERT_FALSE(big);
  EXPECT_TRUE(has(big.error(), "64 MiB")) << big.error().message;
  std::filesystem::remove(huge);
}

TEST(Fleet, ValidationNamesProfileAndKey) {
  using K = TaskTime::Kind;
  struct Case {
    K kind;
    void (*edit)(DeviceProfileSpec&);
    const char* expected;
  };
  const std::vector<Case> cases{
      {K::measured, [](auto& p) { p.compute_speed = -1; }, "compute-speed must be > 0, got -1"},
      {K::measured, [](auto& p) { p.availability = 0; }, "availability"},
      {K::measured, [](auto& p) { p.availability = 1.5; }, "availability"},
      {K::measured, [](auto& p) { p.availability = 0.5; }, "mean-session"},
      {K::measured, [](auto& p) { p.mean_session_seconds = std::nan(""); }, "mean-session"},
      {K::measured, [](auto& p) { p.dropout = 1; }, "dropout"},
      {K::measured, [](auto& p) { p.link.up_bytes_per_second = -5; }, "up-bandwidth"},
      {K::measured, [](auto& p) { p.link.down_latency_seconds = -1; }, "down-latency"},
      {K::lognormal, [](auto& p) { p.task_time.median_seconds = 0; }, "task-median"},
      {K::lognormal, [](auto& p) { p.task_time.sigma = -1; }, "task-sigma"},
      {K::pareto, [](auto& p) { p.task_time.scale_seconds = 0; }, "task-scale"},
      {K::pareto, [](auto& p) { p.task_time.shape = 0; }, "task-shape"},
      {K::trace, [](auto& p) { p.task_time.trace_file.clear(); }, "task-trace"},
  };
  DeviceProfileSpec good;
  good.name = "phones";
  EXPECT_TRUE(validate(good));
  for (const auto& c : cases) {
    auto bad = good;
    bad.task_time.kind = c.kind;
    c.edit(bad);
    auto message = validation_message(bad);
    EXPECT_EQ(message.rfind("fleet profile 'phones': ", 0), 0U) << message;
    EXPECT_NE(message.find(c.expected), std::string::npos) << message;
  }
  auto bad = good;
  cases.front().edit(bad);
  EXPECT_THROW(DeviceEmulator(bad, 0, 0), Failure);
}

TEST(Fleet, ClientNamedByTwoProfilesIsAnError) {
  DeviceProfileSpec phones;
  phones.name = "phones";
  phones.clients = {1, 2, 3};
  DeviceProfileSpec laptops;
  laptops.name = "laptops";
  laptops.clients = {4, 3};
  auto r = validate_fleet({phones, laptops});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("client 3"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("'phones'"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("'laptops'"), std::string::npos) << r.error().message;
  laptops.clients = {4};
  EXPECT_TRUE(validate_fleet({phones, laptops}));
}

TEST(Fleet, ProfileForPicksListedThenCatchAllThenDefault) {
  DeviceProfileSpec phones;
  phones.name = "phones";
  phones.clients = {1};
  DeviceProfileSpec rest;
  rest.name = "rest";
  std::vector<DeviceProfileSpec> both{phones, rest};
  EXPECT_EQ(profile_for(both, 1).name, "phones");
  EXPECT_EQ(&profile_for(both, 9), &both[1]);
  std::vector<DeviceProfileSpec> only_phones{phones};
  EXPECT_EQ(profile_for(only_phones, 9).name, "default");
  EXPECT_DOUBLE_EQ(profile_for(only_phones, 9).compute_speed, 1.0);
}

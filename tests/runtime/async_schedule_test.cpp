#include "runtime/server/async_schedule.hpp"

#include "runtime/plugin_host/fedavg.hpp"
#include "runtime/plugin_host/plugin_aggregation.hpp"
#include "runtime/server/sync_rounds.hpp"

#include "schedule_testing.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

TensorList model_of(float value, std::int64_t n = 3) { return {{"w", torch::full({n}, value)}}; }

using flotilla::testing::Fleet;
using flotilla::testing::sent;

ScheduleOptions async_options(ScheduleKind kind, std::uint32_t clients) {
  ScheduleOptions o;
  o.kind = kind;
  o.min_clients = clients;
  o.versions = 1000;
  o.registration_timeout = 60s;
  o.peer_timeout = 1h;
  o.task_deadline = 30s;
  o.seed = 7;
  o.staleness.kind = Staleness::Kind::constant;
  o.alpha = 1.0;
  o.buffer_size = clients;
  return o;
}

}  // namespace

TEST(AsyncSchedule, AMethodThatThrowsWhileMakingAVersionFailsThatVersionNotTheRun) {
  auto o = async_options(ScheduleKind::async, 2);
  Fleet f(o, model_of(0), 2, std::make_unique<flotilla::testing::BrokenAggregation>(model_of(0), 0, 1));
  ASSERT_EQ(f.tasks.size(), 2U);
  ASSERT_NO_THROW(f.answer("client-0", model_of(1)));
  EXPECT_EQ(f.schedule->model_version(), 0U) << "the model stays as it was";
  EXPECT_EQ(f.schedule->counters().rounds_failed, 1U);
  EXPECT_EQ(f.tasks.size(), 2U) << "client-0 gets new work";
  f.answer("client-1", model_of(1));
  EXPECT_EQ(f.schedule->model_version(), 1U) << "the next update makes a version";
}

/// Buffered (deltas): an outlier delta is clipped to the bound, accepted and counted; under
/// "reject" it would be refused. The model moves by the clipped delta only.
TEST(AsyncSchedule, BufferedClipsAnOutlierDeltaToTheBound) {
  auto o = async_options(ScheduleKind::buffered, 1);
  o.buffer_size = 1;
  o.validation.norm = ValidationOptions::Norm::clip;
  o.validation.norm_factor = 5;
  o.validation.norm_min_samples = 5;
  Fleet f(o, model_of(0, 4), 1);
  // Five deltas of norm 2 (each element 1): the median is 2, the bound 10.
  for (int i = 0; i < 5; ++i) f.answer("client-0", model_of(1, 4));
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({4}, 5.0F)));
  f.answer("client-0", model_of(50, 4));  // norm 100: clipped to 10, each element 5
  EXPECT_EQ(f.schedule->counters().updates_clipped, 1U);
  EXPECT_EQ(f.schedule->counters().updates_accepted, 6U);
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({4}, 10.0F)))
      << f.schedule->model()[0].tensor;
}

TEST(AsyncSchedule, AsyncRefusesAnOutlierUnderReject) {
  auto o = async_options(ScheduleKind::async, 1);
  o.validation.norm = ValidationOptions::Norm::reject;
  o.validation.norm_min_samples = 5;
  Fleet f(o, model_of(0, 4), 1);
  for (int i = 1; i <= 5; ++i) f.answer("client-0", model_of(static_cast<float>(i), 4));
  const auto before = f.schedule->model()[0].tensor.clone();
  f.answer("client-0", model_of(1000, 4));
  EXPECT_EQ(f.schedule->counters().rejected(RejectReason::outlier), 1U);
  EXPECT_TRUE(torch::equal(f.schedule->model()[0].tensor, before)) << "refused, not mixed in";
  EXPECT_EQ(f.tasks.size(), 1U) << "the client gets new work";
}

TEST(Staleness, FunctionsMatchHandComputedValues) {
  Staleness constant{Staleness::Kind::constant};
  EXPECT_DOUBLE_EQ(constant(0), 1.0);
  EXPECT_DOUBLE_EQ(constant(50), 1.0);
  Staleness poly{Staleness::Kind::polynomial, 0.5};
  EXPECT_DOUBLE_EQ(poly(0), 1.0);
  EXPECT_DOUBLE_EQ(poly(3), 0.5);        // (1+3)^-0.5
  EXPECT_DOUBLE_EQ(poly(8), 1.0 / 3.0);  // 9^-0.5
  Staleness poly1{Staleness::Kind::polynomial, 1.0};
  EXPECT_DOUBLE_EQ(poly1(4), 0.2);
  Staleness hinge{Staleness::Kind::hinge, 10, 4};
  EXPECT_DOUBLE_EQ(hinge(0), 1.0);
  EXPECT_DOUBLE_EQ(hinge(4), 1.0);
  EXPECT_DOUBLE_EQ(hinge(5), 1.0 / 11.0);  // 1/(10·1+1)
  EXPECT_DOUBLE_EQ(hinge(6), 1.0 / 21.0);
  EXPECT_FALSE(Staleness({Staleness::Kind::polynomial, -1}).validate("aggregator.staleness"));
}

TEST(AsyncSchedule, AlphaOneAndNoStalenessReplacesTheModel) {
  Fleet f(async_options(ScheduleKind::async, 2), model_of(0), 2);
  ASSERT_EQ(f.tasks.size(), 2U) << "every client trains at once";
  const auto update = torch::tensor({1.5F, -2.25F, 3.0F});
  f.answer("client-0", {{"w", update}});
  EXPECT_EQ(f.schedule->model_version(), 1U);
  EXPECT_TRUE(torch::equal(f.schedule->model()[0].tensor, update)) << "w <- w_client";
  EXPECT_TRUE(f.tasks.contains("client-0")) << "a client gets new work as soon as it returns";
  EXPECT_EQ(f.tasks.at("client-0").model_version, 1U);
}

TEST(AsyncSchedule, MixesByAlphaTimesStaleness) {
  auto o = async_options(ScheduleKind::async, 2);
  o.alpha = 0.5;
  o.staleness = {Staleness::Kind::polynomial, 1.0};
  Fleet f(o, model_of(0), 2);
  f.answer("client-0", {{"w", torch::full({3}, 4.0F)}});  // τ = 0: factor 0.5 -> 2
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({3}, 2.0F)));
  f.answer("client-1", {{"w", torch::full({3}, 10.0F)}});  // τ = 1: factor 0.5·(1/2) -> 2 + 0.25·8
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({3}, 4.0F)));
  auto records = f.schedule->take_completed();
  ASSERT_EQ(records.size(), 2U);
  EXPECT_EQ(records[1].staleness_max, 1U);
  EXPECT_EQ(records[1].model_version, 2U);
  EXPECT_EQ(records[1].round, 2U) << "an async record's round is its version's index";
}

TEST(AsyncSchedule, BufferedWithKEqualNEqualsOneSyncFedAvgRoundBitForBit) {
  // Client weights and example counts of one round; the sync round folds the weights, the
  // buffer folds the deltas against the model they trained from (here the zero model, so the
  // deltas carry exactly the same numbers: the same inputs for both).
  torch::manual_seed(3);
  const int n = 5;
  std::vector<torch::Tensor> weights;
  for (int i = 0; i < n; ++i) weights.push_back(torch::randn({257}));
  const TensorList initial = {{"w", torch::zeros({257})}};

  auto so = async_options(ScheduleKind::sync, n);
  so.rounds = 1;
  Fleet sync(so, initial, n);
  auto bo = async_options(ScheduleKind::buffered, n);
  bo.buffer_size = n;
  bo.server_learning_rate = 1.0;
  Fleet buffered(bo, initial, n);
  for (int i = 0; i < n; ++i) {
    ASSERT_FALSE(sync.tasks.at(Fleet::peer(i)).send_delta);
    ASSERT_TRUE(buffered.tasks.at(Fleet::peer(i)).send_delta) << "FedBuff clients send deltas";
    sync.answer(Fleet::peer(i), {{"w", weights[i]}}, 100 + 37 * i);
    buffered.answer(Fleet::peer(i), {{"w", weights[i] - initial[0].tensor}}, 100 + 37 * i);
  }
  ASSERT_EQ(sync.schedule->model_version(), 1U);
  ASSERT_EQ(buffered.schedule->model_version(), 1U);
  EXPECT_TRUE(torch::equal(sync.schedule->model()[0].tensor, buffered.schedule->model()[0].tensor));
}

TEST(AsyncSchedule, BufferedAppliesTheMeanDeltaWithTheServerLearningRate) {
  auto o = async_options(ScheduleKind::buffered, 2);
  o.buffer_size = 2;
  o.server_learning_rate = 0.5;
  Fleet f(o, model_of(1), 2);
  f.answer("client-0", {{"w", torch::full({3}, 2.0F)}}, 100);
  EXPECT_EQ(f.schedule->model_version(), 0U) << "waits for K deltas";
  f.answer("client-1", {{"w", torch::full({3}, 6.0F)}}, 300);
  // mean delta (100·2 + 300·6)/400 = 5; w = 1 + 0.5·5
  EXPECT_EQ(f.schedule->model_version(), 1U);
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({3}, 3.5F)));
}

TEST(AsyncSchedule, MaxStalenessDropsExactlyTheStaleDeltas) {
  auto o = async_options(ScheduleKind::buffered, 4);
  o.buffer_size = 1;
  o.max_staleness = 1;
  Fleet f(o, model_of(0), 4);
  // All four trained from version 0. Versions 1 and 2 come from client-0 and client-1; then
  // client-2 (τ = 2) is stale, and client-3 too; client-0's next delta (from version 1, τ = 1)
  // is not.
  f.answer("client-0", {{"w", torch::ones({3})}});
  f.answer("client-1", {{"w", torch::ones({3})}});
  ASSERT_EQ(f.schedule->model_version(), 2U);
  f.answer("client-2", {{"w", torch::full({3}, 100.0F)}});
  f.answer("client-3", {{"w", torch::full({3}, 100.0F)}});
  EXPECT_EQ(f.schedule->model_version(), 2U);
  EXPECT_EQ(f.schedule->counters().rejected(RejectReason::stale), 2U);
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({3}, 2.0F))) << "stale leaked";
  EXPECT_EQ(f.tasks.at("client-0").model_version, 1U);
  f.answer("client-0", {{"w", torch::ones({3})}});
  EXPECT_EQ(f.schedule->model_version(), 3U) << "τ = 2 - 1 = 1 is within max-staleness";
  EXPECT_EQ(f.schedule->counters().rejected(RejectReason::stale), 2U);
  auto records = f.schedule->take_completed();
  std::uint32_t stale = 0;
  for (const auto& r : records) stale += r.stale;
  EXPECT_EQ(stale, 2U) << "the records count what the counters count";
}

TEST(AsyncSchedule, ADropoutNeverStallsTheBuffer) {
  auto o = async_options(ScheduleKind::buffered, 3);
  o.buffer_size = 2;
  o.max_concurrency = 2;
  Fleet f(o, model_of(0), 3);
  ASSERT_EQ(f.tasks.size(), 2U) << "max-concurrency 2";
  std::string dropout = f.tasks.begin()->first, other = std::next(f.tasks.begin())->first;
  f.clock.advance(20s);
  f.answer(other, {{"w", torch::ones({3})}});
  // `dropout` never answers. Its task is given up on at the deadline and its slot reassigned.
  f.clock.advance(11s);
  f.take(f.schedule->on_tick());
  EXPECT_EQ(f.schedule->counters().tasks_lost, 1U);
  int answered = 0;
  while (f.schedule->model_version() == 0 && answered < 10) {
    auto it = std::find_if(f.tasks.begin(), f.tasks.end(), [&](auto& t) { return t.first != dropout; });
    ASSERT_NE(it, f.tasks.end()) << "the live clients must get work";
    f.answer(it->first, {{"w", torch::ones({3})}});
    ++answered;
  }
  EXPECT_EQ(f.schedule->model_version(), 1U);
  // Its late update, when it finally comes, is counted and dropped.
  Update late;
  late.round = 1;
  late.is_delta = true;
  late.tensors = {{"w", torch::full({3}, 99.0F)}};
  f.take(f.schedule->on_update(dropout, late));
  EXPECT_GE(f.schedule->counters().updates_late + f.schedule->counters().updates_rejected, 1U);
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::ones({3})));
}

TEST(AsyncSchedule, AClientThatLostItsTaskGetsNoMoreUntilItIsHeardFrom) {
  // A killed (or unplugged) device would lose every task it is given, a deadline each.
  auto o = async_options(ScheduleKind::async, 3);
  o.max_concurrency = 2;
  Fleet f(o, model_of(0), 3);
  ASSERT_EQ(f.tasks.size(), 2U);
  std::set<std::string> silent;
  for (const auto& [p, t] : f.tasks) silent.insert(p);
  f.tasks.clear();
  f.clock.advance(31s);
  f.take(f.schedule->on_tick());
  EXPECT_EQ(f.schedule->counters().tasks_lost, 2U);
  ASSERT_EQ(f.tasks.size(), 1U) << "only the client that never held a task gets work";
  EXPECT_FALSE(silent.contains(f.tasks.begin()->first));
  // One of the silent ones turns out to be alive: its heartbeat brings it back, with work.
  const std::string back = *silent.begin();
  f.take(f.schedule->on_heartbeat(back, Heartbeat{}));
  EXPECT_TRUE(f.tasks.contains(back));
  // The other's late update is refused but brings it back too (no free slot: no task yet).
  const std::string late = *std::next(silent.begin());
  Update u;
  u.round = 1;
  u.tensors = model_of(5);
  f.take(f.schedule->on_update(late, u));
  EXPECT_EQ(f.schedule->counters().updates_late, 1U);
  f.answer(back, model_of(1));
  EXPECT_TRUE(f.tasks.contains(back) || f.tasks.contains(late))
      << "the freed slot goes to a live client again";
}

TEST(AsyncSchedule, ManyTasksLostAtOnceAreCountedAgainstTheFleetThereWas) {
  // 20 clients, all training (max-concurrency 0); 16 go silent. Setting them aside must not
  // shrink the give-up limit (3 x the clients) below the 16 lost at once while 4 still answer.
  auto o = async_options(ScheduleKind::async, 20);
  o.max_concurrency = 0;
  Fleet f(o, model_of(0), 20);
  ASSERT_EQ(f.tasks.size(), 20U);
  f.clock.advance(29s);
  for (int i = 0; i < 4; ++i) f.answer(Fleet::peer(i), model_of(1));
  for (int i = 4; i < 20; ++i) f.tasks.erase(Fleet::peer(i));
  f.clock.advance(2s);
  f.take(f.schedule->on_tick());
  EXPECT_EQ(f.schedule->counters().tasks_lost, 16U);
  EXPECT_FALSE(f.schedule->done()) << f.schedule->failure();
  EXPECT_EQ(f.schedule->live_clients(), 4U);
}

TEST(AsyncSchedule, ATickThatEndsTheRunHandsOutNoMoreWork) {
  auto o = async_options(ScheduleKind::async, 3);
  o.max_concurrency = 2;
  o.max_time = 30s;
  Fleet f(o, model_of(0), 3);
  ASSERT_EQ(f.tasks.size(), 2U);
  f.tasks.clear();
  f.clock.advance(31s);  // both tasks lost, and max-time reached, in the same tick
  const auto out = f.schedule->on_tick();
  EXPECT_TRUE(sent<Task>(out).empty()) << "no task for the idle client once the run is ending";
}

TEST(AsyncSchedule, AClientThatRegistersAgainGetsWorkAtOnce) {
  // Its process was restarted: the task it held died with the old one.
  auto o = async_options(ScheduleKind::async, 1);
  Fleet f(o, model_of(0), 1);
  ASSERT_EQ(f.tasks.size(), 1U);
  const auto first = f.tasks.at("client-0").round;
  f.tasks.clear();
  f.clock.advance(2s);
  f.take(f.schedule->on_hello("client-0", Hello{Role::client, 0, {}, 100}));
  ASSERT_TRUE(f.tasks.contains("client-0")) << "no waiting for the old task's deadline";
  EXPECT_GT(f.tasks.at("client-0").round, first);
  EXPECT_EQ(f.schedule->counters().tasks_lost, 1U);
  f.answer("client-0", model_of(3));
  EXPECT_EQ(f.schedule->model_version(), 1U);
}

TEST(AsyncSchedule, WeightsAreRefusedUnderBufferedAndDeltasUnderAsync) {
  Fleet f(async_options(ScheduleKind::buffered, 1), model_of(0), 1);
  Task t = f.tasks.at("client-0");
  Update u;
  u.round = t.round;
  u.tensors = model_of(1);
  u.is_delta = false;
  f.take(f.schedule->on_update("client-0", u));
  ASSERT_FALSE(f.errors.empty());
  EXPECT_NE(f.errors.back().find("takes deltas"), std::string::npos) << f.errors.back();
  EXPECT_EQ(f.schedule->counters().rejected(RejectReason::invalid), 1U);
  EXPECT_EQ(f.tasks.size(), 1U) << "the client got new work";
}

TEST(AsyncSchedule, EndsAfterTheConfiguredVersionsAndShutsEveryoneDown) {
  auto o = async_options(ScheduleKind::async, 2);
  o.versions = 3;
  Fleet f(o, model_of(0), 2);
  std::vector<Send> last;
  for (int i = 0; i < 3; ++i) {
    const std::string p = f.tasks.begin()->first;
    const Task t = f.tasks.at(p);
    f.tasks.erase(p);
    Update u;
    u.round = t.round;
    u.base_model_version = t.model_version;
    u.num_examples = 10;
    u.tensors = model_of(float(i));
    last = f.schedule->on_update(p, u);
    f.take(last);
  }
  EXPECT_TRUE(f.schedule->done());
  EXPECT_EQ(f.schedule->model_version(), 3U);
  EXPECT_EQ(sent<Shutdown>(last).size(), 2U);
}

TEST(AsyncSchedule, EvaluatesEveryNVersionsAndTheLast) {
  auto o = async_options(ScheduleKind::async, 1);
  o.versions = 5;
  o.evaluate_every = 2;
  ManualClock clock;
  AsyncSchedule s(o, model_of(0), std::make_unique<FedAvg>(model_of(0)), clock, "run");
  std::vector<std::uint64_t> evaluated;
  auto collect = [&](const std::vector<Send>& out) {
    for (auto& [p, r] : sent<EvaluationRequest>(out)) evaluated.push_back(r.model_version);
  };
  collect(s.on_hello("evaluator", Hello{Role::evaluator, 0, {}, 0}));
  auto out = s.on_hello("client-0", Hello{Role::client, 0, {}, 10});
  for (int i = 0; i < 5; ++i) {
    auto task = sent<Task>(out).at(0).second;
    Update u;
    u.round = task.round;
    u.base_model_version = task.model_version;
    u.num_examples = 10;
    u.tensors = model_of(1);
    out = s.on_update("client-0", u);
    collect(out);
    if (s.done()) break;
    if (sent<Task>(out).empty()) break;
  }
  EXPECT_EQ(evaluated, (std::vector<std::uint64_t>{0, 2, 4, 5}));
}

namespace {
/// A method that declares what the robust rules or a server optimizer declare.
class Declaring final : public Aggregation {
 public:
  explicit Declaring(AggregationTraits t) : traits_(t), inner_(model_of(0)) {}
  Expected<void> check(const WeightedUpdate& u) const override { return inner_.check(u); }
  Expected<void> accept(const WeightedUpdate& u) override { return inner_.accept(u); }
  Expected<void> accept_batch(std::span<const WeightedUpdate> u) override { return inner_.accept_batch(u); }
  std::size_t accepted() const override { return inner_.accepted(); }
  TensorList finalize() override { return inner_.finalize(); }
  void discard() override { inner_.discard(); }
  AggregationTraits traits() const override { return traits_; }
  std::string describe() const override { return "declaring"; }

 private:
  AggregationTraits traits_;
  FedAvg inner_;
};
}  // namespace

TEST(AsyncSchedule, RefusesWhatTheMethodDeclaresItCannotDo) {
  auto async = async_options(ScheduleKind::async, 2);
  auto buffered = async_options(ScheduleKind::buffered, 2);
  const Declaring cohort({true, false}), tracks({false, true}), plain({});
  auto refused = AsyncSchedule::supports(async, cohort);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("buffered"), std::string::npos) << refused.error().message;
  EXPECT_TRUE(AsyncSchedule::supports(buffered, cohort));
  EXPECT_FALSE(AsyncSchedule::supports(async, tracks));
  EXPECT_TRUE(AsyncSchedule::supports(buffered, tracks)) << "FedBuff + FedAdam, eta_g = 1";
  buffered.server_learning_rate = 0.5;
  EXPECT_FALSE(AsyncSchedule::supports(buffered, tracks));
  EXPECT_TRUE(AsyncSchedule::supports(async, plain));
  // A method that writes into the base weights from a cohort (FedEx-LoRA, FLoRA): sync only.
  AggregationTraits base;
  base.writes_base = true;
  base.tracks_global = true;
  buffered.server_learning_rate = 1.0;
  refused = AsyncSchedule::supports(buffered, Declaring(base));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("use schedule = \"sync\""), std::string::npos) << refused.error().message;
}

TEST(SyncRounds, OverSelectionClosesAtTheFirstKAndCountsTheRestLate) {
  auto o = async_options(ScheduleKind::sync, 6);
  o.rounds = 2;
  o.clients_per_round = 3;
  o.over_selection = 0.5;  // sample ceil(4.5) = 5
  Fleet f(o, model_of(0), 6);
  ASSERT_EQ(f.tasks.size(), 5U);
  std::vector<std::string> sampled;
  for (auto& [p, _] : f.tasks) sampled.push_back(p);
  const auto leftover = f.tasks;
  for (int i = 0; i < 3; ++i) f.answer(sampled[i], model_of(float(i)));
  EXPECT_EQ(f.schedule->model_version(), 1U) << "closed at K = 3 updates";
  // One of the two others answers round 1 after it closed.
  Update late;
  late.round = 1;
  late.base_model_version = 0;
  late.num_examples = 100;
  late.tensors = model_of(50);
  f.take(f.schedule->on_update(sampled[3], late));
  EXPECT_EQ(f.schedule->counters().updates_late, 1U);
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({3}, 1.0F)));
  auto records = f.schedule->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].sampled, 5U);
  EXPECT_EQ(records[0].updates, 3U);
  EXPECT_EQ(records[0].late, 2U) << "both over-selected clients had not answered at the close";
}

TEST(Schedule, EventsCarryWhatTheRecordsShow) {
  Fleet f(async_options(ScheduleKind::async, 2), model_of(0), 2);
  f.answer("client-0", model_of(1));
  Update bad;
  bad.round = 99;
  bad.tensors = model_of(1);
  f.take(f.schedule->on_update("client-1", bad));
  auto events = f.schedule->take_events();
  int joined = 0, tasks = 0, accepted = 0, rejected = 0, versions = 0;
  for (const auto& e : events) {
    joined += std::holds_alternative<ClientJoined>(e.body);
    tasks += std::holds_alternative<TaskSent>(e.body);
    accepted += std::holds_alternative<UpdateAccepted>(e.body);
    versions += std::holds_alternative<VersionProduced>(e.body);
    if (const auto* r = std::get_if<UpdateRejected>(&e.body)) {
      ++rejected;
      EXPECT_EQ(r->reason, RejectReason::not_sampled);
    }
  }
  EXPECT_EQ(joined, 2);
  EXPECT_EQ(tasks, 3);
  EXPECT_EQ(accepted, 1);
  EXPECT_EQ(rejected, 1);
  EXPECT_EQ(versions, 1);
  EXPECT_TRUE(f.schedule->take_events().empty()) << "each event is taken once";
  EXPECT_EQ(f.schedule->counters().updates_accepted, 1U);
  EXPECT_EQ(f.schedule->counters().rejected(RejectReason::not_sampled), 1U);
}

TEST(Schedule, PeersSetAsideAreToldTheRunIsOver) {
  auto o = async_options(ScheduleKind::async, 2);
  o.versions = 1;
  o.peer_timeout = 5s;
  o.max_concurrency = 1;
  Fleet f(o, model_of(0), 2);
  ASSERT_EQ(f.tasks.size(), 1U);
  const std::string busy = f.tasks.begin()->first;
  const std::string idle = busy == "client-0" ? "client-1" : "client-0";
  // The idle device goes offline (no heartbeats) and is set aside; the busy one trains on.
  f.clock.advance(6s);
  f.take(f.schedule->on_tick());
  ASSERT_EQ(f.schedule->live_clients(), 1U);
  const Task t = f.tasks.at(busy);
  Update u;
  u.round = t.round;
  u.base_model_version = t.model_version;
  u.num_examples = 10;
  u.tensors = model_of(1);
  auto out = f.schedule->on_update(busy, u);
  ASSERT_TRUE(f.schedule->done());
  std::set<std::string> told;
  for (auto& [p, _] : sent<Shutdown>(out)) told.insert(p);
  EXPECT_TRUE(told.contains(idle)) << "an offline device must learn the run is over when it is back";
  EXPECT_TRUE(told.contains(busy));
}

TEST(AsyncSchedule, BufferedRefusesClientsThatCannotSendDeltas) {
  auto o = async_options(ScheduleKind::buffered, 1);
  ManualClock clock;
  AsyncSchedule s(o, model_of(0), std::make_unique<FedAvg>(model_of(0)), clock, "run");
  auto out = s.on_hello("client-0", Hello{Role::client, 0, {}, 10}, /*protocol_minor=*/1);
  auto errors = sent<ErrorReply>(out);
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_EQ(errors[0].second.code, WireErrc::protocol_version);
  EXPECT_NE(errors[0].second.message.find("1.2"), std::string::npos) << errors[0].second.message;
  EXPECT_EQ(s.live_clients(), 0U);
}

TEST(AsyncSchedule, ARunWhereNothingComesBackFailsInsteadOfRunningForEver) {
  auto o = async_options(ScheduleKind::async, 2);
  o.task_deadline = 1s;
  Fleet f(o, model_of(0), 2);
  for (int i = 0; i < 20 && !f.schedule->done(); ++i) {
    f.clock.advance(1s);
    f.take(f.schedule->on_tick());
    for (const auto& p : {"client-0", "client-1"}) (void)f.schedule->on_heartbeat(p, Heartbeat{});
  }
  ASSERT_TRUE(f.schedule->done());
  EXPECT_NE(f.schedule->failure().find("tasks in a row brought no update"), std::string::npos)
      << f.schedule->failure();
}

TEST(AsyncSchedule, HotReloadWaitsForTheBufferAndLosesNoDelta) {
  // scaled-mean v1 averages, v2 doubles the average (tests/plugins/fixtures/scaled_mean.cpp).
  const std::string dir = std::string(FLOTILLA_BINARY_DIR) + "/test-plugins/";
  auto v1 = PluginLibrary::open(dir + "scaled-mean-v1.so", c10::Device(c10::kCPU));
  auto v2 = PluginLibrary::open(dir + "scaled-mean-v2.so", c10::Device(c10::kCPU));
  ASSERT_TRUE(v1) << v1.error().message;
  ASSERT_TRUE(v2) << v2.error().message;
  auto method = PluginAggregation::create(*v1, {}, model_of(1));
  ASSERT_TRUE(method) << method.error().message;
  auto o = async_options(ScheduleKind::buffered, 2);
  o.buffer_size = 2;
  Fleet f(o, model_of(1), 2, std::move(method).value());
  f.answer("client-0", {{"w", torch::full({3}, 2.0F)}});
  f.schedule->request_reload(*v2, "test");
  EXPECT_TRUE(f.schedule->reload_pending()) << "a delta is buffered: the switch must wait";
  f.answer("client-1", {{"w", torch::full({3}, 4.0F)}});
  // v1 applied the whole buffer: 1 + mean(2, 4) = 4; then the switch happened.
  ASSERT_EQ(f.schedule->model_version(), 1U);
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({3}, 4.0F)));
  EXPECT_FALSE(f.schedule->reload_pending());
  EXPECT_EQ(f.schedule->counters().plugin_reloads, 1U);
  f.answer("client-0", {{"w", torch::full({3}, 1.0F)}});
  f.answer("client-1", {{"w", torch::full({3}, 1.0F)}});
  EXPECT_TRUE(torch::allclose(f.schedule->model()[0].tensor, torch::full({3}, 10.0F)))
      << "v2 doubles the mean of the rebased deltas (4 + 1) after the switch";
}

namespace {
/// Picks the lowest ids first and halves the learning rate of odd clients.
class Ordered final : public Selection {
 public:
  std::vector<std::string> pick(const std::vector<std::string>& candidates, std::size_t n,
                                std::mt19937_64&) const override {
    auto c = candidates;
    std::sort(c.begin(), c.end());
    c.resize(std::min(n, c.size()));
    return c;
  }
  TrainingConfig configure(std::uint32_t id, std::uint64_t task, const TrainingConfig& base,
                           std::uint64_t seed) const override {
    auto t = Selection::configure(id, task, base, seed);
    if (id % 2 == 1) t.learning_rate = base.learning_rate / 2;
    return t;
  }
};
}  // namespace

TEST(Schedule, TheSelectionPolicyPicksClientsAndConfiguresTheirTasks) {
  for (auto kind : {ScheduleKind::sync, ScheduleKind::async}) {
    auto o = async_options(kind, 4);
    o.clients_per_round = 2;
    o.max_concurrency = 2;
    o.training.learning_rate = 0.1F;
    o.selection = std::make_shared<Ordered>();
    Fleet f(o, model_of(0), 4);
    ASSERT_EQ(f.tasks.size(), 2U) << to_string(kind);
    EXPECT_TRUE(f.tasks.contains("client-0") && f.tasks.contains("client-1")) << to_string(kind);
    EXPECT_FLOAT_EQ(f.tasks.at("client-0").config.learning_rate, 0.1F);
    EXPECT_FLOAT_EQ(f.tasks.at("client-1").config.learning_rate, 0.05F);
    EXPECT_NE(f.tasks.at("client-0").config.seed, f.tasks.at("client-1").config.seed);
  }
}

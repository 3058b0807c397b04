#include "runtime/server/sync_rounds.hpp"

#include "runtime/base/log.hpp"
#include "runtime/plugin_host/fedavg.hpp"

#include "schedule_testing.hpp"

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <torch/torch.h>

#include <algorithm>
#include <limits>

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

TensorList model_of(float value) { return {{"w", torch::full({3}, value)}}; }

using flotilla::testing::sent;

struct Fixture {
  explicit Fixture(SyncOptions o, std::unique_ptr<Aggregation> method = nullptr) : options(o) {
    if (!method) method = std::make_unique<FedAvg>(model_of(0));
    rounds = std::make_unique<SyncRounds>(o, model_of(0), std::move(method), clock, "run-1");
  }
  std::vector<Send> register_clients(int n, int first = 0) {
    std::vector<Send> all;
    for (int i = first; i < first + n; ++i) {
      auto out = rounds->on_hello("client-" + std::to_string(i), Hello{Role::client, std::uint32_t(i), {}, 100});
      all.insert(all.end(), out.begin(), out.end());
    }
    return all;
  }
  std::vector<Send> update(const std::string& peer, float value, std::uint64_t examples = 100,
                           std::optional<std::uint64_t> round = std::nullopt) {
    Update u;
    u.round = round.value_or(rounds->round());
    u.base_model_version = rounds->model_version();
    u.num_examples = examples;
    u.metrics = {{"loss", 1.0}, {"accuracy", 0.5}};
    u.tensors = model_of(value);
    return rounds->on_update(peer, u);
  }
  SyncOptions options;
  ManualClock clock;
  std::unique_ptr<SyncRounds> rounds;
};

SyncOptions options(std::uint32_t n_rounds = 3, std::uint32_t k = 0, std::uint32_t min_updates = 1,
                    std::uint32_t min_clients = 3) {
  SyncOptions o;
  o.rounds = n_rounds;
  o.clients_per_round = k;
  o.min_updates = min_updates;
  o.min_clients = min_clients;
  o.round_deadline = 10s;
  o.registration_timeout = 60s;
  o.peer_timeout = 1h;
  o.seed = 42;
  return o;
}

}  // namespace

TEST(SyncRounds, WaitsForMinClientsThenSendsTasksWithTheModelVersion) {
  Fixture f(options(3, 0, 1, 3));
  auto out = f.register_clients(2);
  EXPECT_EQ(sent<Welcome>(out).size(), 2U);
  EXPECT_TRUE(sent<Task>(out).empty());
  out = f.register_clients(1, 2);
  auto tasks = sent<Task>(out);
  ASSERT_EQ(tasks.size(), 3U);
  for (const auto& [peer, task] : tasks) {
    EXPECT_EQ(task.round, 1U);
    EXPECT_EQ(task.model_version, 0U);
    ASSERT_EQ(task.tensors.size(), 1U);
  }
}

TEST(SyncRounds, SamplesKOfNDeterministicallyAndVariesAcrossRounds) {
  auto sampled_sets = [] {
    Fixture f(options(4, 3, 1, 10));
    std::vector<std::set<std::string>> sets;
    auto out = f.register_clients(10);
    for (int r = 0; r < 4; ++r) {
      std::set<std::string> s;
      for (const auto& [peer, task] : sent<Task>(out)) s.insert(peer);
      EXPECT_EQ(s.size(), 3U);
      sets.push_back(s);
      out.clear();
      for (const auto& peer : s) {
        auto o = f.update(peer, 1);
        out.insert(out.end(), o.begin(), o.end());
      }
    }
    return sets;
  };
  auto a = sampled_sets(), b = sampled_sets();
  EXPECT_EQ(a, b) << "same seed, same sample";
  EXPECT_FALSE(a[0] == a[1] && a[1] == a[2] && a[2] == a[3]) << "samples never change";
}

TEST(SyncRounds, FullRoundProducesTheWeightedMeanAndANewVersion) {
  Fixture f(options(2));
  f.register_clients(3);
  (void)f.update("client-0", 1, 100);
  (void)f.update("client-1", 2, 100);
  EXPECT_EQ(f.rounds->model_version(), 0U) << "must wait for all sampled clients";
  auto out = f.update("client-2", 4, 200);
  EXPECT_EQ(f.rounds->model_version(), 1U);
  EXPECT_TRUE(torch::allclose(f.rounds->model()[0].tensor, torch::full({3}, 2.75F)));
  auto tasks = sent<Task>(out);
  ASSERT_EQ(tasks.size(), 3U) << "round 2 starts at once";
  EXPECT_EQ(tasks[0].second.model_version, 1U);
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].round, 1U);
  EXPECT_EQ(records[0].updates, 3U);
  EXPECT_FALSE(records[0].eval_accuracy.has_value()) << "no evaluator registered";
}

TEST(SyncRounds, EvaluatorGetsEachVersionAndRecordsWaitForIt) {
  Fixture f(options(1));
  auto out = f.rounds->on_hello("evaluator-0", Hello{Role::evaluator, 0, {}, 0});
  auto initial = sent<EvaluationRequest>(out);
  ASSERT_EQ(initial.size(), 1U) << "the initial model is evaluated too";
  EXPECT_EQ(initial[0].second.model_version, 0U);
  f.register_clients(3);
  (void)f.update("client-0", 1);
  (void)f.update("client-1", 1);
  out = f.update("client-2", 1);
  auto requests = sent<EvaluationRequest>(out);
  ASSERT_EQ(requests.size(), 1U);
  EXPECT_EQ(requests[0].first, "evaluator-0");
  EXPECT_EQ(requests[0].second.model_version, 1U);
  EXPECT_TRUE(f.rounds->take_completed().empty()) << "round 0 and 1 still wait for evaluations";
  EXPECT_FALSE(f.rounds->done());

  (void)f.rounds->on_evaluation("evaluator-0", EvaluationResult{0, 0, 10, 2.3, 0.1, {}});
  out = f.rounds->on_evaluation("evaluator-0", EvaluationResult{1, 1, 10, 0.5, 0.8, {}});
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 2U);
  EXPECT_EQ(records[0].round, 0U);
  EXPECT_DOUBLE_EQ(*records[1].eval_accuracy, 0.8);
  EXPECT_TRUE(f.rounds->done());
  EXPECT_EQ(sent<Shutdown>(out).size(), 4U) << "every peer is told the run is over";
}

TEST(SyncRounds, OnlyARegisteredEvaluatorsResultsAreTaken) {
  // A stranger or a client that sends an evaluation must not score the model: taken, a result
  // of 99 % would end a run at run.target-accuracy and stand in rounds.csv as its accuracy.
  auto o = options(1);
  o.target_accuracy = 0.9;
  Fixture f(o);
  (void)f.rounds->on_hello("evaluator-0", Hello{Role::evaluator, 0, {}, 0});
  f.register_clients(3);
  for (int c = 0; c < 3; ++c) (void)f.update("client-" + std::to_string(c), 1);
  const EvaluationResult forged{1, 1, 10, 0.01, 0.99, {}};
  auto out = f.rounds->on_evaluation("stranger", forged);
  ASSERT_EQ(sent<ErrorReply>(out).size(), 1U);
  EXPECT_EQ(sent<ErrorReply>(out)[0].second.code, WireErrc::not_registered);
  out = f.rounds->on_evaluation("client-0", forged);
  ASSERT_EQ(sent<ErrorReply>(out).size(), 1U);
  EXPECT_EQ(sent<ErrorReply>(out)[0].second.code, WireErrc::rejected);
  EXPECT_EQ(f.rounds->counters().messages_malformed, 2U);
  EXPECT_TRUE(f.rounds->take_completed().empty()) << "the rounds still wait for the evaluator";

  (void)f.rounds->on_evaluation("evaluator-0", EvaluationResult{0, 0, 10, 2.3, 0.1, {}});
  (void)f.rounds->on_evaluation("evaluator-0", EvaluationResult{1, 1, 10, 0.5, 0.8, {}});
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 2U);
  EXPECT_DOUBLE_EQ(*records[1].eval_accuracy, 0.8);
}

TEST(SyncRounds, DeadlineClosesWithEnoughUpdatesAndLateOnesAreCountedAndDropped) {
  Fixture f(options(2, 0, 2));
  f.register_clients(3);
  (void)f.update("client-0", 1);
  (void)f.update("client-1", 3);
  f.clock.advance(9s);
  EXPECT_TRUE(sent<Task>(f.rounds->on_tick()).empty());
  f.clock.advance(2s);
  auto out = f.rounds->on_tick();
  EXPECT_EQ(f.rounds->model_version(), 1U);
  EXPECT_TRUE(torch::allclose(f.rounds->model()[0].tensor, torch::full({3}, 2.0F)));
  EXPECT_EQ(sent<Task>(out).size(), 2U) << "client-2 missed the deadline: set aside";

  out = f.update("client-2", 100, 100, 1);  // for round 1, which is over
  EXPECT_EQ(sent<Task>(out).size(), 1U) << "heard from again: it joins round 2";
  auto errors = sent<ErrorReply>(out);
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_NE(errors[0].second.message.find("round 1 is over"), std::string::npos);
  EXPECT_EQ(f.rounds->counters().updates_late, 1U);
  EXPECT_TRUE(torch::allclose(f.rounds->model()[0].tensor, torch::full({3}, 2.0F))) << "late update leaked";
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].updates, 2U);
}

/// The aggregator takes the records as soon as they are complete (at once without an
/// evaluator): a round's late count must be in its record by then, the last round's too.
TEST(SyncRounds, LateCountsAreInTheRecordsAsTheActorTakesThemWithoutAnEvaluator) {
  Fixture f(options(2, 0, 2));
  f.register_clients(3);
  std::vector<RoundRecord> records;
  auto take = [&] {
    auto more = f.rounds->take_completed();
    records.insert(records.end(), more.begin(), more.end());
  };
  (void)f.update("client-0", 1);
  (void)f.update("client-1", 3);
  f.clock.advance(11s);
  (void)f.rounds->on_tick();  // round 1 closes without client-2
  take();
  ASSERT_EQ(records.size(), 1U);
  (void)f.update("client-2", 100, 100, 1);  // its round-1 update comes during round 2
  (void)f.update("client-0", 1);
  (void)f.update("client-2", 1);
  f.clock.advance(11s);
  (void)f.rounds->on_tick();  // the last round closes without client-1
  take();
  ASSERT_TRUE(f.rounds->done());
  ASSERT_EQ(records.size(), 2U);
  EXPECT_EQ(records[0].updates, 2U);
  EXPECT_EQ(records[0].late, 1U) << "round 1 closed without client-2's update";
  EXPECT_EQ(records[1].updates, 2U);
  EXPECT_EQ(records[1].late, 1U) << "the last round closed without client-1's; none of round 1's";
  EXPECT_EQ(f.rounds->counters().updates_late, 1U) << "the one late update that arrived";
}

/// A client's FedAvg weight is what it claims: a claim above aggregator.max-examples must not
/// let it outweigh the others.
TEST(SyncRounds, ClaimedExamplesAreCappedAtMaxExamples) {
  auto o = options(1, 0, 3);
  o.max_examples = 50;
  Fixture f(o);
  f.register_clients(3);
  (void)f.update("client-0", 0, 100);                    // capped: 50
  (void)f.update("client-1", 30, 1'000'000'000'000ULL);  // capped: 50 (not a trillion)
  (void)f.update("client-2", 60, 20);                    // as claimed: 20
  ASSERT_EQ(f.rounds->model_version(), 1U);
  const float expected = (0 * 50 + 30 * 50 + 60 * 20) / 120.0F;
  EXPECT_TRUE(torch::allclose(f.rounds->model()[0].tensor, torch::full({3}, expected)))
      << f.rounds->model()[0].tensor;
  EXPECT_EQ(f.rounds->counters().weights_capped, 2U);
}

/// A NaN in one client's update must never be averaged into the model.
TEST(SyncRounds, AnUpdateWithANaNIsRefusedNotAveragedIn) {
  Fixture f(options(2, 0, 2));
  f.register_clients(3);
  (void)f.update("client-0", 1);
  (void)f.update("client-1", 3);
  auto out = f.update("client-2", std::numeric_limits<float>::quiet_NaN());
  ASSERT_EQ(sent<ErrorReply>(out).size(), 1U);
  EXPECT_NE(sent<ErrorReply>(out)[0].second.message.find("NaN"), std::string::npos);
  EXPECT_EQ(f.rounds->counters().rejected(RejectReason::not_finite), 1U);
  f.clock.advance(11s);
  (void)f.rounds->on_tick();
  ASSERT_EQ(f.rounds->model_version(), 1U);
  EXPECT_TRUE(torch::allclose(f.rounds->model()[0].tensor, torch::full({3}, 2.0F)))
      << f.rounds->model()[0].tensor;
}

/// After an aggregator restart its peers are strangers to it: whatever they send (heartbeats
/// queued while it was down, an update, messages of the old run) tells them to register again.
TEST(SyncRounds, PeersOfAnAggregatorThisOneReplacedAreToldToRegister) {
  Fixture f(options(2, 0, 1, 1));
  auto told = [](const std::vector<Send>& out) {
    const auto errors = sent<ErrorReply>(out);
    return errors.size() == 1 && errors[0].second.code == WireErrc::not_registered;
  };
  EXPECT_TRUE(told(f.rounds->on_heartbeat("client-9", Heartbeat{}, true)));
  EXPECT_TRUE(told(f.update("client-9", 1, 100, 7)));
  EXPECT_TRUE(told(f.rounds->on_other_run("client-9", "old-run")));
  EXPECT_EQ(f.rounds->counters().messages_malformed, 1U) << "the other run's message is counted";
  f.register_clients(1);
  // A registered peer sending another run's messages is refused, not re-registered.
  EXPECT_EQ(sent<ErrorReply>(f.rounds->on_other_run("client-0", "old-run"))[0].second.code,
            WireErrc::malformed);
  // Heartbeats of 1.4 peers are answered with the aggregator's version; older ones are not.
  const auto acked = sent<Heartbeat>(f.rounds->on_heartbeat("client-0", Heartbeat{}, true));
  ASSERT_EQ(acked.size(), 1U);
  EXPECT_EQ(acked[0].first, "client-0");
  EXPECT_TRUE(sent<Heartbeat>(f.rounds->on_heartbeat("client-0", Heartbeat{}, false)).empty());
}

/// A client killed mid-task: the round closes by its deadline, and the next round does not
/// sample it again (it would wait out its whole deadline for it too), even before the peer
/// timeout has passed; it comes back when it is heard from.
TEST(SyncRounds, AClientThatMissedTheDeadlineIsNotSampledAgainUntilHeardFrom) {
  auto o = options(3, 0, 2, 3);
  o.peer_timeout = 1h;  // the silence rule alone would not catch it
  Fixture f(o);
  f.register_clients(3);
  (void)f.update("client-0", 1);
  (void)f.update("client-1", 1);
  f.clock.advance(11s);
  auto tasks = sent<Task>(f.rounds->on_tick());
  ASSERT_EQ(f.rounds->round(), 2U);
  ASSERT_EQ(tasks.size(), 2U);
  for (const auto& [peer, task] : tasks) EXPECT_NE(peer, "client-2");
  // Its heartbeat brings it back, into the open round (it samples every live client).
  tasks = sent<Task>(f.rounds->on_heartbeat("client-2", Heartbeat{}));
  ASSERT_EQ(tasks.size(), 1U);
  EXPECT_EQ(tasks[0].second.round, 2U);
}

/// A client whose process restarted while holding the open round's task gets it again, at
/// once; a new client joins an open round that samples every live client, not one that is full.
TEST(SyncRounds, ARestartedOrNewClientGetsWorkInTheOpenRoundIfItCanUseIt) {
  Fixture f(options(2, 0, 1, 2));
  f.register_clients(2);
  ASSERT_EQ(f.rounds->round(), 1U);
  auto again = sent<Task>(f.rounds->on_hello("client-1", Hello{Role::client, 1, {}, 100}));
  ASSERT_EQ(again.size(), 1U) << "its task went with the old process";
  EXPECT_EQ(again[0].second.round, 1U);
  auto joined = sent<Task>(f.rounds->on_hello("client-2", Hello{Role::client, 2, {}, 100}));
  ASSERT_EQ(joined.size(), 1U);
  EXPECT_EQ(joined[0].second.round, 1U);
  (void)f.update("client-0", 1);
  (void)f.update("client-1", 2);
  EXPECT_EQ(f.rounds->model_version(), 0U) << "the round waits for the client that joined";
  (void)f.update("client-2", 3);
  EXPECT_EQ(f.rounds->model_version(), 1U);
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].sampled, 3U);
  EXPECT_EQ(records[0].updates, 3U);

  Fixture k(options(2, 2, 1, 3));  // K = 2 of 3
  k.register_clients(3);
  EXPECT_TRUE(sent<Task>(k.rounds->on_hello("client-3", Hello{Role::client, 3, {}, 100})).empty())
      << "the round has the K it wanted";
}

TEST(SyncRounds, ANewPeerBeyondMaxClientsIsRefusedAKnownOneMayRegisterAgain) {
  auto o = options(2, 0, 1, 1);
  o.max_clients = 2;
  Fixture f(o);
  f.register_clients(2);
  auto out = f.rounds->on_hello("client-9", Hello{Role::client, 9, {}, 100});
  ASSERT_EQ(sent<ErrorReply>(out).size(), 1U);
  EXPECT_NE(sent<ErrorReply>(out)[0].second.message.find("the federation is full"), std::string::npos);
  EXPECT_TRUE(sent<Welcome>(out).empty());
  EXPECT_EQ(f.rounds->live_clients(), 2U);
  EXPECT_EQ(sent<Welcome>(f.rounds->on_hello("client-1", Hello{Role::client, 1, {}, 100})).size(), 1U);
}

/// Review findings: with K > 0 a round that started with fewer than K (everyone had missed the
/// last deadline) takes clients as they come back; a client whose update was refused answered
/// its task and is not set aside as silent.
TEST(SyncRounds, ARoundShortOfKTakesClientsBackAndARefusedAnswerIsNotSilence) {
  auto o = options(3, 2, 1, 2);
  o.peer_timeout = 1h;
  Fixture f(o);
  f.register_clients(2);
  f.clock.advance(11s);
  auto out = f.rounds->on_tick();  // both missed round 1: set aside; round 2 has nobody
  EXPECT_TRUE(sent<Task>(out).empty());
  ASSERT_EQ(f.rounds->round(), 2U);
  auto back = sent<Task>(f.rounds->on_heartbeat("client-0", Heartbeat{}));
  ASSERT_EQ(back.size(), 1U) << "round 2 wanted K = 2 and has none";
  back = sent<Task>(f.rounds->on_heartbeat("client-1", Heartbeat{}));
  ASSERT_EQ(back.size(), 1U);
  (void)f.update("client-0", std::numeric_limits<float>::quiet_NaN());  // refused, but an answer
  f.clock.advance(11s);
  out = f.rounds->on_tick();
  auto next = sent<Task>(out);
  ASSERT_EQ(next.size(), 1U) << "client-0 answered (badly); client-1 did not";
  EXPECT_EQ(next[0].first, "client-0");
}

TEST(SyncRounds, RoundWithTooFewUpdatesFailsAndKeepsTheModel) {
  Fixture f(options(3, 0, 2));
  f.register_clients(3);
  (void)f.update("client-0", 5);
  f.clock.advance(11s);
  auto out = f.rounds->on_tick();
  EXPECT_EQ(f.rounds->model_version(), 0U);
  EXPECT_TRUE(torch::allclose(f.rounds->model()[0].tensor, torch::zeros({3})));
  EXPECT_EQ(f.rounds->counters().rounds_failed, 1U);
  EXPECT_EQ(sent<Task>(out).size(), 1U) << "the next round starts, without the two that missed it";
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_TRUE(records[0].failed);
}

TEST(SyncRounds, AMethodThatThrowsWhileMakingAVersionFailsThatVersionNotTheRun) {
  // finalize throws a plain std::exception (as a device copy's c10::Error does) in round 1.
  Fixture f(options(3, 0, 1), std::make_unique<flotilla::testing::BrokenAggregation>(model_of(0), 0, 1));
  f.register_clients(3);
  (void)f.update("client-0", 5);
  (void)f.update("client-1", 5);
  std::vector<Send> out;
  ASSERT_NO_THROW(out = f.update("client-2", 5)) << "the last update closes the round";
  EXPECT_EQ(f.rounds->model_version(), 0U) << "the model stays as it was";
  EXPECT_EQ(f.rounds->counters().rounds_failed, 1U);
  EXPECT_EQ(sent<Task>(out).size(), 3U) << "the next round starts";
  const auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_TRUE(records[0].failed);
  bool named = false;
  for (const auto& e : f.rounds->take_events()) {
    if (const auto* v = std::get_if<VersionFailed>(&e.body)) {
      named = v->why.find("device copy failed") != std::string::npos;
    }
  }
  EXPECT_TRUE(named) << "the version fails with the method's message";
  for (int i = 0; i < 3; ++i) (void)f.update("client-" + std::to_string(i), 7);
  EXPECT_EQ(f.rounds->model_version(), 1U) << "round 2 produces a version";
}

TEST(SyncRounds, BadUpdatesAreRejectedAndAcceptedOnesSurvive) {
  Fixture f(options(1, 2, 1, 3));
  auto out = f.register_clients(3);
  std::set<std::string> sampled;
  for (const auto& [peer, _] : sent<Task>(out)) sampled.insert(peer);
  std::string outsider;
  for (int i = 0; i < 3; ++i) {
    if (!sampled.contains("client-" + std::to_string(i))) outsider = "client-" + std::to_string(i);
  }
  const std::string first = *sampled.begin(), second = *sampled.rbegin();
  (void)f.update(first, 2);
  EXPECT_EQ(sent<ErrorReply>(f.update(outsider, 50)).size(), 1U) << "not sampled";
  EXPECT_EQ(sent<ErrorReply>(f.update(first, 50)).size(), 1U) << "duplicate";
  Update wrong;
  wrong.round = 1;
  wrong.num_examples = 10;
  wrong.tensors = {{"w", torch::ones({4})}};
  out = f.rounds->on_update(second, wrong);
  ASSERT_EQ(sent<ErrorReply>(out).size(), 1U);
  EXPECT_NE(sent<ErrorReply>(out)[0].second.message.find("shape"), std::string::npos);
  Update stale;
  stale.round = 1;
  stale.base_model_version = 7;
  stale.num_examples = 10;
  stale.tensors = model_of(50);
  EXPECT_EQ(sent<ErrorReply>(f.rounds->on_update(second, stale)).size(), 1U);
  EXPECT_EQ(sent<ErrorReply>(f.rounds->on_bad_message(second, Error{Errc::malformed, "garbage"})).size(), 1U);
  EXPECT_EQ(f.rounds->counters().updates_rejected, 4U);
  EXPECT_EQ(f.rounds->counters().messages_malformed, 1U);

  (void)f.update(second, 4);  // the rejected ones did not count as its reply
  EXPECT_EQ(f.rounds->model_version(), 1U);
  EXPECT_TRUE(torch::allclose(f.rounds->model()[0].tensor, torch::full({3}, 3.0F)));
}

TEST(SyncRounds, AFloodOfGarbageIsAnsweredAndCountedButWarnedAboutAtMostEvery5s) {
  // A hostile peer sends garbage as fast as the network carries it (the soak: 70,000 messages
  // in 10 minutes, each once a warning line): every one is answered and counted, but the log
  // says it at most every 5 s, with how many it held back.
  Fixture f(options(3, 0, 1, 1));
  auto warnings = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(100);
  warnings->set_level(spdlog::level::warn);
  auto log = logger("aggregator");
  log->sinks().push_back(warnings);
  std::size_t answered = 0;
  for (int i = 0; i < 1000; ++i) {
    answered += sent<ErrorReply>(f.rounds->on_bad_message("hostile-" + std::to_string(i),
                                                          Error{Errc::malformed, "garbage"})).size();
    if (i == 499) f.clock.advance(4s);
  }
  f.clock.advance(1s);  // 5 s after the first one said
  answered += sent<ErrorReply>(f.rounds->on_bad_message("hostile-x", Error{Errc::malformed, "junk"})).size();
  log->sinks().pop_back();
  EXPECT_EQ(answered, 1001U);
  EXPECT_EQ(f.rounds->counters().messages_malformed, 1001U);
  const auto said = warnings->last_formatted();
  ASSERT_EQ(said.size(), 2U);
  EXPECT_NE(said[0].find("dropped a message from hostile-0: garbage"), std::string::npos) << said[0];
  EXPECT_EQ(said[0].find("more since"), std::string::npos) << said[0];
  EXPECT_NE(said[1].find("dropped a message from hostile-x: junk (and 999 more since the last one said)"),
            std::string::npos) << said[1];
}

TEST(SyncRounds, RegistrationTimeoutWithTooFewClientsFailsTheRunWithAReason) {
  Fixture f(options(3, 0, 2, 5));
  f.register_clients(1);
  f.clock.advance(61s);
  auto out = f.rounds->on_tick();
  EXPECT_TRUE(f.rounds->done());
  EXPECT_NE(f.rounds->failure().find("only 1 of 5 clients registered"), std::string::npos)
      << f.rounds->failure();
  EXPECT_EQ(sent<Shutdown>(out).size(), 1U);
}

TEST(SyncRounds, RegistrationTimeoutWithEnoughForMinUpdatesStartsAnyway) {
  Fixture f(options(3, 0, 2, 5));
  f.register_clients(2);
  f.clock.advance(61s);
  EXPECT_EQ(sent<Task>(f.rounds->on_tick()).size(), 2U);
  EXPECT_FALSE(f.rounds->done());
}

TEST(SyncRounds, RunsTheConfiguredRoundsThenShutsEveryoneDown) {
  Fixture f(options(3));
  f.register_clients(3);
  std::vector<Send> out;
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) out = f.update("client-" + std::to_string(c), float(r));
  }
  EXPECT_TRUE(f.rounds->done());
  EXPECT_EQ(f.rounds->model_version(), 3U);
  EXPECT_EQ(sent<Shutdown>(out).size(), 3U);
  EXPECT_EQ(f.rounds->take_completed().size(), 3U);
  auto after = f.update("client-0", 1, 100, 3);
  EXPECT_EQ(f.rounds->model_version(), 3U);
}

TEST(SyncRounds, StopsOnceTheTargetAccuracyIsReached) {
  auto o = options(50);
  o.target_accuracy = 0.7;
  Fixture f(o);
  (void)f.rounds->on_hello("evaluator-0", Hello{Role::evaluator, 0, {}, 0});
  (void)f.rounds->on_evaluation("evaluator-0", EvaluationResult{0, 0, 10, 2.3, 0.1, {}});
  f.register_clients(3);
  for (int c = 0; c < 3; ++c) (void)f.update("client-" + std::to_string(c), 1);
  (void)f.rounds->on_evaluation("evaluator-0", EvaluationResult{1, 1, 10, 0.4, 0.75, {}});
  std::vector<Send> out;
  for (int c = 0; c < 3; ++c) out = f.update("client-" + std::to_string(c), 1);  // round 2 finishes
  auto last = f.rounds->on_evaluation("evaluator-0", EvaluationResult{2, 2, 10, 0.4, 0.76, {}});
  EXPECT_TRUE(f.rounds->done());
  EXPECT_EQ(f.rounds->model_version(), 2U);
}

TEST(SyncRounds, AClientTrainingLongerThanThePeerTimeoutIsNotDropped) {
  auto o = options(3, 0, 2, 2);
  o.peer_timeout = 5s;
  o.round_deadline = 60s;
  Fixture f(o);
  f.register_clients(2);
  f.clock.advance(20s);  // both train for 20 s without a heartbeat
  (void)f.rounds->on_tick();
  EXPECT_EQ(f.rounds->live_clients(), 2U);
  (void)f.update("client-0", 1);
  auto out = f.update("client-1", 3);
  EXPECT_EQ(f.rounds->model_version(), 1U);
  EXPECT_EQ(sent<Task>(out).size(), 2U) << "both are sampled again";
}

TEST(SyncRounds, SilentPeersAreNotSampledAgain) {
  auto o = options(5, 0, 1, 2);
  o.peer_timeout = 5s;
  Fixture f(o);
  f.register_clients(2);
  f.clock.advance(3s);
  (void)f.rounds->on_heartbeat("client-0", Heartbeat{});
  (void)f.update("client-0", 1);
  f.clock.advance(3s);
  (void)f.rounds->on_tick();
  EXPECT_EQ(f.rounds->live_clients(), 2U) << "client-1 owes round 1 an update: it may be training";
  f.clock.advance(5s);
  (void)f.rounds->on_heartbeat("client-0", Heartbeat{});
  auto out = f.rounds->on_tick();  // deadline: round 1 closes with 1 update, client-1 silent 11 s
  EXPECT_EQ(f.rounds->live_clients(), 1U);
  auto tasks = sent<Task>(out);
  ASSERT_EQ(tasks.size(), 1U);
  EXPECT_EQ(tasks[0].first, "client-0");

  // client-1 was only slow: its heartbeat brings it back, into the open round.
  tasks = sent<Task>(f.rounds->on_heartbeat("client-1", Heartbeat{}));
  EXPECT_EQ(f.rounds->live_clients(), 2U);
  ASSERT_EQ(tasks.size(), 1U);
  EXPECT_EQ(tasks[0].second.round, 2U);
  (void)f.update("client-0", 1);
  out = f.update("client-1", 1);
  EXPECT_EQ(sent<Task>(out).size(), 2U) << "round 3 samples both";
}

namespace {

/// FedAvg whose per-client model gives client k a tensor "w" of k+1 elements filled with k
/// (shaped after the template it is handed), as a method with per-client ranks would.
class PerClient final : public Aggregation {
 public:
  explicit PerClient(const TensorList& global) : inner_(global) {}
  Expected<void> check(const WeightedUpdate& u) const override { return {}; }
  Expected<void> accept(const WeightedUpdate& u) override {
    client_ids.push_back(u.client_id);
    ++accepted_;
    return {};
  }
  Expected<void> accept_batch(std::span<const WeightedUpdate> us) override {
    for (const auto& u : us) (void)accept(u);
    return {};
  }
  std::size_t accepted() const override { return accepted_; }
  TensorList finalize() override {
    accepted_ = 0;
    return model_of(7);
  }
  void discard() override { accepted_ = 0; }
  std::optional<TensorList> client_model(std::uint32_t id, const TensorList& tmpl) override {
    templates.push_back(tmpl);
    return TensorList{{"w", torch::full(tmpl.at(0).tensor.sizes(), float(id))}};
  }
  std::string describe() const override { return "per-client test"; }
  std::vector<std::uint32_t> client_ids;
  std::vector<TensorList> templates;

 private:
  FedAvg inner_;
  std::size_t accepted_ = 0;
};

}  // namespace

TEST(SyncRounds, TasksCarryEachClientsOwnModelAndUpdatesTheirClientId) {
  auto o = options(2, 0, 1, 3);
  o.client_template = [](std::uint32_t id) {
    return TensorList{{"w", torch::empty({id + 1}, torch::TensorOptions().device(torch::kMeta))}};
  };
  ManualClock clock;
  auto agg = std::make_unique<PerClient>(model_of(0));
  auto* per_client = agg.get();
  SyncRounds rounds(o, model_of(0), std::move(agg), clock, "run-1");
  std::vector<Send> out;
  for (std::uint32_t i = 0; i < 3; ++i) {
    auto o2 = rounds.on_hello("client-" + std::to_string(i), Hello{Role::client, i, {}, 100});
    out.insert(out.end(), o2.begin(), o2.end());
  }
  auto tasks = sent<Task>(out);
  ASSERT_EQ(tasks.size(), 3U);
  for (const auto& [peer, task] : tasks) {
    const auto id = static_cast<std::uint32_t>(std::stoul(peer.substr(7)));
    ASSERT_EQ(task.tensors.size(), 1U);
    EXPECT_EQ(task.tensors[0].tensor.numel(), id + 1) << peer;
    EXPECT_TRUE(torch::equal(task.tensors[0].tensor, torch::full({id + 1}, float(id)))) << peer;
  }
  ASSERT_EQ(per_client->templates.size(), 3U);
  for (const auto& [peer, task] : tasks) {
    Update u;
    u.round = rounds.round();
    u.base_model_version = rounds.model_version();
    u.num_examples = 100;
    u.tensors = {{"w", torch::ones({1})}};
    (void)rounds.on_update(peer, u);
  }
  std::vector<std::uint32_t> ids = per_client->client_ids;
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::uint32_t>{0, 1, 2})) << "updates reach the method with their client id";
  auto records = rounds.take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].bytes_received, 3U * 4U);
  EXPECT_DOUBLE_EQ(records[0].bytes_per_client(), 4.0);
}

TEST(SyncRounds, UnderKeysAHelloMustClaimTheIdItsKeyIsFor) {
  ScheduleOptions o;
  o.min_clients = 1;
  o.ids_from_keys = true;
  o.registration_timeout = std::chrono::hours(1);
  const TensorList model{{"w", torch::zeros({2})}};
  ManualClock clock;
  SyncRounds rounds(o, model, std::make_unique<FedAvg>(model), clock, "run");
  // client-1's key claiming client 2's slot, or the evaluator's role: refused.
  auto as_other = rounds.on_hello("client-1", Hello{Role::client, 2, {}, 10});
  ASSERT_EQ(as_other.size(), 1u);
  ASSERT_TRUE(std::holds_alternative<ErrorReply>(as_other[0].payload));
  EXPECT_NE(std::get<ErrorReply>(as_other[0].payload).message.find("cannot register as client 2"),
            std::string::npos);
  auto as_evaluator = rounds.on_hello("client-1", Hello{Role::evaluator, 0, {}, 0});
  ASSERT_TRUE(std::holds_alternative<ErrorReply>(as_evaluator.at(0).payload));
  EXPECT_EQ(rounds.live_clients(), 0u);
  EXPECT_EQ(rounds.counters().messages_malformed, 2u);
  // Its own id: welcome, and the round starts.
  auto own = rounds.on_hello("client-1", Hello{Role::client, 1, {}, 10});
  ASSERT_TRUE(std::holds_alternative<Welcome>(own.at(0).payload));
  EXPECT_EQ(rounds.live_clients(), 1u);
  auto evaluator = rounds.on_hello("evaluator", Hello{Role::evaluator, 0, {}, 0});
  ASSERT_TRUE(std::holds_alternative<Welcome>(evaluator.at(0).payload));
}

namespace {

/// A method over a model {"base", "x.lora_A.weight", "x.lora_B.weight"} whose clients train the
/// adapters: each version adds one to A, and the second one also writes into the base (as
/// FedEx-LoRA or FLoRA do). B is left alone, as FedSA-LoRA leaves it.
class AdapterMethod final : public Aggregation {
 public:
  explicit AdapterMethod(TensorList global) : global_(std::move(global)) {}
  Expected<void> check(const WeightedUpdate&) const override { return {}; }
  Expected<void> accept(const WeightedUpdate&) override {
    ++accepted_;
    return {};
  }
  Expected<void> accept_batch(std::span<const WeightedUpdate> us) override {
    accepted_ += us.size();
    return {};
  }
  std::size_t accepted() const override { return accepted_; }
  TensorList finalize() override {
    accepted_ = 0;
    ++versions_;
    TensorList next = global_;  // shares what does not change, as the plugin host's overlay does
    next[1].tensor = global_[1].tensor + 1;
    if (versions_ == 2) next[0].tensor = global_[0].tensor + 1;
    global_ = next;
    return next;
  }
  void discard() override { accepted_ = 0; }
  std::string describe() const override { return "adapter test method"; }

 private:
  TensorList global_;
  std::size_t accepted_ = 0;
  int versions_ = 0;
};

std::vector<std::string> names_of(const TensorList& tensors) {
  std::vector<std::string> names;
  for (const auto& t : tensors) names.push_back(t.name);
  return names;
}

}  // namespace

TEST(SyncRounds, TasksCarryWhatClientsTrainAndWhatChangedNeverWhatTheyKeep) {
  const TensorList initial = {{"base", torch::zeros({4})},
                              {"x.lora_A.weight", torch::zeros({2})},
                              {"x.lora_B.weight", torch::zeros({2})}};
  auto o = options(3, 0, 1, 2);
  o.client_template = [](std::uint32_t) {
    const auto meta = torch::TensorOptions().device(torch::kMeta);
    return TensorList{{"x.lora_A.weight", torch::empty({2}, meta)},
                      {"x.lora_B.weight", torch::empty({2}, meta)}};
  };
  o.keep_local = {"x.lora_B.weight"};
  ManualClock clock;
  SyncRounds rounds(o, initial, std::make_unique<AdapterMethod>(initial), clock, "run-1");
  auto out = rounds.on_hello("evaluator-0", Hello{Role::evaluator, 0, {}, 0});
  auto evals = sent<EvaluationRequest>(out);
  ASSERT_EQ(evals.size(), 1U);
  EXPECT_TRUE(evals[0].second.tensors.empty()) << "the evaluator has the initial model already";
  (void)rounds.on_evaluation("evaluator-0", EvaluationResult{0, 0, 10, 2.3, 0.1, {}});
  for (std::uint32_t i = 0; i < 2; ++i) {
    auto o2 = rounds.on_hello("client-" + std::to_string(i), Hello{Role::client, i, {}, 100});
    out.insert(out.end(), o2.begin(), o2.end());
  }
  // Each round: what the tasks carried, and what the evaluator got for the version it made.
  struct Seen {
    std::vector<std::vector<std::string>> tasks;
    std::vector<std::string> keep_local;
    std::vector<std::string> evaluated;
  };
  auto play_round = [&]() {
    Seen seen;
    const auto tasks = sent<Task>(out);
    std::vector<Send> next;
    for (const auto& [peer, task] : tasks) {
      seen.tasks.push_back(names_of(task.tensors));
      seen.keep_local = task.keep_local;
      Update u;
      u.round = task.round;
      u.base_model_version = task.model_version;
      u.num_examples = 100;
      u.tensors = {{"x.lora_A.weight", torch::ones({2})}};
      auto o3 = rounds.on_update(peer, u);
      next.insert(next.end(), o3.begin(), o3.end());
    }
    for (const auto& [peer, request] : sent<EvaluationRequest>(next)) {
      seen.evaluated = names_of(request.tensors);
      auto o4 = rounds.on_evaluation(peer, EvaluationResult{request.round, request.model_version, 10, 1, 0.5, {}});
      next.insert(next.end(), o4.begin(), o4.end());
    }
    out = std::move(next);
    return seen;
  };
  const std::vector<std::string> a = {"x.lora_A.weight"}, base_a = {"base", "x.lora_A.weight"};
  // Round 1: what the clients train, less B (theirs); the unchanged base is not sent.
  auto r1 = play_round();
  EXPECT_EQ(r1.tasks, (std::vector<std::vector<std::string>>{a, a}));
  EXPECT_EQ(r1.keep_local, std::vector<std::string>{"x.lora_B.weight"});
  EXPECT_EQ(r1.evaluated, a) << "version 1 changed A only";
  // Round 2: the same; its version writes into the base.
  auto r2 = play_round();
  EXPECT_EQ(r2.tasks, (std::vector<std::vector<std::string>>{a, a}));
  EXPECT_EQ(r2.evaluated, base_a);
  // Round 3: the base changed, so it travels from now on.
  auto r3 = play_round();
  EXPECT_EQ(r3.tasks, (std::vector<std::vector<std::string>>{base_a, base_a}));
  EXPECT_TRUE(torch::equal(rounds.model()[2].tensor, torch::zeros({2}))) << "B was never aggregated";
}

TEST(SyncRounds, PeersThatExpectTheWholeModelAreToldToUpgrade) {
  // Protocol 1.5: evaluation requests carry what changed, and so do a LoRA run's tasks.
  Fixture f(options(1, 0, 1, 1));
  auto out = f.rounds->on_hello("evaluator-0", Hello{Role::evaluator, 0, {}, 0}, 4);
  auto errors = sent<ErrorReply>(out);
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_EQ(errors[0].second.code, WireErrc::protocol_version);
  EXPECT_NE(errors[0].second.message.find("need protocol 1.5 or later"), std::string::npos);
  // A client of a run where it trains the whole model still gets the whole model: welcome.
  out = f.rounds->on_hello("client-0", Hello{Role::client, 0, {}, 100}, 4);
  EXPECT_EQ(sent<Welcome>(out).size(), 1U);
  auto o = options(1, 0, 1, 1);
  o.client_template = [](std::uint32_t) { return model_of(0); };
  Fixture lora(o);
  out = lora.rounds->on_hello("client-0", Hello{Role::client, 0, {}, 100}, 4);
  ASSERT_EQ(sent<ErrorReply>(out).size(), 1U);
  EXPECT_EQ(sent<ErrorReply>(out)[0].second.code, WireErrc::protocol_version);
  EXPECT_EQ(sent<Welcome>(lora.rounds->on_hello("client-1", Hello{Role::client, 1, {}, 100}, 5)).size(), 1U);
}

TEST(SyncRounds, RecordsCountWhatTheTasksCarried) {
  Fixture f(options(1, 0, 1, 2));
  f.register_clients(2);
  (void)f.update("client-0", 1);
  (void)f.update("client-1", 1);
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].tasks, 2U);
  EXPECT_EQ(records[0].bytes_sent, 2U * 3 * 4) << "two tasks of one float tensor [3]";
  EXPECT_DOUBLE_EQ(records[0].download_per_client(), 12.0);
}

TEST(SyncRounds, RecordsTheLargestOptimizerStateAClientReported) {
  Fixture f(options(1, 0, 1, 2));
  f.register_clients(2);
  auto with_state = [&](const std::string& peer, std::uint64_t bytes) {
    Update u;
    u.round = f.rounds->round();
    u.base_model_version = f.rounds->model_version();
    u.num_examples = 100;
    u.metrics = {{"loss", 1.0}, {"accuracy", 0.5}};
    u.tensors = model_of(1);
    ClientStats stats;
    stats.optimizer_state_bytes = bytes;
    u.stats = stats;
    return f.rounds->on_update(peer, u);
  };
  (void)with_state("client-0", 4096);
  (void)with_state("client-1", 1024);
  auto records = f.rounds->take_completed();
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].optimizer_state_bytes, 4096U);
}

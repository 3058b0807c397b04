// A client process (actor, transport, training together) against a scripted aggregator: work
// that reaches a new process before it registered was meant for the process that held its id
// before (ROUTER handover); it is not trained, and the work sent after its Welcome is.
#include "actors/roles.hpp"
#include "runtime/net/transport.hpp"
#include "runtime/setup/federation.hpp"

#include "inbox.hpp"

#include <gtest/gtest.h>

#include <thread>

using namespace flotilla;
using namespace std::chrono_literals;
using flotilla::testing::Inbox;

namespace {

Message from_aggregator(Payload p, const std::string& run) {
  Message m;
  m.run_id = run;
  m.sender = "aggregator";
  m.payload = std::move(p);
  return m;
}

}  // namespace

TEST(ClientActor, WorkBeforeItsWelcomeIsNotTrainedWorkAfterItIs) {
  auto config = parse_config(R"(
[run]
name = "handover"
[data]
clients = 20
[model]
name = "mlp"
hidden = 16
[training]
local-steps = 1
batch-size = 8
[client]
connect-timeout = "60s"
heartbeat-interval = "200ms"
)", "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  Inbox received;
  auto aggregator = Endpoint::bind("tcp://127.0.0.1:*", received.handler()).value();
  const auto model = build_model(*config).value()->state();
  actors::RoleResult result;
  std::thread client([&] { result = actors::run_client(*config, 3, aggregator->address(), nullptr); });

  ASSERT_TRUE(received.next<Hello>(60s).has_value()) << "no Hello from the client";
  // A task for whoever held "client-3" before this process (not welcomed yet).
  aggregator->send("client-3", from_aggregator(Task{7, 2, model, config->training}, ""));
  EXPECT_FALSE(received.next<Update>(1500ms).has_value()) << "trained a task sent before it registered";
  aggregator->send("client-3", from_aggregator(Welcome{"handover-0", 2}, "handover-0"));
  aggregator->send("client-3", from_aggregator(Task{8, 2, model, config->training}, "handover-0"));
  const auto update = received.next<Update>(30s);
  ASSERT_TRUE(update.has_value()) << "the task sent after the Welcome was not trained";
  EXPECT_EQ(update->round, 8u);
  aggregator->send("client-3", from_aggregator(Shutdown{"done"}, "handover-0"));
  client.join();
  EXPECT_EQ(result.code, 0) << result.message;
}

TEST(ClientActor, ANewRunStartsItsModelAfreshAResumedOneKeepsIt) {
  // A task carries only what the client trains and what changed since the initial model, so a
  // tensor it leaves out must hold the run's initial value, not what an earlier run left.
  auto config = parse_config(R"(
[run]
name = "afresh"
[data]
clients = 4
[model]
name = "mlp"
hidden = 16
[training]
local-steps = 1
batch-size = 8
learning-rate = 1e-12  # a step too small to matter: the update shows what was loaded
[client]
connect-timeout = "60s"
heartbeat-interval = "200ms"
)", "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  Inbox received;
  auto aggregator = Endpoint::bind("tcp://127.0.0.1:*", received.handler()).value();
  const auto initial = build_model(*config).value()->state();
  auto changed = initial;
  changed[0].tensor = at::full_like(initial[0].tensor, 5.0);  // fc1.weight, changed by a run
  const TensorList without_first(initial.begin() + 1, initial.end());
  actors::RoleResult result;
  std::thread client([&] { result = actors::run_client(*config, 1, aggregator->address(), nullptr); });
  ASSERT_TRUE(received.next<Hello>(60s).has_value()) << "no Hello from the client";
  auto first_of = [&](const std::string& run, std::uint64_t version, std::uint64_t task,
                      const TensorList& tensors) -> at::Tensor {
    aggregator->send("client-1", from_aggregator(Task{task, version, tensors, config->training}, run));
    auto update = received.next<Update>(30s);
    if (!update || update->tensors.empty() || update->tensors[0].name != initial[0].name) return {};
    return update->tensors[0].tensor;
  };
  aggregator->send("client-1", from_aggregator(Welcome{"run-a", 2}, "run-a"));
  auto w = first_of("run-a", 2, 1, changed);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, changed[0].tensor, 0, 1e-6)) << "the task's value is what the client trained from";
  // The aggregator restarted with --resume (version 3): the model carries on.
  aggregator->send("client-1", from_aggregator(Welcome{"run-a", 3}, "run-a"));
  w = first_of("run-a", 3, 2, without_first);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, changed[0].tensor, 0, 1e-6)) << "a resumed run keeps what the client had";
  // Registering again at the same version (a lost Welcome, notRegistered) changes nothing.
  aggregator->send("client-1", from_aggregator(Welcome{"run-a", 3}, "run-a"));
  w = first_of("run-a", 3, 3, without_first);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, changed[0].tensor, 0, 1e-6)) << "a second Welcome at the same version";
  // A new run (version 0): what the task leaves out is the initial model's again.
  aggregator->send("client-1", from_aggregator(Welcome{"run-b", 0}, "run-b"));
  w = first_of("run-b", 0, 1, without_first);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, initial[0].tensor, 0, 1e-6)) << "a new run kept the old run's fc1.weight";
  aggregator->send("client-1", from_aggregator(Shutdown{"done"}, "run-b"));
  client.join();
  EXPECT_EQ(result.code, 0) << result.message;
}

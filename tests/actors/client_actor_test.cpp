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

/// The config of a small client (an MLP on Fashion-MNIST, one step per task), plus `extra`
/// lines of [training].
Config client_config(const std::string& name, const std::string& extra_training = "") {
  auto config = parse_config("[run]\nname = \"" + name + "\"\n[data]\nclients = 20\n[model]\nname = \"mlp\"\n"
                             "hidden = 16\n[training]\nlocal-steps = 1\nbatch-size = 8\n" + extra_training +
                             "[client]\nconnect-timeout = \"60s\"\nheartbeat-interval = \"200ms\"\n",
                             "test.toml");
  if (!config) throw Failure(config.error());
  return std::move(config).value();
}

/// Client `id`'s process (actor, transport, training) against a scripted aggregator.
struct ClientUnderTest {
  ClientUnderTest(Config c, std::uint32_t id)
      : config(std::move(c)), peer("client-" + std::to_string(id)),
        aggregator(Endpoint::bind("tcp://127.0.0.1:*", received.handler()).value()),
        client([this, id] { result = actors::run_client(config, id, aggregator->address(), nullptr); }) {}
  ~ClientUnderTest() {  // a test that stopped early still ends its client
    if (client.joinable()) (void)finish("");
  }
  void send(Payload p, const std::string& run) { aggregator->send(peer, from_aggregator(std::move(p), run)); }
  /// Tells the client the run is over and waits for it to end.
  actors::RoleResult finish(const std::string& run) {
    send(Shutdown{"done"}, run);
    client.join();
    return result;
  }

  Config config;
  std::string peer;
  Inbox received;
  std::unique_ptr<Endpoint> aggregator;
  actors::RoleResult result;
  std::thread client;
};

}  // namespace

TEST(ClientActor, WorkBeforeItsWelcomeIsNotTrainedWorkAfterItIs) {
  ClientUnderTest c(client_config("handover"), 3);
  const auto model = build_model(c.config).value()->state();
  ASSERT_TRUE(c.received.next<Hello>(60s).has_value()) << "no Hello from the client";
  // A task for whoever held "client-3" before this process (not welcomed yet).
  c.send(Task{7, 2, model, c.config.training}, "");
  EXPECT_FALSE(c.received.next<Update>(1500ms).has_value()) << "trained a task sent before it registered";
  c.send(Welcome{"handover-0", 2}, "handover-0");
  c.send(Task{8, 2, model, c.config.training}, "handover-0");
  const auto update = c.received.next<Update>(30s);
  ASSERT_TRUE(update.has_value()) << "the task sent after the Welcome was not trained";
  EXPECT_EQ(update->round, 8u);
  const auto result = c.finish("handover-0");
  EXPECT_EQ(result.code, 0) << result.message;
}

TEST(ClientActor, ANewRunStartsItsModelAfreshAResumedOneKeepsIt) {
  // A task carries only what the client trains and what changed since the initial model, so a
  // tensor it leaves out must hold the run's initial value, not what an earlier run left.
  // A learning rate too small to matter: the update shows what was loaded.
  ClientUnderTest c(client_config("afresh", "learning-rate = 1e-12\n"), 1);
  const auto initial = build_model(c.config).value()->state();
  auto changed = initial;
  changed[0].tensor = at::full_like(initial[0].tensor, 5.0);  // fc1.weight, changed by a run
  const TensorList without_first(initial.begin() + 1, initial.end());
  ASSERT_TRUE(c.received.next<Hello>(60s).has_value()) << "no Hello from the client";
  auto first_of = [&](const std::string& run, std::uint64_t version, std::uint64_t task,
                      const TensorList& tensors) -> at::Tensor {
    c.send(Task{task, version, tensors, c.config.training}, run);
    auto update = c.received.next<Update>(30s);
    if (!update || update->tensors.empty() || update->tensors[0].name != initial[0].name) return {};
    return update->tensors[0].tensor;
  };
  c.send(Welcome{"run-a", 2}, "run-a");
  auto w = first_of("run-a", 2, 1, changed);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, changed[0].tensor, 0, 1e-6)) << "the task's value is what the client trained from";
  // The aggregator restarted with --resume (version 3): the model carries on.
  c.send(Welcome{"run-a", 3}, "run-a");
  w = first_of("run-a", 3, 2, without_first);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, changed[0].tensor, 0, 1e-6)) << "a resumed run keeps what the client had";
  // Registering again at the same version (a lost Welcome, notRegistered) changes nothing.
  c.send(Welcome{"run-a", 3}, "run-a");
  w = first_of("run-a", 3, 3, without_first);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, changed[0].tensor, 0, 1e-6)) << "a second Welcome at the same version";
  // A new run (version 0): what the task leaves out is the initial model's again.
  c.send(Welcome{"run-b", 0}, "run-b");
  w = first_of("run-b", 0, 1, without_first);
  ASSERT_TRUE(w.defined());
  EXPECT_TRUE(at::allclose(w, initial[0].tensor, 0, 1e-6)) << "a new run kept the old run's fc1.weight";
  const auto result = c.finish("run-b");
  EXPECT_EQ(result.code, 0) << result.message;
}

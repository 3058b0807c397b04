// The aggregator process (actor, transport, round logic together) under hostile input: garbage
// frames, another protocol version, mismatched and late updates arrive over a real socket; each
// is refused with an error reply and counted, and the run completes with exactly the accepted
// updates folded in.
#include "actors/roles.hpp"
#include "runtime/net/transport.hpp"
#include "runtime/protocol/wire.hpp"

#include "inbox.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <thread>
#include <unistd.h>

using namespace flotilla;
using namespace std::chrono_literals;
using flotilla::testing::Inbox;

namespace {

Message wrap(Payload p, const std::string& sender) {
  Message m;
  m.sender = sender;
  m.payload = std::move(p);
  return m;
}

Update update_for(const Task& task, float delta, std::uint64_t round) {
  Update u;
  u.round = round;
  u.base_model_version = task.model_version;
  u.num_examples = 100;
  u.metrics = {{"loss", 1.0}};
  for (const auto& t : task.tensors) u.tensors.push_back({t.name, t.tensor + delta});
  return u;
}

/// Sends raw frames from a bare ZeroMQ DEALER and decodes the one reply.
Expected<Message> raw_exchange(const std::string& address, std::vector<zmq::message_t> frames) {
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 30000);
  s.connect(address);
  for (std::size_t i = 0; i < frames.size(); ++i) {
    s.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
  std::vector<zmq::message_t> reply;
  do {
    zmq::message_t f;
    if (!s.recv(f)) return Error{Errc::unreachable, "no reply"};
    reply.push_back(std::move(f));
  } while (reply.back().more());
  return decode(std::move(reply));
}

std::vector<zmq::message_t> frames_of(const Message& m) {
  auto enc = encode(m);
  std::vector<zmq::message_t> out;
  for (auto f : enc.frames) out.emplace_back(f.data(), f.size());
  return out;
}

}  // namespace

TEST(AggregatorActor, RefusesBadInputAndKeepsEveryAcceptedUpdate) {
  const std::string address = "ipc:///tmp/flotilla-aggregator-test-" + std::to_string(::getpid());
  auto config = parse_config(R"(
[run]
rounds = 2
threads = 1
[data]
clients = 2
[model]
name = "mlp"
hidden = 8
[training]
local-steps = 1
[aggregator]
listen = ")" + address + R"("
min-updates = 2
[evaluator]
enabled = false
)", "test.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;

  std::optional<ScheduleCounters> counters;
  std::uint64_t final_version = 0;
  actors::AggregatorHooks hooks;
  hooks.on_done = [&](const Schedule& r) {
    counters = r.counters();
    final_version = r.model_version();
  };
  actors::RoleResult result;
  std::thread aggregator([&] { result = actors::run_aggregator(*config, hooks); });

  // Garbage and another protocol major version: refused with a reason, nothing registered.
  std::vector<zmq::message_t> garbage;
  garbage.emplace_back("not a flotilla message", 22);
  auto reply = raw_exchange(address, std::move(garbage));
  ASSERT_TRUE(reply.has_value()) << reply.error().message;
  auto* err = std::get_if<ErrorReply>(&reply->payload);
  ASSERT_NE(err, nullptr);
  EXPECT_EQ(err->code, WireErrc::malformed);

  Message future = wrap(Hello{Role::client, 0, {}, 10}, "client-from-the-future");
  future.protocol_major = 2;
  reply = raw_exchange(address, frames_of(future));
  ASSERT_TRUE(reply.has_value()) << reply.error().message;
  err = std::get_if<ErrorReply>(&reply->payload);
  ASSERT_NE(err, nullptr);
  EXPECT_EQ(err->code, WireErrc::protocol_version);
  EXPECT_NE(err->message.find("2"), std::string::npos) << err->message;

  Inbox inbox_a, inbox_b;
  auto a = Endpoint::connect(address, "client-0", inbox_a.handler());
  auto b = Endpoint::connect(address, "client-1", inbox_b.handler());
  ASSERT_TRUE(a.has_value() && b.has_value());
  (*a)->send("", wrap(Hello{Role::client, 0, {}, 100}, "client-0"));
  (*b)->send("", wrap(Hello{Role::client, 1, {}, 100}, "client-1"));
  ASSERT_TRUE(inbox_a.next<Welcome>().has_value());
  auto task_a = inbox_a.next<Task>();
  auto task_b = inbox_b.next<Task>();
  ASSERT_TRUE(task_a && task_b);
  EXPECT_EQ(task_a->round, 1U);
  const TensorList initial = task_a->tensors;

  // A message from another run: refused, naming both runs.
  Message stranger = wrap(update_for(*task_a, 50.0F, 1), "client-0");
  stranger.run_id = "yesterdays-run";
  (*a)->send("", stranger);
  auto foreign = inbox_a.next<ErrorReply>();
  ASSERT_TRUE(foreign.has_value());
  EXPECT_NE(foreign->message.find("yesterdays-run"), std::string::npos) << foreign->message;

  // Wrong shapes: refused, naming the tensor.
  Update bad = update_for(*task_a, 0, 1);
  bad.tensors[0].tensor = torch::zeros({3, 3});
  (*a)->send("", wrap(bad, "client-0"));
  auto refusal = inbox_a.next<ErrorReply>();
  ASSERT_TRUE(refusal.has_value());
  EXPECT_NE(refusal->message.find(initial[0].name), std::string::npos) << refusal->message;

  (*a)->send("", wrap(update_for(*task_a, 1.0F, 1), "client-0"));
  (*b)->send("", wrap(update_for(*task_b, 3.0F, 1), "client-1"));
  auto round2_a = inbox_a.next<Task>();
  auto round2_b = inbox_b.next<Task>();
  ASSERT_TRUE(round2_a && round2_b);
  EXPECT_EQ(round2_a->model_version, 1U);
  for (std::size_t i = 0; i < initial.size(); ++i) {
    EXPECT_TRUE(torch::allclose(round2_a->tensors[i].tensor, initial[i].tensor + 2.0F, 1e-5, 1e-5))
        << "version 1 must be the mean of the two accepted updates: " << initial[i].name;
  }

  // A late update for round 1: refused, and the model does not move.
  (*a)->send("", wrap(update_for(*task_a, 100.0F, 1), "client-0"));
  auto late = inbox_a.next<ErrorReply>();
  ASSERT_TRUE(late.has_value());
  EXPECT_NE(late->message.find("round 1 is over"), std::string::npos) << late->message;

  (*a)->send("", wrap(update_for(*round2_a, 0.0F, 2), "client-0"));
  (*b)->send("", wrap(update_for(*round2_b, 0.0F, 2), "client-1"));
  EXPECT_TRUE(inbox_a.next<Shutdown>().has_value());
  EXPECT_TRUE(inbox_b.next<Shutdown>().has_value());
  aggregator.join();
  (*a)->close();
  (*b)->close();

  EXPECT_EQ(result.code, 0) << result.message;
  ASSERT_TRUE(counters.has_value());
  EXPECT_EQ(final_version, 2U);
  EXPECT_EQ(counters->updates_accepted, 4U);
  EXPECT_EQ(counters->updates_rejected, 1U);
  EXPECT_EQ(counters->updates_late, 1U);
  EXPECT_EQ(counters->messages_malformed, 3U) << "garbage, protocol 2, another run";
}

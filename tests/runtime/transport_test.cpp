#include "runtime/net/transport.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

namespace flotilla {
namespace {

using namespace std::chrono_literals;
constexpr auto kTimeout = 10s;

/// Collects what a handler receives, so a test can wait for it without sleeping.
class Inbox {
 public:
  Endpoint::Handler handler() {
    return [this](Inbound in) {
      std::lock_guard lock(mutex_);
      received_.push_back(std::move(in));
      cv_.notify_all();
    };
  }
  /// Waits until `n` messages arrived; false on timeout.
  [[nodiscard]] bool wait_for(std::size_t n) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, kTimeout, [&] { return received_.size() >= n; });
  }
  Inbound& at(std::size_t i) {
    std::lock_guard lock(mutex_);
    return received_.at(i);
  }
  std::size_t size() {
    std::lock_guard lock(mutex_);
    return received_.size();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Inbound> received_;
};

Message hello(std::uint32_t id) {
  Message m;
  m.sender = "client-" + std::to_string(id);
  m.message_id = id;
  m.payload = Hello{Role::client, id, {}, 100 * id};
  return m;
}

Message welcome(const std::string& run_id) {
  Message m;
  m.sender = "aggregator";
  m.payload = Welcome{run_id, 3};
  return m;
}

/// A raw ZeroMQ DEALER (a peer that is not an Endpoint) connected to `address` as `id`,
/// taking at most `rcvhwm` messages off the network before it reads them.
zmq::socket_t raw_dealer(zmq::context_t& ctx, const std::string& id, const std::string& address,
                         int rcvhwm = 1000) {
  zmq::socket_t socket(ctx, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::routing_id, id);
  socket.set(zmq::sockopt::rcvhwm, rcvhwm);
  socket.set(zmq::sockopt::linger, 0);
  socket.connect(address);
  return socket;
}

/// Sends `m`'s frames over a raw ZeroMQ socket.
void send_raw(zmq::socket_t& socket, const Message& m) {
  const auto encoded = encode(m);
  for (std::size_t i = 0; i < encoded.frames.size(); ++i) {
    const auto& f = encoded.frames[i];
    socket.send(zmq::const_buffer(f.data(), f.size()),
                i + 1 < encoded.frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
}

std::unique_ptr<Endpoint> must(Expected<std::unique_ptr<Endpoint>> e) {
  if (!e) ADD_FAILURE() << e.error().message;
  return e ? std::move(e).value() : nullptr;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "flotilla-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class Exchange : public ::testing::TestWithParam<std::string> {
 protected:
  std::string address() {
    const std::string kind = GetParam();
    if (kind == "tcp") return "tcp://127.0.0.1:*";
    if (kind == "ipc") return "ipc://" + dir_.path() + "/aggregator.sock";
    return "inproc://exchange-test";
  }
  TempDir dir_;
};

TEST_P(Exchange, DealerAndRouterExchangeMessages) {
  Inbox server_inbox;
  Inbox client_inbox;
  auto server = must(Endpoint::bind(address(), server_inbox.handler()));
  ASSERT_TRUE(server);
  EXPECT_EQ(std::string::npos, server->address().find('*')) << server->address();
  auto client = must(Endpoint::connect(server->address(), "client-1", client_inbox.handler()));
  ASSERT_TRUE(client);

  Message m = hello(1);
  const at::Tensor w = torch::arange(100000, at::kFloat);
  Update u;
  u.round = 4;
  u.tensors = {{"w", w}};
  m.payload = u;
  client->send("", m);
  ASSERT_TRUE(server_inbox.wait_for(1));
  Inbound& in = server_inbox.at(0);
  EXPECT_EQ("client-1", in.peer);
  ASSERT_TRUE(in.message.has_value()) << in.message.error().message;
  ASSERT_TRUE(std::holds_alternative<Update>(in.message->payload));
  EXPECT_EQ(4U, std::get<Update>(in.message->payload).round);
  EXPECT_TRUE(torch::equal(w, std::get<Update>(in.message->payload).tensors.at(0).tensor));
  EXPECT_GT(in.bytes, w.nbytes());

  server->send(in.peer, welcome("run-1"));
  ASSERT_TRUE(client_inbox.wait_for(1));
  Inbound& reply = client_inbox.at(0);
  EXPECT_TRUE(reply.peer.empty());
  ASSERT_TRUE(reply.message.has_value()) << reply.message.error().message;
  EXPECT_EQ("run-1", std::get<Welcome>(reply.message->payload).run_id);

  EXPECT_EQ(client->bytes_sent(), server->bytes_received());
  EXPECT_EQ(server->bytes_sent(), client->bytes_received());
  EXPECT_EQ(in.bytes, server->bytes_received());
}

INSTANTIATE_TEST_SUITE_P(Transport, Exchange, ::testing::Values("tcp", "ipc", "inproc"),
                         [](const auto& info) { return info.param; });

TEST(Transport, RepliesReachTheRightDealer) {
  Inbox server_inbox;
  auto server = must(Endpoint::bind("tcp://127.0.0.1:*", server_inbox.handler()));
  ASSERT_TRUE(server);
  constexpr int kClients = 4;
  std::vector<std::unique_ptr<Inbox>> inboxes;
  std::vector<std::unique_ptr<Endpoint>> clients;
  for (int i = 0; i < kClients; ++i) {
    inboxes.push_back(std::make_unique<Inbox>());
    clients.push_back(must(Endpoint::connect(server->address(), "client-" + std::to_string(i),
                                             inboxes.back()->handler())));
    ASSERT_TRUE(clients.back());
    clients.back()->send("", hello(static_cast<std::uint32_t>(i)));
  }
  ASSERT_TRUE(server_inbox.wait_for(kClients));
  for (int i = 0; i < kClients; ++i) {
    const Inbound& in = server_inbox.at(static_cast<std::size_t>(i));
    ASSERT_TRUE(in.message.has_value());
    // The routing id is the identity the client connected with, whatever the arrival order.
    EXPECT_EQ(in.peer, in.message->sender);
    server->send(in.peer, welcome("for-" + in.peer));
  }
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(inboxes[static_cast<std::size_t>(i)]->wait_for(1));
    const Inbound& got = inboxes[static_cast<std::size_t>(i)]->at(0);
    ASSERT_TRUE(got.message.has_value());
    EXPECT_EQ("for-client-" + std::to_string(i), std::get<Welcome>(got.message->payload).run_id);
  }
  for (auto& inbox : inboxes) EXPECT_EQ(1U, inbox->size());
}

TEST(Transport, BindingAPortInUseIsAddressInUse) {
  Inbox inbox;
  auto first = must(Endpoint::bind("tcp://127.0.0.1:*", inbox.handler()));
  ASSERT_TRUE(first);
  auto second = Endpoint::bind(first->address(), inbox.handler());
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(Errc::address_in_use, second.error().code);
  EXPECT_EQ("cannot listen on " + first->address() + ": address already in use",
            second.error().message);
}

TEST(Transport, BadAddressesAreInvalidArguments) {
  Inbox inbox;
  auto bad_bind = Endpoint::bind("nonsense://where", inbox.handler());
  ASSERT_FALSE(bad_bind.has_value());
  EXPECT_EQ(Errc::invalid_argument, bad_bind.error().code);
  EXPECT_NE(std::string::npos, bad_bind.error().message.find("nonsense://where"));

  auto bad_connect = Endpoint::connect("tcp://", "client-1", inbox.handler());
  ASSERT_FALSE(bad_connect.has_value());
  EXPECT_EQ(Errc::invalid_argument, bad_connect.error().code);

  auto no_identity = Endpoint::connect("tcp://127.0.0.1:5555", "", inbox.handler());
  ASSERT_FALSE(no_identity.has_value());
  EXPECT_EQ(Errc::invalid_argument, no_identity.error().code);
}

TEST(Transport, GarbageFromAPeerIsReportedAndTheEndpointKeepsWorking) {
  Inbox inbox;
  auto server = must(Endpoint::bind("tcp://127.0.0.1:*", inbox.handler()));
  ASSERT_TRUE(server);

  zmq::context_t ctx;
  auto raw = raw_dealer(ctx, "vandal", server->address());
  const std::string junk = "this is not a flotilla message";
  raw.send(zmq::buffer(junk), zmq::send_flags::sndmore);
  raw.send(zmq::str_buffer("\x01\x02\x03"), zmq::send_flags::none);

  ASSERT_TRUE(inbox.wait_for(1));
  EXPECT_EQ("vandal", inbox.at(0).peer);
  ASSERT_FALSE(inbox.at(0).message.has_value());
  EXPECT_EQ(Errc::malformed, inbox.at(0).message.error().code);

  send_raw(raw, hello(5));  // the same connection, now well-formed
  ASSERT_TRUE(inbox.wait_for(2));
  ASSERT_TRUE(inbox.at(1).message.has_value()) << inbox.at(1).message.error().message;
  EXPECT_EQ(5U, std::get<Hello>(inbox.at(1).message->payload).client_id);

  // And another peer is still served.
  Inbox client_inbox;
  auto client = must(Endpoint::connect(server->address(), "client-2", client_inbox.handler()));
  ASSERT_TRUE(client);
  client->send("", hello(2));
  ASSERT_TRUE(inbox.wait_for(3));
  EXPECT_EQ("client-2", inbox.at(2).peer);
  EXPECT_TRUE(inbox.at(2).message.has_value());
}

TEST(Transport, AThrowingHandlerDoesNotStopTheEndpoint) {
  Inbox inbox;
  int calls = 0;
  auto server = must(Endpoint::bind("inproc://throwing-handler", [&](Inbound in) {
    if (++calls == 1) throw std::runtime_error("handler bug");
    inbox.handler()(std::move(in));
  }));
  ASSERT_TRUE(server);
  Inbox unused;
  auto client = must(Endpoint::connect(server->address(), "client-1", unused.handler()));
  ASSERT_TRUE(client);
  client->send("", hello(1));
  client->send("", hello(2));
  ASSERT_TRUE(inbox.wait_for(1));
  EXPECT_EQ(2U, std::get<Hello>(inbox.at(0).message->payload).client_id);
}

TEST(Transport, CloseFlushesQueuedMessagesAndIsIdempotent) {
  Inbox inbox;
  auto server = must(Endpoint::bind("tcp://127.0.0.1:*", inbox.handler()));
  ASSERT_TRUE(server);
  Inbox unused;
  auto client = must(Endpoint::connect(server->address(), "client-1", unused.handler()));
  ASSERT_TRUE(client);
  constexpr std::uint32_t kMessages = 20;
  for (std::uint32_t i = 0; i < kMessages; ++i) client->send("", hello(i));
  client->close();
  client->close();
  client->send("", hello(99));  // after close: ignored, not a crash
  ASSERT_TRUE(inbox.wait_for(kMessages));
  for (std::uint32_t i = 0; i < kMessages; ++i) {
    EXPECT_EQ(i, std::get<Hello>(inbox.at(i).message->payload).client_id);
  }
  server->close();
  server->close();
  client.reset();
  server.reset();
}

TEST(Transport, AnUnencodableMessageIsDroppedAndLaterOnesArrive) {
  Inbox inbox;
  auto server = must(Endpoint::bind("inproc://unencodable", inbox.handler()));
  ASSERT_TRUE(server);
  Inbox unused;
  auto client = must(Endpoint::connect(server->address(), "client-1", unused.handler()));
  ASSERT_TRUE(client);
  Message bad = hello(1);
  bad.payload = Update{1, 0, 0, {}, {{"ghost", at::Tensor{}}}};
  client->send("", bad);
  client->send("", hello(2));
  ASSERT_TRUE(inbox.wait_for(1));
  ASSERT_TRUE(inbox.at(0).message.has_value());
  EXPECT_EQ(2U, std::get<Hello>(inbox.at(0).message->payload).client_id);
  EXPECT_EQ(1U, client->messages_dropped()) << "the dropped message is counted, not silently lost";
}

TEST(Transport, AnIOThreadThatDiesIsReportedAndLaterSendsAreDroppedNotQueued) {
  // The endpoint in a context of its own: shutting it down makes every ZeroMQ call of the
  // endpoint's I/O thread fail (ETERM), as a real fault there would.
  zmq::context_t ctx;
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::string> failures;
  EndpointOptions options;
  options.context = &ctx;
  options.on_failure = [&](const std::string& why) {
    std::lock_guard lock(mutex);
    failures.push_back(why);
    cv.notify_all();
  };
  Inbox inbox;
  auto server = must(Endpoint::bind("tcp://127.0.0.1:*", inbox.handler(), options));
  ASSERT_TRUE(server);
  Inbox client_inbox;
  auto client = must(Endpoint::connect(server->address(), "client-1", client_inbox.handler()));
  ASSERT_TRUE(client);
  client->send("", hello(1));
  ASSERT_TRUE(inbox.wait_for(1)) << "the endpoint works before the fault";
  EXPECT_FALSE(server->failure().has_value());

  ctx.shutdown();
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, kTimeout, [&] { return !failures.empty(); }))
        << "the owner is told that the I/O thread stopped";
    EXPECT_NE(std::string::npos, failures.front().find("terminated")) << failures.front();
  }
  ASSERT_TRUE(server->failure().has_value());
  EXPECT_EQ(failures.front(), *server->failure());
  const auto dropped = server->messages_dropped();
  server->send("client-1", welcome("run-1"));
  server->send("client-1", welcome("run-1"));
  EXPECT_EQ(dropped + 2, server->messages_dropped()) << "sends after the fault are counted";
  EXPECT_EQ(0U, server->pending()) << "nothing queues for a thread that will never send";
  server->close();
  EXPECT_EQ(1U, failures.size()) << "reported once";
  EXPECT_EQ(0U, client_inbox.size());
}

TEST(Transport, ACurveServerInAnotherContextIsRefused) {
  zmq::context_t ctx;
  EndpointOptions options;
  options.context = &ctx;
  options.curve_server = CurveServer{};
  Inbox inbox;
  auto server = Endpoint::bind("tcp://127.0.0.1:*", inbox.handler(), options);
  ASSERT_FALSE(server.has_value());
  EXPECT_EQ(Errc::invalid_argument, server.error().code);
  EXPECT_NE(std::string::npos, server.error().message.find("ZAP")) << server.error().message;
}

TEST(Transport, SendToAnUnknownPeerIsDropped) {
  Inbox inbox;
  auto server = must(Endpoint::bind("inproc://unknown-peer", inbox.handler()));
  ASSERT_TRUE(server);
  Inbox client_inbox;
  auto client = must(Endpoint::connect(server->address(), "client-1", client_inbox.handler()));
  ASSERT_TRUE(client);
  server->send("nobody", welcome("lost"));
  client->send("", hello(1));
  ASSERT_TRUE(inbox.wait_for(1));
  server->send("client-1", welcome("found"));
  ASSERT_TRUE(client_inbox.wait_for(1));
  EXPECT_EQ("found", std::get<Welcome>(client_inbox.at(0).message->payload).run_id);
  EXPECT_EQ(1U, server->messages_dropped());
}

/// Back-pressure: with max_in_flight = 4 the endpoint stops reading while 4 received messages
/// are unhandled, and reads on as each is let go; none is lost.
TEST(Transport, ReadingStopsAtTheInFlightLimitAndResumesAsMessagesAreHandled) {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<Inbound> held;
  std::size_t total = 0;
  EndpointOptions options;
  options.max_in_flight = 4;
  auto server = must(Endpoint::bind("tcp://127.0.0.1:*", [&](Inbound in) {
    std::lock_guard lock(mutex);
    held.push_back(std::move(in));
    ++total;
    cv.notify_all();
  }, options));
  ASSERT_TRUE(server);
  Inbox unused;
  auto client = must(Endpoint::connect(server->address(), "client-1", unused.handler()));
  ASSERT_TRUE(client);
  constexpr std::uint32_t kMessages = 20;
  for (std::uint32_t i = 0; i < kMessages; ++i) client->send("", hello(i));
  std::vector<std::uint32_t> order;
  for (int batch = 0; batch < 5; ++batch) {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, kTimeout, [&] { return held.size() >= 4; })) << held.size();
    lock.unlock();
    std::this_thread::sleep_for(100ms);  // time to read more, were it not held back
    lock.lock();
    EXPECT_EQ(held.size(), 4U) << "read past the in-flight limit";
    for (const auto& in : held) order.push_back(std::get<Hello>(in.message->payload).client_id);
    held.clear();  // handled: the tokens go, reading resumes
  }
  ASSERT_EQ(order.size(), kMessages);
  for (std::uint32_t i = 0; i < kMessages; ++i) EXPECT_EQ(order[i], i);
  EXPECT_EQ(total, kMessages);
}

/// A peer that stops reading must not make the aggregator hold every message (each a model
/// version) it is sent: beyond its queue's bound they are dropped and counted, and other peers
/// are still served.
TEST(Transport, APeerThatStopsReadingDoesNotPinWhatItIsSent) {
  Inbox inbox;
  auto server = must(Endpoint::bind("tcp://127.0.0.1:*", inbox.handler()));
  ASSERT_TRUE(server);
  zmq::context_t ctx;
  // It takes one message off the network: what it has not read stays queued at the sender.
  auto slow = raw_dealer(ctx, "slow", server->address(), 1);
  send_raw(slow, hello(7));
  ASSERT_TRUE(inbox.wait_for(1));  // the server knows the peer

  const auto model = torch::ones({256 * 1024});  // 1 MiB
  constexpr int kSent = 400;
  for (int i = 0; i < kSent; ++i) {
    Message m = welcome("w");
    m.payload = Update{1, 0, 0, {}, {{"w", model}}};
    server->send("slow", std::move(m));
  }
  // Another peer is served meanwhile, after all of those.
  Inbox other_inbox;
  auto other = must(Endpoint::connect(server->address(), "other", other_inbox.handler()));
  ASSERT_TRUE(other);
  other->send("", hello(8));
  ASSERT_TRUE(inbox.wait_for(2));
  server->send("other", welcome("served"));
  ASSERT_TRUE(other_inbox.wait_for(1));
  // Every message for the slow peer has been handled: queued (a bounded few) or dropped.
  EXPECT_GT(server->messages_dropped(), static_cast<std::uint64_t>(kSent / 2));
  EXPECT_LT(model.use_count(), 64) << "messages held for a peer that does not read";
}

}  // namespace
}  // namespace flotilla

/// A tensor beyond Cap'n Proto's 512 MiB Data limit crosses the codec and a real tcp link.
#include "runtime/net/transport.hpp"
#include "runtime/protocol/wire.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

namespace flotilla {
namespace {

/// 600 MiB and 3 bytes: several full chunks, a partial one and an odd tail.
constexpr std::int64_t kBytes = (600LL << 20) + 3;

Message large_update(const at::Tensor& t) {
  Update u;
  u.round = 1;
  u.tensors = {{"embedding", t}};
  Message m;
  m.sender = "client-1";
  m.payload = std::move(u);
  return m;
}

at::Tensor large_tensor() {
  torch::manual_seed(3);
  return torch::randint(0, 256, {kBytes}, torch::TensorOptions().dtype(at::kByte));
}

TEST(WireLarge, TensorOver512MiBRoundTripsThroughTheCodec) {
  const at::Tensor t = large_tensor();
  auto encoded = encode(large_update(t));
  EXPECT_GE(encoded.frames.size(), 1U + 1U + 3U) << "600 MiB must be split into chunks";
  std::vector<zmq::message_t> frames;
  for (auto f : encoded.frames) frames.emplace_back(f.data(), f.size());
  auto r = decode(std::move(frames));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  const auto& got = std::get<Update>(r->payload).tensors.at(0);
  EXPECT_EQ("embedding", got.name);
  EXPECT_EQ(t.sizes(), got.tensor.sizes());
  EXPECT_TRUE(torch::equal(t, got.tensor));
}

TEST(WireLarge, TensorOver512MiBCrossesATcpEndpointPair) {
  std::mutex mutex;
  std::condition_variable cv;
  std::optional<Inbound> received;
  auto server = Endpoint::bind("tcp://127.0.0.1:*", [&](Inbound in) {
    std::lock_guard lock(mutex);
    received = std::move(in);
    cv.notify_all();
  });
  ASSERT_TRUE(server.has_value()) << server.error().message;
  auto client = Endpoint::connect((*server)->address(), "client-1", [](Inbound) {});
  ASSERT_TRUE(client.has_value()) << client.error().message;

  const at::Tensor t = large_tensor();
  (*client)->send("", large_update(t));
  std::unique_lock lock(mutex);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return received.has_value(); }));
  EXPECT_EQ("client-1", received->peer);
  ASSERT_TRUE(received->message.has_value()) << received->message.error().message;
  const auto& got = std::get<Update>(received->message->payload).tensors.at(0).tensor;
  EXPECT_TRUE(torch::equal(t, got));
  EXPECT_GT(received->bytes, static_cast<std::size_t>(kBytes));
}

}  // namespace
}  // namespace flotilla

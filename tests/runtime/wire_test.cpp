#include "runtime/protocol/wire.hpp"

#include "schemas/flotilla.capnp.h"

#include <capnp/message.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <random>

namespace flotilla {
namespace {

/// Copies encoded frames into ZeroMQ messages, as a receiving socket would hand them over.
std::vector<zmq::message_t> to_messages(const EncodedFrames& encoded) {
  std::vector<zmq::message_t> out;
  for (auto f : encoded.frames) out.emplace_back(f.data(), f.size());
  return out;
}

Expected<Message> round_trip(const Message& m, const WireLimits& limits = {}) {
  return decode(to_messages(encode(m, limits)), limits);
}

Message update_with(TensorList tensors) {
  Update u;
  u.round = 7;
  u.tensors = std::move(tensors);
  Message m;
  m.sender = "client-1";
  m.payload = std::move(u);
  return m;
}

const TensorList& tensors_of(const Message& m) { return std::get<Update>(m.payload).tensors; }

/// Byte-exact equality of dtype, shape and contents.
void expect_same_tensor(const at::Tensor& expected, const at::Tensor& actual) {
  ASSERT_TRUE(actual.defined());
  EXPECT_EQ(expected.scalar_type(), actual.scalar_type());
  EXPECT_EQ(expected.sizes(), actual.sizes());
  ASSERT_EQ(expected.nbytes(), actual.nbytes());
  const at::Tensor e = expected.contiguous();
  const at::Tensor a = actual.contiguous();
  if (e.nbytes() > 0) EXPECT_EQ(0, std::memcmp(e.data_ptr(), a.data_ptr(), e.nbytes()));
}

at::Tensor random_tensor(at::ScalarType dtype, at::IntArrayRef shape, int seed = 1) {
  torch::manual_seed(seed);
  if (at::isFloatingType(dtype)) return torch::randn(shape).to(dtype);
  return torch::randint(0, dtype == at::kByte ? 255 : 1'000'000, shape).to(dtype);
}

/// Frames a hand-built envelope the way encode() does, for messages encode() refuses to make.
std::vector<zmq::message_t> frame_builder(capnp::MessageBuilder& builder) {
  auto segments = builder.getSegmentsForOutput();
  std::vector<zmq::message_t> out;
  const std::uint8_t header[8] = {'F', 'L', 'T', 'L', 1, 0,
                                  static_cast<std::uint8_t>(segments.size()), 0};
  out.emplace_back(header, sizeof header);
  for (auto s : segments) out.emplace_back(s.begin(), s.size() * sizeof(capnp::word));
  return out;
}

void expect_error(const Expected<Message>& r, Errc code) {
  ASSERT_FALSE(r.has_value()) << "decoded garbage successfully";
  EXPECT_EQ(code, r.error().code) << r.error().message;
  EXPECT_FALSE(r.error().message.empty());
}

TEST(Wire, RoundTripsEveryDtypeByteExact) {
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kLong, at::kDouble, at::kInt,
                     at::kByte}) {
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor small = random_tensor(dtype, {3, 5});
    const at::Tensor large = random_tensor(dtype, {64, 129}, 2);  // > 4 KiB: referenced
    auto r = round_trip(update_with({{"small", small}, {"large", large}}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    ASSERT_EQ(2U, tensors_of(*r).size());
    EXPECT_EQ("small", tensors_of(*r)[0].name);
    EXPECT_EQ("large", tensors_of(*r)[1].name);
    expect_same_tensor(small, tensors_of(*r)[0].tensor);
    expect_same_tensor(large, tensors_of(*r)[1].tensor);
  }
}

TEST(Wire, RoundTripsScalarsAndEmptyTensors) {
  const at::Tensor scalar = torch::tensor(3.5);
  ASSERT_EQ(0, scalar.dim());
  const at::Tensor empty = torch::empty({0}, at::kFloat);
  const at::Tensor empty_3d = torch::empty({3, 0, 2}, at::kLong);
  auto r = round_trip(update_with({{"s", scalar}, {"e", empty}, {"e3", empty_3d}}));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  const auto& t = tensors_of(*r);
  ASSERT_EQ(3U, t.size());
  EXPECT_EQ(0, t[0].tensor.dim());
  EXPECT_EQ(3.5, t[0].tensor.item<double>());
  expect_same_tensor(empty, t[1].tensor);
  expect_same_tensor(empty_3d, t[2].tensor);
}

TEST(Wire, NonContiguousTensorsArriveWithTheirLogicalLayout) {
  const at::Tensor base = random_tensor(at::kFloat, {40, 70});
  const at::Tensor transposed = base.t();
  const at::Tensor strided = base.index({torch::indexing::Slice(), torch::indexing::Slice(0, 70, 3)});
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_FALSE(strided.is_contiguous());
  auto r = round_trip(update_with({{"t", transposed}, {"s", strided}}));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(torch::equal(transposed, tensors_of(*r)[0].tensor));
  EXPECT_TRUE(torch::equal(strided, tensors_of(*r)[1].tensor));
}

TEST(Wire, OddSizedLargeTensorRoundTrips) {
  // 10,001 bytes: referenced in whole words plus a copied tail chunk.
  const at::Tensor t = random_tensor(at::kByte, {10001});
  auto r = round_trip(update_with({{"odd", t}}));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  expect_same_tensor(t, tensors_of(*r)[0].tensor);
}

TEST(Wire, UnsupportedDtypesAreWidenedLosslessly) {
  const at::Tensor flags = torch::tensor({true, false, true});
  const at::Tensor shorts = torch::tensor({-3, 30000}, at::kShort);
  auto r = round_trip(update_with({{"flags", flags}, {"shorts", shorts}}));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(at::kLong, tensors_of(*r)[0].tensor.scalar_type());
  EXPECT_TRUE(torch::equal(flags.to(at::kLong), tensors_of(*r)[0].tensor));
  EXPECT_TRUE(torch::equal(shorts.to(at::kLong), tensors_of(*r)[1].tensor));
}

TEST(Wire, UndefinedTensorCannotBeEncoded) {
  try {
    (void)encode(update_with({{"ghost", at::Tensor{}}}));
    FAIL() << "encoded an undefined tensor";
  } catch (const Failure& f) {
    EXPECT_EQ(Errc::invalid_argument, f.error().code);
    EXPECT_NE(std::string::npos, f.error().message.find("ghost"));
  }
}

TEST(Wire, ManyTensorsKeepOrderAndNames) {
  TensorList list;
  for (int i = 0; i < 500; ++i) {
    list.push_back({"layer." + std::to_string(i), random_tensor(at::kFloat, {i % 7 + 1, 600}, i)});
  }
  auto r = round_trip(update_with(list));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  ASSERT_EQ(list.size(), tensors_of(*r).size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    EXPECT_EQ(list[i].name, tensors_of(*r)[i].name);
    expect_same_tensor(list[i].tensor, tensors_of(*r)[i].tensor);
  }
}

TEST(Wire, LargeTensorIsReferencedNotCopiedOnEncode) {
  const at::Tensor t = random_tensor(at::kFloat, {1 << 16});
  auto encoded = encode(update_with({{"w", t}}));
  bool found = false;
  for (auto f : encoded.frames) found = found || f.data() == t.data_ptr();
  EXPECT_TRUE(found) << "no frame points at the tensor's own bytes";
}

TEST(Wire, EncodedFramesKeepTheTensorAlive) {
  EncodedFrames encoded;
  at::Tensor copy;
  {
    at::Tensor t = random_tensor(at::kFloat, {1 << 14});
    copy = t.clone();
    encoded = encode(update_with({{"w", t}}));
  }  // the only user reference to `t` is gone; the frames must still be readable
  auto r = decode(to_messages(encoded));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  expect_same_tensor(copy, tensors_of(*r)[0].tensor);
}

TEST(Wire, MultiChunkTensorRoundTrips) {
  WireLimits limits;
  limits.chunk_bytes = 1024;
  const at::Tensor t = random_tensor(at::kFloat, {5, 1000});  // 20,000 bytes: 20 chunks
  auto encoded = encode(update_with({{"w", t}}), limits);
  EXPECT_GE(encoded.frames.size(), 1U + 1U + 20U) << "the tensor was not split into chunks";
  auto r = decode(to_messages(encoded), limits);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  expect_same_tensor(t, tensors_of(*r)[0].tensor);
}

TEST(Wire, DecodedSingleChunkTensorPointsIntoTheReceivedFrame) {
  const at::Tensor t = random_tensor(at::kDouble, {4096});
  auto encoded = encode(update_with({{"w", t}}));
  // Hand the frames over without copying so their addresses are known.
  std::vector<std::vector<std::uint64_t>> buffers;
  std::vector<zmq::message_t> frames;
  for (auto f : encoded.frames) {
    buffers.emplace_back((f.size() + 7) / 8);
    std::memcpy(buffers.back().data(), f.data(), f.size());
  }
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    frames.emplace_back(buffers[i].data(), encoded.frames[i].size(), [](void*, void*) {});
  }
  auto r = decode(std::move(frames));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  const at::Tensor& got = tensors_of(*r)[0].tensor;
  expect_same_tensor(t, got);
  const auto* p = static_cast<const std::byte*>(got.data_ptr());
  bool inside = false;
  for (const auto& b : buffers) {
    const auto* begin = reinterpret_cast<const std::byte*>(b.data());
    inside = inside || (p >= begin && p + got.nbytes() <= begin + b.size() * 8);
  }
  EXPECT_TRUE(inside) << "decoded tensor was copied out of the frame";
}

TEST(Wire, UnalignedFramesAreCopiedAndStillDecode) {
  const at::Tensor t = random_tensor(at::kLong, {2048});
  auto encoded = encode(update_with({{"w", t}}));
  std::vector<std::vector<std::uint64_t>> buffers;
  std::vector<zmq::message_t> frames;
  for (auto f : encoded.frames) {
    buffers.emplace_back(f.size() / 8 + 2);
    std::memcpy(reinterpret_cast<char*>(buffers.back().data()) + 1, f.data(), f.size());
  }
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    frames.emplace_back(reinterpret_cast<char*>(buffers[i].data()) + 1,
                        encoded.frames[i].size(), [](void*, void*) {});
  }
  auto r = decode(std::move(frames));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  expect_same_tensor(t, tensors_of(*r)[0].tensor);
}

TEST(Wire, EveryPayloadKindSurvives) {
  auto envelope_of = [](Payload p) {
    Message m;
    m.protocol_minor = 3;
    m.run_id = "run-42";
    m.sender = "aggregator";
    m.message_id = 9'000'000'000ULL;
    m.reply_to = 17;
    m.payload = std::move(p);
    return m;
  };
  auto check_envelope = [](const Message& m) {
    EXPECT_EQ(kProtocolMajor, m.protocol_major);
    EXPECT_EQ(3, m.protocol_minor);
    EXPECT_EQ("run-42", m.run_id);
    EXPECT_EQ("aggregator", m.sender);
    EXPECT_EQ(9'000'000'000ULL, m.message_id);
    EXPECT_EQ(17U, m.reply_to);
  };
  const at::Tensor w = random_tensor(at::kFloat, {3, 4});

  {
    auto r = round_trip(envelope_of(Hello{Role::evaluator, 12, {"cuda:1", 2.5F, 1ULL << 34}, 600}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    const auto& h = std::get<Hello>(r->payload);
    EXPECT_EQ(Role::evaluator, h.role);
    EXPECT_EQ(12U, h.client_id);
    EXPECT_EQ("cuda:1", h.profile.kind);
    EXPECT_EQ(2.5F, h.profile.compute_speed);
    EXPECT_EQ(1ULL << 34, h.profile.memory_bytes);
    EXPECT_EQ(600U, h.num_examples);
  }
  {
    auto r = round_trip(envelope_of(Welcome{"run-x", 5}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    EXPECT_EQ("run-x", std::get<Welcome>(r->payload).run_id);
    EXPECT_EQ(5U, std::get<Welcome>(r->payload).model_version);
  }
  {
    Task t{3, 4, {{"w", w}}, {10, 2, 64, 0.5F, 0.9F, 1e-4F, 1234}};
    auto r = round_trip(envelope_of(t));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    const auto& got = std::get<Task>(r->payload);
    EXPECT_EQ(3U, got.round);
    EXPECT_EQ(4U, got.model_version);
    EXPECT_EQ(10U, got.config.local_steps);
    EXPECT_EQ(2U, got.config.local_epochs);
    EXPECT_EQ(64U, got.config.batch_size);
    EXPECT_EQ(0.5F, got.config.learning_rate);
    EXPECT_EQ(0.9F, got.config.momentum);
    EXPECT_EQ(1e-4F, got.config.weight_decay);
    EXPECT_EQ(1234U, got.config.seed);
    ASSERT_EQ(1U, got.tensors.size());
    expect_same_tensor(w, got.tensors[0].tensor);
  }
  {
    Update u{8, 7, 300, {{"loss", 0.25}, {"accuracy", 0.875}}, {{"w", w}}};
    auto r = round_trip(envelope_of(u));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    const auto& got = std::get<Update>(r->payload);
    EXPECT_EQ(8U, got.round);
    EXPECT_EQ(7U, got.base_model_version);
    EXPECT_EQ(300U, got.num_examples);
    ASSERT_EQ(2U, got.metrics.size());
    EXPECT_EQ(0.25, metric(got.metrics, "loss"));
    EXPECT_EQ(0.875, metric(got.metrics, "accuracy"));
    EXPECT_EQ("loss", got.metrics[0].name);
    ASSERT_EQ(1U, got.tensors.size());
    expect_same_tensor(w, got.tensors[0].tensor);
  }
  {
    auto r = round_trip(envelope_of(EvaluationRequest{11, 12, {{"w", w}, {"b", w * 2}}}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    const auto& got = std::get<EvaluationRequest>(r->payload);
    EXPECT_EQ(11U, got.round);
    EXPECT_EQ(12U, got.model_version);
    ASSERT_EQ(2U, got.tensors.size());
    EXPECT_EQ("b", got.tensors[1].name);
    expect_same_tensor(w * 2, got.tensors[1].tensor);
  }
  {
    auto r = round_trip(envelope_of(EvaluationResult{2, 3, 1000, 0.5, 0.75, {{"f1", 0.6}}}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    const auto& got = std::get<EvaluationResult>(r->payload);
    EXPECT_EQ(2U, got.round);
    EXPECT_EQ(3U, got.model_version);
    EXPECT_EQ(1000U, got.num_examples);
    EXPECT_EQ(0.5, got.loss);
    EXPECT_EQ(0.75, got.accuracy);
    EXPECT_EQ(0.6, metric(got.metrics, "f1", -1));
  }
  {
    auto r = round_trip(envelope_of(Heartbeat{99, true}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    EXPECT_EQ(99U, std::get<Heartbeat>(r->payload).model_version);
    EXPECT_TRUE(std::get<Heartbeat>(r->payload).busy);
    EXPECT_FALSE(std::get<Heartbeat>(r->payload).stats) << "no counters reported, none read";
  }
  {
    auto r = round_trip(envelope_of(Shutdown{"run finished"}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    EXPECT_EQ("run finished", std::get<Shutdown>(r->payload).reason);
  }
  {
    auto r = round_trip(envelope_of(ErrorReply{WireErrc::rejected, "shape mismatch"}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    check_envelope(*r);
    EXPECT_EQ(WireErrc::rejected, std::get<ErrorReply>(r->payload).code);
    EXPECT_EQ("shape mismatch", std::get<ErrorReply>(r->payload).message);
  }
  {
    auto r = round_trip(envelope_of(ErrorReply{WireErrc::not_registered, "send a Hello"}));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_EQ(WireErrc::not_registered, std::get<ErrorReply>(r->payload).code) << "since 1.4";
  }
}

TEST(Wire, ClientCountersTravelInHeartbeatsAndUpdates) {
  ClientStats stats;
  stats.device_class = "phone-slow";
  stats.tasks_completed = 7;
  stats.tasks_failed = 2;
  stats.training_seconds = 12.5;
  stats.examples = 11200;
  stats.bytes_sent = 1ULL << 40;
  stats.bytes_received = 12345;
  stats.optimizer_state_bytes = 4096;
  const auto same = [&](const std::optional<ClientStats>& got) {
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(stats.device_class, got->device_class);
    EXPECT_EQ(stats.tasks_completed, got->tasks_completed);
    EXPECT_EQ(stats.tasks_failed, got->tasks_failed);
    EXPECT_EQ(stats.training_seconds, got->training_seconds);
    EXPECT_EQ(stats.examples, got->examples);
    EXPECT_EQ(stats.bytes_sent, got->bytes_sent);
    EXPECT_EQ(stats.bytes_received, got->bytes_received);
    EXPECT_EQ(stats.optimizer_state_bytes, got->optimizer_state_bytes);
  };
  Message hb;
  hb.payload = Heartbeat{3, false, stats};
  auto beat = round_trip(hb);
  ASSERT_TRUE(beat.has_value()) << beat.error().message;
  same(std::get<Heartbeat>(beat->payload).stats);
  auto m = update_with({{"w", torch::ones({2})}});
  std::get<Update>(m.payload).stats = stats;
  auto update = round_trip(m);
  ASSERT_TRUE(update.has_value()) << update.error().message;
  same(std::get<Update>(update->payload).stats);
  EXPECT_FALSE(std::get<Update>(round_trip(update_with({{"w", torch::ones({2})}}))->payload).stats);
}

TEST(Wire, AShortMessageCannotDeclareAHugeList) {
  // A message of a few hundred bytes whose metrics list is rewritten to declare 20 million
  // zero-sized elements (a VOID list, which Cap'n Proto reads as structs of nothing): it must be
  // refused before anything is allocated for it, not decoded into 800 MB of metrics.
  auto encoded = encode(update_with({}));
  auto frames = to_messages(encoded);
  ASSERT_EQ(frames.size(), 2U) << "one segment";
  auto* words = static_cast<std::uint64_t*>(frames[1].data());
  bool patched = false;
  for (std::size_t i = 0; i < frames[1].size() / 8 && !patched; ++i) {
    const std::uint64_t w = words[i];
    // The first empty inline-composite list pointer is the Update's metrics (pointer 0).
    if ((w & 3) == 1 && ((w >> 32) & 7) == 7 && (w >> 35) == 0) {
      words[i] = (w & 0xFFFFFFFFULL) | (std::uint64_t{20'000'000} << 35);  // VOID, 20M elements
      patched = true;
    }
  }
  ASSERT_TRUE(patched);
  expect_error(decode(std::move(frames)), Errc::malformed);
}

TEST(Wire, RandomBytesAreMalformed) {
  std::mt19937 rng(7);
  for (int i = 0; i < 50; ++i) {
    std::vector<zmq::message_t> frames;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < n; ++f) {
      std::vector<std::uint8_t> bytes(rng() % 200);
      for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
      frames.emplace_back(bytes.data(), bytes.size());
    }
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
  expect_error(decode({}), Errc::malformed);
}

TEST(Wire, BadHeadersAreMalformed) {
  const Message m = update_with({{"w", random_tensor(at::kFloat, {2048})}});
  auto encoded = encode(m);
  ASSERT_GE(encoded.frames.size(), 3U);

  {
    auto frames = to_messages(encoded);
    static_cast<char*>(frames[0].data())[0] = 'X';
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
  {
    auto frames = to_messages(encoded);
    static_cast<std::uint8_t*>(frames[0].data())[6] += 1;  // one segment too many announced
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
  {
    auto frames = to_messages(encoded);
    static_cast<std::uint8_t*>(frames[0].data())[4] = 9;  // framing version 9
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
  {
    auto frames = to_messages(encoded);
    frames[0] = zmq::message_t(frames[0].data(), 7);  // short header
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
  {
    auto frames = to_messages(encoded);
    frames[1] = zmq::message_t(frames[1].data(), frames[1].size() - 3);  // not whole words
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
}

TEST(Wire, TruncatedMessagesAreMalformed) {
  const Message m = update_with({{"w", random_tensor(at::kFloat, {2048})}});
  auto encoded = encode(m);
  ASSERT_GE(encoded.frames.size(), 3U);
  {
    // The last frame never arrived.
    auto frames = to_messages(encoded);
    frames.pop_back();
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
  {
    // The last frame never arrived and the header was rewritten to match.
    auto frames = to_messages(encoded);
    frames.pop_back();
    static_cast<std::uint8_t*>(frames[0].data())[6] -= 1;
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
  {
    // Every segment cut to its first half (whole words): pointers lead out of bounds.
    auto frames = to_messages(encoded);
    for (std::size_t i = 1; i < frames.size(); ++i) {
      const std::size_t half = std::max<std::size_t>(8, frames[i].size() / 16 * 8);
      frames[i] = zmq::message_t(frames[i].data(), half);
    }
    expect_error(decode(std::move(frames)), Errc::malformed);
  }
}

TEST(Wire, CorruptedSegmentsNeverCrash) {
  const Message m = update_with({{"a", random_tensor(at::kFloat, {3, 3})},
                                 {"b", random_tensor(at::kLong, {700})}});
  auto encoded = encode(m);
  std::mt19937 rng(11);
  int failures = 0;
  for (int i = 0; i < 500; ++i) {
    auto frames = to_messages(encoded);
    auto& seg = frames[1];
    for (int k = 0; k < 4; ++k) {
      static_cast<std::uint8_t*>(seg.data())[rng() % seg.size()] = static_cast<std::uint8_t>(rng());
    }
    auto r = decode(std::move(frames));
    if (!r.has_value()) {
      ++failures;
      EXPECT_TRUE(r.error().code == Errc::malformed || r.error().code == Errc::protocol_version)
          << r.error().message;
    }
  }
  EXPECT_GT(failures, 0);
}

TEST(Wire, MessageOverTheLimitIsMalformed) {
  WireLimits limits;
  limits.max_message_bytes = 64 * 1024;
  const Message m = update_with({{"w", random_tensor(at::kFloat, {32 * 1024})}});  // 128 KiB
  auto r = decode(to_messages(encode(m)), limits);
  expect_error(r, Errc::malformed);
  EXPECT_NE(std::string::npos, r.error().message.find("limit")) << r.error().message;
}

TEST(Wire, OtherProtocolMajorIsRefusedNamingBothVersions) {
  Message m = update_with({{"w", random_tensor(at::kFloat, {4})}});
  m.protocol_major = 2;
  auto r = round_trip(m);
  expect_error(r, Errc::protocol_version);
  EXPECT_EQ("peer speaks protocol 2.x, this build speaks 1.x", r.error().message);
}

class WireHandBuilt : public ::testing::Test {
 protected:
  schema::Tensor::Builder tensor() {
    auto env = builder_->initRoot<schema::Envelope>();
    env.setProtocolMajor(kProtocolMajor);
    return env.getPayload().initUpdate().initTensors(1)[0];
  }
  Expected<Message> decode_built() { return decode(frame_builder(*builder_)); }
  // Held by pointer: the builder's destructor may throw, gtest's fixture destructor may not.
  std::unique_ptr<capnp::MallocMessageBuilder> builder_ =
      std::make_unique<capnp::MallocMessageBuilder>();
};

TEST_F(WireHandBuilt, CheckedBuilderDecodes) {
  auto t = tensor();
  t.setDtype(schema::DType::I32);
  t.initShape(1).set(0, 2);
  const std::int32_t values[2] = {5, -6};
  t.initChunks(1).set(0, capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(values), 8));
  auto r = decode_built();
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(-6, tensors_of(*r)[0].tensor[1].item<std::int32_t>());
}

TEST_F(WireHandBuilt, UnknownDtypeIsMalformed) {
  auto t = tensor();
  t.setDtype(static_cast<schema::DType>(42));
  t.initShape(1).set(0, 1);
  const std::uint8_t b[4] = {};
  t.initChunks(1).set(0, capnp::Data::Reader(b, 4));
  expect_error(decode_built(), Errc::malformed);
}

TEST_F(WireHandBuilt, ShapeNotMatchingBytesIsMalformed) {
  auto t = tensor();
  t.setDtype(schema::DType::F32);
  t.initShape(2).set(0, 3);
  t.getShape().set(1, 3);  // 36 bytes needed
  const std::uint8_t b[32] = {};
  t.initChunks(1).set(0, capnp::Data::Reader(b, sizeof b));
  expect_error(decode_built(), Errc::malformed);
}

TEST_F(WireHandBuilt, NegativeDimensionIsMalformed) {
  auto t = tensor();
  t.setDtype(schema::DType::U8);
  t.initShape(2).set(0, -2);
  t.getShape().set(1, -2);  // product 4 would match the bytes
  const std::uint8_t b[4] = {};
  t.initChunks(1).set(0, capnp::Data::Reader(b, sizeof b));
  expect_error(decode_built(), Errc::malformed);
}

TEST_F(WireHandBuilt, OverflowingShapeIsMalformed) {
  auto t = tensor();
  t.setDtype(schema::DType::F64);
  auto shape = t.initShape(3);
  for (unsigned d = 0; d < 3; ++d) shape.set(d, 1LL << 40);  // 2^120 elements
  t.initChunks(0);
  expect_error(decode_built(), Errc::malformed);
}


namespace flotilla {
namespace {

TEST(Wire, AMessageWithMoreTensorsThanTheLimitIsRefusedBeforeReserving) {
  TensorList many;
  for (int i = 0; i < 11; ++i) {
    std::string name = "t";
    name += std::to_string(i);
    many.push_back({name, torch::zeros({1})});
  }
  WireLimits limits;
  limits.max_tensors = 10;
  auto r = round_trip(update_with(many), limits);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::malformed);
  EXPECT_NE(r.error().message.find("11 tensors, more than the limit of 10"), std::string::npos)
      << r.error().message;
  limits.max_tensors = 11;
  EXPECT_TRUE(round_trip(update_with(many), limits).has_value());
}

}  // namespace
}  // namespace flotilla

Message task_message(Task t) {
  Message m;
  m.sender = "aggregator";
  m.payload = std::move(t);
  return m;
}

TEST(Wire, ATaskNamesTheTensorsTheClientKeeps) {
  Task t{3, 4, {{"fc1.lora_A.weight", at::ones({2, 3})}}, {}};
  t.keep_local = {"fc1.lora_B.weight", "fc2.lora_B.weight"};
  auto r = round_trip(task_message(t));
  ASSERT_TRUE(r) << r.error().message;
  const auto& got = std::get<Task>(r->payload);
  EXPECT_EQ(got.keep_local, t.keep_local);
  EXPECT_EQ(got.tensors.size(), 1U);
  // A task without any (every method but FedSA-LoRA's kind) decodes with none.
  Task plain{3, 4, {}, {}};
  auto p = round_trip(task_message(plain));
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_TRUE(std::get<Task>(p->payload).keep_local.empty());
}

}  // namespace
}  // namespace flotilla

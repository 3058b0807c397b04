// The tensor codec: a well-formed envelope (built here with Cap'n Proto) carrying tensors
// whose dtype, shape and chunks come from the input, so the fuzzer spends its time on the
// tensor rules rather than on finding valid Cap'n Proto. The oracle is independent of the
// decoder: a tensor list decodes if and only if every dtype is known, no dimension is negative
// and each tensor's chunks hold exactly its shape's bytes; then names, shapes, dtypes and bytes
// are what was sent, and re-encoding gives bytes that decode to the same.
#include "fuzz.hpp"

#include "runtime/protocol/wire.hpp"
#include "schemas/flotilla.capnp.h"

#include <ATen/ATen.h>
#include <capnp/message.h>

#include <cstring>
#include <limits>

namespace {

namespace s = flotilla::schema;
using flotilla::fuzz::require;

struct Sent {
  std::string name;
  unsigned dtype = 0;
  std::vector<std::int64_t> shape;
  std::string bytes;  ///< the chunks, concatenated
};

constexpr std::size_t kElementBytes[] = {4, 2, 2, 8, 8, 4, 1};  // by s::DType (f32 .. u8)
constexpr at::ScalarType kScalar[] = {at::kFloat, at::kHalf, at::kBFloat16, at::kLong,
                                      at::kDouble, at::kInt, at::kByte};
constexpr unsigned kKnownDTypes = 7;

/// Whether the decoder must accept the tensor (nullopt: either answer is right, for shapes
/// with a zero dimension whose other dimensions LibTorch cannot lay out).
std::optional<bool> must_decode(const Sent& t) {
  if (t.dtype >= kKnownDTypes) return false;
  std::uint64_t numel = 1;
  bool overflow = false;
  std::uint64_t nonzero = 1;
  bool nonzero_overflow = false;
  for (auto d : t.shape) {
    if (d < 0) return false;
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel);
    if (d != 0) {
      nonzero_overflow = nonzero_overflow ||
                         __builtin_mul_overflow(nonzero, static_cast<std::uint64_t>(d), &nonzero);
    }
  }
  std::uint64_t expected = 0;
  if (overflow || __builtin_mul_overflow(numel, kElementBytes[t.dtype], &expected)) return false;
  if (expected != t.bytes.size()) return false;
  if (numel == 0 && (nonzero_overflow || nonzero > std::uint64_t{std::numeric_limits<std::int64_t>::max()})) {
    return std::nullopt;
  }
  return true;
}

std::int64_t dimension(flotilla::fuzz::Input& in) {
  const std::uint8_t mode = in.u8();
  if (mode < 0xf0) return mode % 9;  // mostly small shapes that can match the bytes
  return static_cast<std::int64_t>(in.u64());
}

std::vector<zmq::message_t> frames(capnp::MallocMessageBuilder& builder) {
  auto segments = builder.getSegmentsForOutput();
  std::vector<zmq::message_t> out;
  const std::uint8_t header[8] = {'F', 'L', 'T', 'L', 1, 0,
                                  static_cast<std::uint8_t>(segments.size() & 0xff),
                                  static_cast<std::uint8_t>(segments.size() >> 8)};
  out.emplace_back(header, sizeof header);
  for (auto seg : segments) out.emplace_back(seg.begin(), seg.size() * sizeof(capnp::word));
  return out;
}

const flotilla::TensorList* tensors_of(const flotilla::Payload& p) {
  if (const auto* u = std::get_if<flotilla::Update>(&p)) return &u->tensors;
  if (const auto* t = std::get_if<flotilla::Task>(&p)) return &t->tensors;
  return nullptr;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flotilla;
  fuzz::quiet();
  fuzz::Input in({data, size});
  const bool as_task = (in.u8() & 1) != 0;
  std::vector<Sent> sent(in.u8() % 5);
  capnp::MallocMessageBuilder builder;
  auto env = builder.initRoot<s::Envelope>();
  env.setProtocolMajor(kProtocolMajor);
  env.setProtocolMinor(kProtocolMinor);
  env.setRunId("fuzz");
  env.setSender("client-0");
  auto list = as_task ? env.initPayload().initTask().initTensors(sent.size())
                      : env.initPayload().initUpdate().initTensors(sent.size());
  for (std::size_t k = 0; k < sent.size(); ++k) {
    auto& t = sent[k];
    auto out = list[k];
    t.name = in.text();
    out.setName(capnp::Text::Reader(t.name.data(), t.name.size()));  // NULs kept
    t.dtype = in.u8() % 9;  // 7 and 8 are not dtypes
    out.setDtype(static_cast<s::DType>(t.dtype));
    t.shape.resize(in.u8() % 5);
    auto shape = out.initShape(t.shape.size());
    for (unsigned i = 0; i < t.shape.size(); ++i) shape.set(i, t.shape[i] = dimension(in));
    auto chunks = out.initChunks(in.u8() % 4);  // chunk boundaries are the fuzzer's too
    for (unsigned i = 0; i < chunks.size(); ++i) {
      auto b = in.bytes(in.u16() % 300);
      chunks.set(i, kj::arrayPtr(b.data(), b.size()));
      t.bytes.append(reinterpret_cast<const char*>(b.data()), b.size());
    }
  }

  auto decoded = decode(frames(builder));
  bool expect_any = true;  // some tensor's outcome is open: skip the exact-outcome check
  bool expect_ok = true;
  for (const auto& t : sent) {
    const auto must = must_decode(t);
    if (!must) expect_any = false;
    else expect_ok = expect_ok && *must;
  }
  if (expect_any) {
    require(decoded.has_value() == expect_ok,
            expect_ok ? "valid tensors decode: " + (decoded ? std::string() : decoded.error().message)
                      : "invalid tensors are refused");
  }
  if (!decoded) {
    require(decoded.error().code == Errc::malformed, "a bad tensor is Errc::malformed");
    return 0;
  }
  const TensorList* got = tensors_of(decoded->payload);
  require(got != nullptr && got->size() == sent.size(), "every tensor sent arrives");
  for (std::size_t k = 0; k < sent.size(); ++k) {
    const auto& t = (*got)[k].tensor;
    require((*got)[k].name == sent[k].name, "names arrive unchanged");
    require(t.sizes().vec() == sent[k].shape, "shapes arrive unchanged");
    require(t.scalar_type() == kScalar[sent[k].dtype], "dtypes arrive unchanged");
    require(t.is_contiguous() && static_cast<std::size_t>(t.nbytes()) == sent[k].bytes.size(),
            "a tensor holds its bytes, contiguous");
    require(sent[k].bytes.empty() ||
                std::memcmp(t.data_ptr(), sent[k].bytes.data(), sent[k].bytes.size()) == 0,
            "bytes arrive unchanged");
  }
  // Re-encoded (as a relay or a checkpoint would), the tensors decode to the same bytes.
  const auto re = encode(*decoded);
  auto back = decode(fuzz::received(re.frames));
  require(back.has_value(), "re-encoded tensors decode");
  const TensorList* twice = tensors_of(back->payload);
  require(twice != nullptr && twice->size() == got->size(), "re-encoded tensors all arrive");
  for (std::size_t k = 0; k < got->size(); ++k) {
    require((*twice)[k].tensor.sizes() == (*got)[k].tensor.sizes() &&
                (*twice)[k].tensor.nbytes() == (*got)[k].tensor.nbytes() &&
                ((*got)[k].tensor.nbytes() == 0 ||
                 std::memcmp((*twice)[k].tensor.data_ptr(), (*got)[k].tensor.data_ptr(),
                             (*got)[k].tensor.nbytes()) == 0),
            "re-encoded tensors keep shape and bytes");
  }
  return 0;
}

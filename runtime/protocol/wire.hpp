#pragma once
/// Encoding Messages as Cap'n Proto Envelopes framed for ZeroMQ, and decoding them back.
///
/// Framing: frame 0 is an 8-byte header ("FLTL", framing version u16 = 1, segment count u16,
/// little-endian); frames 1..n are the Cap'n Proto segments, one per frame. Tensor bytes are
/// referenced, never copied, when encoding (each large tensor chunk becomes its own segment);
/// decoding: a tensor whose chunk(s) lie in one range of memory points into the received
/// frames (kept alive by the tensor itself), others are copied once into one buffer (reused
/// across messages); a frame ZeroMQ hands over unaligned is copied first.
#include "runtime/base/error.hpp"
#include "runtime/protocol/message.hpp"

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include <zmq.hpp>

namespace flotilla {

/// The frames of one encoded message. `owner` keeps the Cap'n Proto builder and the source
/// tensors alive for as long as anything (e.g. ZeroMQ's zero-copy send) uses the frames.
struct EncodedFrames {
  std::vector<std::span<const std::byte>> frames;
  std::shared_ptr<void> owner;
  [[nodiscard]] std::size_t total_bytes() const noexcept;
};

struct WireLimits {
  /// Largest message accepted, in bytes, checked before anything is allocated for it.
  std::uint64_t max_message_bytes = 8ULL << 30;
  /// Largest Data chunk a tensor is split into when encoding (Cap'n Proto's limit is 2^29-1).
  /// Each chunk is one ZeroMQ frame, which the receiver's ZeroMQ mallocs whole: 16 MiB stays
  /// under glibc's mmap threshold (see transport.cpp), so received frames reuse heap memory
  /// instead of being freshly faulted in for every message.
  std::uint64_t chunk_bytes = 16ULL << 20;
  /// Most tensors one message may carry (decoding refuses more before reserving for them).
  std::uint64_t max_tensors = 100'000;
};

/// Encodes a message. Tensors must be contiguous CPU tensors of a supported dtype (f32, f16,
/// bf16, f64, i64, i32, u8); others are made so (a copy) first.
[[nodiscard]] EncodedFrames encode(const Message& message, const WireLimits& limits = {});

/// Decodes received frames. Garbage, truncation, an unsupported dtype, inconsistent shapes
/// and another protocol major version are errors (Errc::malformed / Errc::protocol_version),
/// never crashes. On Errc::protocol_version the error message names both versions.
[[nodiscard]] Expected<Message> decode(std::vector<zmq::message_t> frames,
                                       const WireLimits& limits = {});

}  // namespace flotilla

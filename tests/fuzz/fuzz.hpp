#pragma once
/// What the fuzz targets (tests/fuzz/*_fuzz.cpp) share: libFuzzer's entry point, a reader of
/// typed fields off the front of an input, the encoding of a multi-frame wire message as one
/// input, and the check that turns a broken property into a finding (an abort, which libFuzzer
/// reports as it reports a crash). See docs/fuzzing.md.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace flotilla::fuzz {

/// Typed fields read off the front of a fuzzer's input, little-endian; past its end every read
/// yields zeros (or nothing), so any input is a valid sequence of fields.
class Input {
 public:
  explicit Input(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}
  std::uint8_t u8();
  std::uint16_t u16();
  std::uint32_t u32();
  std::uint64_t u64();
  /// Up to `max` bytes (fewer at the end of the input).
  std::span<const std::uint8_t> bytes(std::size_t max);
  /// A length-prefixed (u8) string of at most 255 bytes.
  std::string text();
  [[nodiscard]] std::span<const std::uint8_t> rest() const { return bytes_.subspan(pos_); }
  [[nodiscard]] bool empty() const { return pos_ >= bytes_.size(); }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t pos_ = 0;
};

/// Most segment frames one input is split into (the header may announce more: decoding must
/// then refuse the message for the mismatch).
inline constexpr std::size_t kMaxSegmentFrames = 16;

/// A wire message as one fuzz input: its first 8 bytes are frame 0 (the header); the header's
/// segment count (at most kMaxSegmentFrames) says how many frames follow, each but the last as
/// a u32 length and that many bytes, the last taking what is left. An input shorter than a
/// header is one frame.
[[nodiscard]] std::vector<zmq::message_t> frames_of(std::span<const std::uint8_t> input);
/// The inverse, for writing seeds: frames (as encode() gives them) as one input.
[[nodiscard]] std::string input_of(const std::vector<std::span<const std::byte>>& frames);

/// Encoded frames as a receiver gets them: copies, as ZeroMQ hands them over.
[[nodiscard]] std::vector<zmq::message_t> received(const std::vector<std::span<const std::byte>>& frames);

/// Aborts naming the property that failed, unless `ok`.
void require(bool ok, std::string_view what);

/// Quiets Flotilla's loggers (warnings about odd but accepted input would flood the fuzzer).
void quiet();

}  // namespace flotilla::fuzz

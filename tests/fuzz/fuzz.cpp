#include "fuzz.hpp"

#include "runtime/base/log.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace flotilla::fuzz {
namespace {

template <typename T>
T little_endian(std::span<const std::uint8_t> b) {
  T v = 0;
  for (std::size_t i = 0; i < b.size(); ++i) v |= static_cast<T>(b[i]) << (8 * i);
  return v;
}

}  // namespace

std::span<const std::uint8_t> Input::bytes(std::size_t max) {
  const std::size_t n = std::min(max, bytes_.size() - std::min(pos_, bytes_.size()));
  auto out = bytes_.subspan(std::min(pos_, bytes_.size()), n);
  pos_ += n;
  return out;
}
std::uint8_t Input::u8() { return little_endian<std::uint8_t>(bytes(1)); }
std::uint16_t Input::u16() { return little_endian<std::uint16_t>(bytes(2)); }
std::uint32_t Input::u32() { return little_endian<std::uint32_t>(bytes(4)); }
std::uint64_t Input::u64() { return little_endian<std::uint64_t>(bytes(8)); }
std::string Input::text() {
  auto b = bytes(u8());
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

std::vector<zmq::message_t> frames_of(std::span<const std::uint8_t> input) {
  std::vector<zmq::message_t> frames;
  if (input.size() < 8) {
    frames.emplace_back(input.data(), input.size());
    return frames;
  }
  frames.emplace_back(input.data(), 8);
  const std::size_t announced = input[6] | (input[7] << 8);
  const std::size_t count = std::clamp<std::size_t>(announced, 1, kMaxSegmentFrames);
  Input in(input.subspan(8));
  for (std::size_t i = 0; i + 1 < count && !in.empty(); ++i) {
    auto b = in.bytes(in.u32());
    frames.emplace_back(b.data(), b.size());
  }
  auto last = in.rest();
  frames.emplace_back(last.data(), last.size());
  return frames;
}

std::string input_of(const std::vector<std::span<const std::byte>>& frames) {
  std::string out;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    const auto& f = frames[i];
    if (i > 0 && i + 1 < frames.size()) {
      const auto n = static_cast<std::uint32_t>(f.size());
      for (int k = 0; k < 4; ++k) out.push_back(static_cast<char>((n >> (8 * k)) & 0xff));
    }
    out.append(reinterpret_cast<const char*>(f.data()), f.size());
  }
  return out;
}

std::vector<zmq::message_t> received(const std::vector<std::span<const std::byte>>& frames) {
  std::vector<zmq::message_t> out;
  for (const auto& f : frames) out.emplace_back(f.data(), f.size());
  return out;
}

void require(bool ok, std::string_view what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz property violated: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

void quiet() {
  static const bool done = set_log_level("off");
  (void)done;
}

}  // namespace flotilla::fuzz

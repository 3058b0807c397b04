// The envelope decoder: any bytes, split into frames as a peer's message would arrive
// (fuzz.hpp). Decoding never crashes, never throws, and never makes an allocation over
// scripts/fuzz.sh's limit (512 MiB, for inputs of at most 64 KiB); a message that decodes
// encodes back to bytes that decode, and that second encoding is identical to the first.
#include "fuzz.hpp"

#include "runtime/protocol/wire.hpp"

namespace {

std::string joined(const flotilla::EncodedFrames& e) {
  std::string out;
  for (const auto& f : e.frames) out.append(reinterpret_cast<const char*>(f.data()), f.size());
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flotilla;
  fuzz::quiet();
  WireLimits limits;
  limits.max_message_bytes = 1 << 20;
  limits.max_tensors = 64;
  auto decoded = decode(fuzz::frames_of({data, size}), limits);
  if (!decoded) {
    fuzz::require(decoded.error().code == Errc::malformed ||
                      decoded.error().code == Errc::protocol_version,
                  "a refused message is malformed or of another version: " + decoded.error().message);
    return 0;
  }
  const auto first = encode(*decoded);
  auto again = decode(fuzz::received(first.frames));
  fuzz::require(again.has_value(), "what encode() wrote decodes");
  fuzz::require(joined(encode(*again)) == joined(first), "encode(decode(encode(m))) == encode(m)");
  return 0;
}

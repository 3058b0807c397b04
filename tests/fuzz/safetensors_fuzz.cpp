// The safetensors reader (checkpoints, users' model files): any bytes. Refused with
// Errc::malformed or read; what is read encodes back to a file that reads the same (names,
// dtypes, shapes, bytes and metadata).
#include "fuzz.hpp"

#include "runtime/storage/safetensors.hpp"

#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flotilla;
  fuzz::quiet();
  auto read = decode_safetensors({reinterpret_cast<const std::byte*>(data), size}, "fuzz.safetensors");
  if (!read) {
    fuzz::require(read.error().code == Errc::malformed,
                  "a bad file is Errc::malformed: " + read.error().message);
    return 0;
  }
  auto written = encode_safetensors(read->tensors, read->metadata);
  fuzz::require(written.has_value(),
                "what was read can be written: " + (written ? std::string() : written.error().message));
  auto back = decode_safetensors({reinterpret_cast<const std::byte*>(written->data()), written->size()},
                                 "rewritten.safetensors");
  fuzz::require(back.has_value(), "what was written reads");
  fuzz::require(back->metadata == read->metadata, "metadata survives a rewrite");
  fuzz::require(back->tensors.size() == read->tensors.size(), "every tensor survives a rewrite");
  for (std::size_t i = 0; i < read->tensors.size(); ++i) {
    const auto& a = read->tensors[i];
    const auto& b = back->tensors[i];
    fuzz::require(a.name == b.name && a.tensor.scalar_type() == b.tensor.scalar_type() &&
                      a.tensor.sizes() == b.tensor.sizes(),
                  "a tensor keeps its name, dtype and shape");
    fuzz::require(a.tensor.nbytes() == 0 ||
                      std::memcmp(a.tensor.data_ptr(), b.tensor.data_ptr(), a.tensor.nbytes()) == 0,
                  "a tensor keeps its bytes");
  }
  return 0;
}

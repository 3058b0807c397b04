#pragma once
/// The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header
/// naming each tensor's dtype, shape and byte range, then the raw little-endian data. What
/// checkpoints of the aggregator are written in, and what users' model checkpoints come as.
///
/// Reading is bounded before anything is allocated: the header's length against the file's,
/// every tensor's byte range against the data and against its dtype and shape (a header that
/// lies about offsets, overlaps, or shapes that overflow is refused, naming the tensor).
#include "runtime/base/tensor.hpp"

#include <cstddef>
#include <filesystem>
#include <map>
#include <span>
#include <string>

namespace flotilla {

/// Free-form string pairs stored in the header's "__metadata__".
using SafetensorsMetadata = std::map<std::string, std::string>;

struct Safetensors {
  /// In the order of their data in the file (the order they were written in).
  TensorList tensors;
  SafetensorsMetadata metadata;
};

/// The largest header read (the format's own limit): bounds the JSON parsed.
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100ull << 20;

/// The file's bytes for `tensors` (in their order; moved to the CPU, made contiguous). Dtypes:
/// float64/32/16, bfloat16, int64/32/16/8, uint8, bool. Errc::invalid_argument for another
/// dtype, an empty or duplicate name, or the name "__metadata__".
[[nodiscard]] Expected<std::string> encode_safetensors(const TensorList& tensors,
                                                       const SafetensorsMetadata& metadata = {});

/// Tensors from a safetensors file's bytes (copied out of them); `where` names the source in
/// errors (Errc::malformed).
[[nodiscard]] Expected<Safetensors> decode_safetensors(std::span<const std::byte> bytes,
                                                       const std::string& where);

/// Reads a file, memory-mapped: the tensors view the mapping (private, copy-on-write) where
/// their data is aligned, so a large checkpoint is not copied into memory first.
[[nodiscard]] Expected<Safetensors> read_safetensors(const std::filesystem::path& path);

/// Writes a file atomically and durably (runtime/storage/durable.hpp).
[[nodiscard]] Expected<void> write_safetensors(const std::filesystem::path& path,
                                               const TensorList& tensors,
                                               const SafetensorsMetadata& metadata = {});

}  // namespace flotilla

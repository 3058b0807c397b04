#include "runtime/storage/safetensors.hpp"

#include "runtime/storage/durable.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <memory>
#include <set>

namespace flotilla {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this build assumes a little-endian host");

struct DtypeName {
  at::ScalarType type;
  const char* name;
};

constexpr DtypeName kDtypes[] = {
    {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kHalf, "F16"},  {at::kBFloat16, "BF16"},
    {at::kLong, "I64"},   {at::kInt, "I32"},   {at::kShort, "I16"}, {at::kChar, "I8"},
    {at::kByte, "U8"},    {at::kBool, "BOOL"},
};

const char* name_of(at::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d.name;
  }
  return nullptr;
}

std::optional<at::ScalarType> type_of(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.type;
  }
  return std::nullopt;
}

/// The most dimensions a tensor may declare (bounds the shape before it is read).
constexpr std::size_t kMaxDims = 16;

Error malformed(const std::string& where, const std::string& what) {
  return Error{Errc::malformed, where + ": " + what};
}

/// Decodes `bytes`; the tensors view them (kept alive by `keep`) where aligned and `keep` is
/// given, else they are copied out.
Expected<Safetensors> decode(std::span<const std::byte> bytes, const std::string& where,
                             const std::shared_ptr<MappedFile>& keep) {
  if (bytes.size() < 8) {
    return malformed(where, "truncated: " + std::to_string(bytes.size()) +
                                " bytes, less than the 8-byte header length");
  }
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxSafetensorsHeader) {
    return malformed(where, "the header claims " + std::to_string(header_len) +
                                " bytes, more than the format's limit of " +
                                std::to_string(kMaxSafetensorsHeader));
  }
  if (header_len > bytes.size() - 8) {
    return malformed(where, "truncated: the header claims " + std::to_string(header_len) +
                                " bytes, the file has " + std::to_string(bytes.size() - 8) +
                                " after the length");
  }
  const auto* header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
  // In the file's order: tensors of no bytes share an offset, and keep the order they were
  // written in (a std::map would sort them by name).
  nlohmann::ordered_json header;
  try {
    header = nlohmann::ordered_json::parse(header_begin, header_begin + header_len);
  } catch (const nlohmann::json::exception& e) {
    return malformed(where, std::string("the header is not JSON: ") + e.what());
  }
  if (!header.is_object()) return malformed(where, "the header is not a JSON object");
  const auto data = bytes.subspan(8 + header_len);

  Safetensors out;
  struct Entry {
    std::string name;
    at::ScalarType type;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0, end = 0;
  };
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return malformed(where, "__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return malformed(where, "__metadata__ '" + k + "' is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (name.empty()) return malformed(where, "a tensor has an empty name");
    const std::string t = "tensor '" + name + "'";
    if (!value.is_object()) return malformed(where, t + " is not described by an object");
    const auto dtype = value.find("dtype");
    const auto shape = value.find("shape");
    const auto offsets = value.find("data_offsets");
    if (dtype == value.end() || !dtype->is_string()) return malformed(where, t + " has no dtype");
    const auto type = type_of(dtype->get<std::string>());
    if (!type) {
      return malformed(where, t + " has dtype " + dtype->get<std::string>() +
                                  ", which Flotilla does not read (F64, F32, F16, BF16, I64, I32, "
                                  "I16, I8, U8, BOOL)");
    }
    if (shape == value.end() || !shape->is_array() || shape->size() > kMaxDims) {
      return malformed(where, t + " has no shape (an array of at most " + std::to_string(kMaxDims) +
                                  " sizes)");
    }
    if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
      return malformed(where, t + " has no data_offsets [begin, end]");
    }
    Entry e{name, *type, {}, (*offsets)[0].get<std::uint64_t>(), (*offsets)[1].get<std::uint64_t>()};
    // The byte count the shape and dtype imply, without overflow; and the strides (products of
    // the sizes, zeros counted as ones) within what a tensor can index.
    std::uint64_t count = at::elementSize(*type);
    std::uint64_t strides = 1;
    constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    for (const auto& d : *shape) {
      if (!d.is_number_unsigned()) return malformed(where, t + ": a size in its shape is not a count");
      const auto n = d.get<std::uint64_t>();
      const auto at_least_one = std::max<std::uint64_t>(n, 1);
      if (n > kMax || (n != 0 && count > std::numeric_limits<std::uint64_t>::max() / n) ||
          strides > kMax / at_least_one) {
        return malformed(where, t + ": its shape overflows");
      }
      count *= n;
      strides *= at_least_one;
      e.shape.push_back(static_cast<std::int64_t>(n));
    }
    if (e.begin > e.end || e.end > data.size()) {
      return malformed(where, t + ": data_offsets [" + std::to_string(e.begin) + ", " +
                                  std::to_string(e.end) + "] lie outside the " +
                                  std::to_string(data.size()) + " bytes of data");
    }
    if (e.end - e.begin != count) {
      return malformed(where, t + ": " + std::to_string(e.end - e.begin) + " bytes of data, its " +
                                  dtype->get<std::string>() + " shape " + shape_string(e.shape) +
                                  " needs " + std::to_string(count));
    }
    entries.push_back(std::move(e));
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].begin < entries[i - 1].end) {
      return malformed(where, "tensors '" + entries[i - 1].name + "' and '" + entries[i].name +
                                  "' overlap in the data");
    }
  }
  out.tensors.reserve(entries.size());
  for (const auto& e : entries) {
    const auto options = at::TensorOptions().dtype(e.type);
    const std::byte* at = data.data() + e.begin;
    at::Tensor tensor;
    if (keep && reinterpret_cast<std::uintptr_t>(at) % at::elementSize(e.type) == 0) {
      // The mapping is private (copy-on-write): writing into the tensor never changes the file.
      auto* mutable_at = keep->data() + (at - keep->bytes().data());
      tensor = at::from_blob(mutable_at, e.shape, [keep](void*) {}, options);
    } else {
      tensor = at::empty(e.shape, options);
      if (e.end > e.begin) std::memcpy(tensor.data_ptr(), at, e.end - e.begin);
    }
    out.tensors.push_back({e.name, std::move(tensor)});
  }
  return out;
}

}  // namespace

Expected<std::string> encode_safetensors(const TensorList& tensors, const SafetensorsMetadata& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> cpu;
  cpu.reserve(tensors.size());
  std::set<std::string> names;
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return Error{Errc::invalid_argument,
                   "safetensors: tensor name '" + t.name + "' is empty, reserved or repeated"};
    }
    const char* dtype = name_of(t.tensor.scalar_type());
    if (dtype == nullptr) {
      return Error{Errc::invalid_argument, "safetensors: tensor '" + t.name + "' has dtype " +
                                               std::string(c10::toString(t.tensor.scalar_type())) +
                                               ", which the format does not hold"};
    }
    auto c = t.tensor.detach().to(at::kCPU).contiguous();
    const auto size = static_cast<std::uint64_t>(c.nbytes());
    header[t.name] = {{"dtype", dtype}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + size}}};
    offset += size;
    cpu.push_back(std::move(c));
  }
  std::string json = header.dump();
  // Padded with spaces so that the data starts 8-byte aligned (as Hugging Face's writer does).
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + json.size() + offset);
  const std::uint64_t len = json.size();
  out.append(reinterpret_cast<const char*>(&len), 8);
  out += json;
  for (const auto& c : cpu) out.append(static_cast<const char*>(c.data_ptr()), c.nbytes());
  return out;
}

Expected<Safetensors> decode_safetensors(std::span<const std::byte> bytes, const std::string& where) {
  return decode(bytes, where, nullptr);
}

Expected<Safetensors> read_safetensors(const std::filesystem::path& path) {
  auto mapped = MappedFile::open(path);
  if (!mapped) return mapped.error();
  auto keep = std::make_shared<MappedFile>(std::move(mapped).value());
  return decode(keep->bytes(), path.string(), keep);
}

Expected<void> write_safetensors(const std::filesystem::path& path, const TensorList& tensors,
                                 const SafetensorsMetadata& metadata) {
  auto bytes = encode_safetensors(tensors, metadata);
  if (!bytes) return bytes.error();
  return write_file_durably(path, *bytes);
}

}  // namespace flotilla

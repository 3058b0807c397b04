// Helpers for LoRA aggregation plugins (fedit, ffa-lora, flexlora): adapter names, the
// adapted layers of a global model, and a weighted running mean. Header-only, LibTorch only.
//
// Adapter tensors follow the usual convention: layer "fc1" with rank r has
// "fc1.lora_A.weight" (r × in) and "fc1.lora_B.weight" (out × r); the layer computes
// W x + b + (alpha/r)·B·A·x.
#pragma once

#include "flotilla/fold.hpp"
#include "flotilla/plugin.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace flotilla::sdk::lora {

enum class Part { A, B };

struct AdapterName {
  std::string layer;  ///< "fc1"
  Part part;
};

/// "fc1.lora_A.weight" -> {fc1, A}; nothing for any other name.
inline std::optional<AdapterName> parse(const std::string& name) {
  static const std::string kA = ".lora_A.weight", kB = ".lora_B.weight";
  auto ends = [&](const std::string& suffix) {
    return name.size() > suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends(kA)) return AdapterName{name.substr(0, name.size() - kA.size()), Part::A};
  if (ends(kB)) return AdapterName{name.substr(0, name.size() - kB.size()), Part::B};
  return std::nullopt;
}

inline std::string a_name(const std::string& layer) { return layer + ".lora_A.weight"; }
inline std::string b_name(const std::string& layer) { return layer + ".lora_B.weight"; }

/// The rank a tensor of an adapter has: A's rows, B's columns.
inline std::int64_t rank_of(Part part, const at::Tensor& t) {
  return t.dim() == 2 ? (part == Part::A ? t.size(0) : t.size(1)) : -1;
}

/// "float [8, 784]".
inline std::string describe(const at::Tensor& t) {
  std::string s = std::string(c10::toString(t.scalar_type())) + " [";
  for (std::int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

/// One adapted layer of the global model.
struct Layer {
  std::string name;  ///< "fc1"
  std::int64_t in = 0, out = 0, rank = 0;
  at::Tensor a, b;   ///< the global model's A and B at create (on the host's device)
};

/// The position in `layers` of the layer called `name`, or -1.
inline long index_of(const std::vector<Layer>& layers, const std::string& name) {
  for (std::size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].name == name) return static_cast<long>(l);
  }
  return -1;
}

/// The layer update tensor `tensor` (an adapter of `layer`) belongs to; Rejected if the global
/// model has no adapter there.
inline std::size_t adapted_layer(const std::vector<Layer>& layers, const std::string& layer,
                                 const std::string& tensor) {
  const long l = index_of(layers, layer);
  if (l < 0) {
    throw Rejected("update carries '" + tensor + "', but the global model has no adapter on '" +
                   layer + "'");
  }
  return static_cast<std::size_t>(l);
}

/// The layers of `global` that carry both A and B (in the order of their A), checked for
/// consistent shapes. Invalid if a layer has only one of them or if none has any.
inline std::vector<Layer> layers(const NamedTensors& global, const Host& host,
                                 const std::string& method) {
  std::vector<Layer> out;
  auto find = [&](const std::string& name) -> const at::Tensor* {
    for (const auto& t : global) {
      if (t.name == name) return &t.tensor;
    }
    return nullptr;
  };
  for (const auto& t : global) {
    const auto parsed = parse(t.name);
    if (!parsed) continue;
    const auto* other = find(parsed->part == Part::A ? b_name(parsed->layer) : a_name(parsed->layer));
    if (other == nullptr) {
      throw Invalid(method + ": the global model has '" + t.name + "' but not its " +
                    (parsed->part == Part::A ? "B" : "A"));
    }
    if (parsed->part == Part::B) continue;  // recorded with its A
    const auto& a = t.tensor;
    const auto& b = *other;
    if (a.dim() != 2 || b.dim() != 2 || a.size(0) != b.size(1)) {
      throw Invalid(method + ": layer '" + parsed->layer + "' has A " + describe(a) + " and B " +
                    describe(b) + "; expected A [r, in] and B [out, r]");
    }
    Layer l;
    l.name = parsed->layer;
    l.rank = a.size(0);
    l.in = a.size(1);
    l.out = b.size(0);
    if (!a.device().is_meta()) l.a = a.to(host.device(), at::kFloat, false, true);
    if (!b.device().is_meta()) l.b = b.to(host.device(), at::kFloat, false, true);
    out.push_back(std::move(l));
  }
  if (out.empty()) {
    throw Invalid(method + " needs a model with LoRA adapters (\"<layer>.lora_A.weight\" and "
                           "\"<layer>.lora_B.weight\"); set lora.rank > 0 in the run config");
  }
  return out;
}

}  // namespace flotilla::sdk::lora

// Helpers for LoRA aggregation plugins: adapter names, the adapted layers of a global model
// (with their base weights for methods that write into them), checks of an update's adapters,
// and fresh adapters drawn like LoRA's init. Header-only, LibTorch only.
//
// Adapter tensors follow the usual convention: layer "fc1" with rank r has
// "fc1.lora_A.weight" (r × in) and "fc1.lora_B.weight" (out × r); the layer computes
// W x + b + (alpha/r)·B·A·x.
#pragma once

#include "flotilla/fold.hpp"
#include "flotilla/plugin.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
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
  at::Tensor w;      ///< its base weight "<layer>.weight" in float32, where asked for (with_base)
  at::ScalarType w_dtype = at::kFloat;  ///< the base weight's dtype in the global model
};

inline std::string w_name(const std::string& layer) { return layer + ".weight"; }

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
/// consistent shapes. Invalid if a layer has only one of them or if none has any. With
/// `with_base`, each layer's base weight "<layer>.weight" [out, in] too (kept in float32 on the
/// host's device: methods that fold something into it accumulate there).
inline std::vector<Layer> layers(const NamedTensors& global, const Host& host,
                                 const std::string& method, bool with_base = false) {
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
    if (with_base) {
      const auto* w = find(w_name(l.name));
      if (w == nullptr || !w->sizes().equals({l.out, l.in})) {
        throw Invalid(method + " writes into the base weight of each adapted layer, and the global "
                               "model has " + (w == nullptr ? "no '" + w_name(l.name) + "'" :
                               "'" + w_name(l.name) + "' " + describe(*w)) + " (expected [" +
                      std::to_string(l.out) + ", " + std::to_string(l.in) + "])");
      }
      l.w_dtype = w->scalar_type();
      if (!w->device().is_meta()) l.w = w->to(host.device(), at::kFloat, false, true);
    }
    out.push_back(std::move(l));
  }
  if (out.empty()) {
    throw Invalid(method + " needs a model with LoRA adapters (\"<layer>.lora_A.weight\" and "
                           "\"<layer>.lora_B.weight\"); set lora.rank > 0 in the run config");
  }
  return out;
}

/// Checks that update tensor `u` is an adapter of one of `layers` (not a base weight), at that
/// layer's rank, a floating matrix of its shape; returns which. Rejected naming the problem.
inline AdapterName expect_adapter(const std::vector<Layer>& layers, const Named& u,
                                  const std::string& method) {
  const auto parsed = parse(u.name);
  if (!parsed) {
    throw Rejected(method + " aggregates LoRA adapters only, and the update carries '" + u.name +
                   "' (a base weight): clients must train with lora.rank > 0 and send only "
                   "\"*.lora_A.weight\" and \"*.lora_B.weight\"");
  }
  const Layer& layer = layers[adapted_layer(layers, parsed->layer, u.name)];
  const auto rank = rank_of(parsed->part, u.tensor);
  if (rank != layer.rank) {
    throw Rejected(method + " needs every client at the global model's LoRA rank " +
                   std::to_string(layer.rank) + ", and '" + u.name + "' " +
                   (rank < 0 ? "is not a matrix" : "has rank " + std::to_string(rank)) +
                   " (mixed ranks: use a method that serves each client its rank, e.g. flexlora)");
  }
  const std::vector<std::int64_t> expected = parsed->part == Part::A
                                                 ? std::vector<std::int64_t>{layer.rank, layer.in}
                                                 : std::vector<std::int64_t>{layer.out, layer.rank};
  if (!u.tensor.sizes().equals(expected) || !at::isFloatingType(u.tensor.scalar_type())) {
    throw Rejected("tensor '" + u.name + "' is " + describe(u.tensor) +
                   ", expected a floating tensor of shape [" + std::to_string(expected[0]) + ", " +
                   std::to_string(expected[1]) + "]");
  }
  return *parsed;
}

/// A method that averages, weighted by examples, the adapter tensors clients send, each
/// checked by check_tensor (FedIT: A and B; FFA-LoRA: B; FedSA-LoRA: A): one running sum per
/// tensor, every update carrying what the version's first carried.
class AdapterMean : public Aggregator {
 public:
  AdapterMean(const Host& host, const NamedTensors& global, const std::string& method)
      : layers_(layers(global, host, method)), mean_(host) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    if (update.empty()) throw Rejected("update has no tensors");
    for (const auto& u : update) check_tensor(u);
    mean_.check_same(update);
  }
  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    mean_.add(update, info.weight);
  }
  /// Emits the mean of each tensor the updates carried; nothing else changes.
  void finalize(flotilla_output* out) override { mean_.emit(out); }
  void discard() override { mean_.clear(); }

 protected:
  /// Rejected unless the method takes update tensor `u`.
  virtual void check_tensor(const Named& u) const = 0;
  std::vector<Layer> layers_;

 private:
  WeightedMean mean_;
};

/// One adapted layer's A and B in an update (borrowed from it).
struct Pair {
  const at::Tensor* a = nullptr;
  const at::Tensor* b = nullptr;
};

/// Each adapted layer's A and B in `update`, at any rank (the same for a layer's A and B),
/// checked: adapters only, each once, floating, shapes [r, in] and [out, r]. Methods that
/// multiply B·A need both of every layer: Rejected naming the first one missing.
inline std::vector<Pair> pairs(const std::vector<Layer>& layers, const NamedTensors& update,
                               const std::string& method) {
  if (update.empty()) throw Rejected("update has no tensors");
  std::vector<Pair> found(layers.size());
  for (const auto& u : update) {
    const auto parsed = parse(u.name);
    if (!parsed) {
      throw Rejected(method + " aggregates LoRA adapters only, and the update carries '" + u.name +
                     "' (a base weight): clients must train with lora.rank > 0 and send only "
                     "\"*.lora_A.weight\" and \"*.lora_B.weight\"");
    }
    const auto l = adapted_layer(layers, parsed->layer, u.name);
    auto& slot = parsed->part == Part::A ? found[l].a : found[l].b;
    if (slot != nullptr) throw Rejected("update carries '" + u.name + "' twice");
    if (!at::isFloatingType(u.tensor.scalar_type())) {
      throw Rejected("tensor '" + u.name + "' is " + describe(u.tensor) + ", expected a floating tensor");
    }
    slot = &u.tensor;
  }
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto& layer = layers[l];
    if (found[l].a == nullptr || found[l].b == nullptr) {
      throw Rejected(method + " needs A and B of every adapted layer, and the update lacks '" +
                     (found[l].a == nullptr ? a_name(layer.name) : b_name(layer.name)) + "'");
    }
    const auto& a = *found[l].a;
    const auto& b = *found[l].b;
    if (a.dim() != 2 || b.dim() != 2 || a.size(0) < 1 || a.size(0) != b.size(1) ||
        a.size(1) != layer.in || b.size(0) != layer.out) {
      throw Rejected("layer '" + layer.name + "': A is " + describe(a) + " and B is " + describe(b) +
                     "; expected A [r, " + std::to_string(layer.in) + "] and B [" +
                     std::to_string(layer.out) + ", r] with the same r >= 1");
    }
  }
  return found;
}

/// scale · B·A in float32 on `device` (an adapter's contribution to its layer's weight).
inline at::Tensor product(const Pair& p, double scale, const c10::Device& device) {
  const auto a = p.a->to(device, at::kFloat);
  const auto b = p.b->to(device, at::kFloat);
  return b.mm(a).mul_(scale);
}

/// The running weighted mean, per adapted layer, of the clients' full-size updates
/// (alpha/r_k)·B_k·A_k (each client at its own rank r_k): what FlexLoRA decomposes, FLoRA's
/// stacked adapters multiply out to, and FedEx-LoRA's exact aggregate. One out × in float32
/// accumulator per layer on the host's device.
class ProductMean {
 public:
  ProductMean(const Host& host, std::size_t layers, double alpha)
      : host_(host), alpha_(alpha), sums_(layers) {}

  void add(const std::vector<Pair>& found, double weight) {
    const bool init = total_ == 0;
    for (std::size_t l = 0; l < sums_.size(); ++l) {
      const double scale = alpha_ / static_cast<double>(found[l].a->size(0));
      auto term = product(found[l], scale * weight, host_.device());
      if (init) {
        sums_[l] = std::move(term);
      } else {
        sums_[l].add_(term);
      }
    }
    total_ += weight;
  }
  [[nodiscard]] bool empty() const { return total_ == 0; }
  /// Layer l's mean, computed in place (call once per version, then clear()).
  at::Tensor mean(std::size_t l) { return sums_[l].mul_(1.0 / total_); }
  void clear() {
    for (auto& s : sums_) s = at::Tensor();
    total_ = 0;
  }

 private:
  Host host_;
  double alpha_;
  std::vector<at::Tensor> sums_;
  double total_ = 0;
};

/// An adapter tensor of a client's template (the names and shapes it trains): its layer, part
/// and rank, checked against the global model's layers; nothing for a tensor that is not an
/// adapter. Invalid when it fits no layer.
struct TemplateAdapter {
  std::size_t layer = 0;
  Part part = Part::A;
  std::int64_t rank = 0;
};
inline std::optional<TemplateAdapter> template_adapter(const std::vector<Layer>& layers,
                                                       const Named& t, std::uint32_t client) {
  const auto parsed = parse(t.name);
  if (!parsed) return std::nullopt;
  const auto l = index_of(layers, parsed->layer);
  if (l < 0) {
    throw Invalid("client " + std::to_string(client) + "'s model has '" + t.name +
                  "', but the global model has no adapter on '" + parsed->layer + "'");
  }
  const auto& layer = layers[static_cast<std::size_t>(l)];
  const auto rank = rank_of(parsed->part, t.tensor);
  const std::vector<std::int64_t> expected = parsed->part == Part::A
                                                 ? std::vector<std::int64_t>{rank, layer.in}
                                                 : std::vector<std::int64_t>{layer.out, rank};
  if (rank < 1 || !t.tensor.sizes().equals(expected)) {
    throw Invalid("client " + std::to_string(client) + "'s '" + t.name + "' is " + describe(t.tensor) +
                  ", which does not fit layer '" + layer.name + "' (" + std::to_string(layer.out) +
                  " x " + std::to_string(layer.in) + ")");
  }
  return TemplateAdapter{static_cast<std::size_t>(l), parsed->part, rank};
}

/// A fresh A for `layer` at `rank`, drawn like LoRA's init (kaiming-uniform with a = sqrt(5):
/// U(-1/sqrt(in), 1/sqrt(in))) from `seed`, row by row, so a lower rank's A is the first rows of
/// a higher rank's; on `device`, float32.
inline at::Tensor fresh_a(const Layer& layer, std::int64_t rank, std::uint64_t seed,
                          const c10::Device& device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double bound = 1.0 / std::sqrt(static_cast<double>(layer.in));
  auto a = at::empty({rank, layer.in}, at::kFloat);
  for (std::int64_t r = 0; r < rank; ++r) a[r].uniform_(-bound, bound, gen);
  return a.to(device);
}

/// The run's adapter scale alpha (flotilla_host.lora_alpha); Invalid when the host gives none.
inline double host_alpha(const Host& host, const std::string& method) {
  const double alpha = host.lora_alpha();
  if (!(alpha > 0) || !std::isfinite(alpha)) {
    throw Invalid(method + " needs the run's LoRA alpha (flotilla_host.lora_alpha: a host of ABI "
                           ">= 1.2 running a model with adapters), got " + std::to_string(alpha));
  }
  return alpha;
}

}  // namespace flotilla::sdk::lora

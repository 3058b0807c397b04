// flexlora: LoRA for clients of different ranks (Bai et al., 2024, "Federated Fine-tuning of
// Large Language Models under Heterogeneous Tasks and Client Resources", NeurIPS 2024).
//
// Client k trains adapters at its own rank r_k (lora.ranks) and sends A_k (r_k × in) and B_k
// (out × r_k). Per adapted layer the server averages the full-size updates, weighted by the
// clients' example counts p_k = n_k / Σ n,
//   M = Σ_k p_k · (alpha/r_k) · B_k·A_k        (out × in),
// and takes ONE SVD of it, M = U·S·Vᵀ. Every rank is served from that SVD, each the best
// approximation of M at that rank (Eckart–Young):
//   the global model at r = lora.rank:  A = Vᵀ[:r] (r × in), B = U[:, :r]·S[:r] / (alpha/r);
//   client k, through client_model:     the same at r_k.
// Before the first version a client gets the global adapters cut or padded to its rank (B is
// zero then, so nothing changes; padded rows of A are drawn like LoRA's init from a fixed seed).
// alpha must be the clients' lora.alpha (the runtime passes it unless [aggregator.options]
// sets it).
#include "flotilla/lora.hpp"
#include "flotilla/plugin.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace {

using flotilla::sdk::Host;
using flotilla::sdk::Invalid;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;
using flotilla::sdk::Rejected;
namespace lora = flotilla::sdk::lora;

class FlexLora final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = true;
  /// An SVD of the aggregated product per version: meant for a cohort, not every update.
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_NEEDS_COHORT;

  FlexLora(const Host& host, const Options& options, const NamedTensors& global)
      : host_(host),
        alpha_(options.real("alpha", 16.0)),
        layers_(lora::layers(global, host, "flexlora")),
        sums_(layers_.size()),
        svd_(layers_.size()) {
    if (!(alpha_ > 0) || !std::isfinite(alpha_)) {
      throw Invalid("flexlora: option 'alpha' must be > 0, got " + std::to_string(alpha_));
    }
  }

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    (void)pairs(update);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    const auto found = pairs(update);
    const bool init = total_ == 0;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto a = found[l].a->to(host_.device(), at::kFloat);
      const auto b = found[l].b->to(host_.device(), at::kFloat);
      const double scale = alpha_ / static_cast<double>(a.size(0));
      auto product = at::mm(b, a).mul_(scale * info.weight);
      if (init) {
        sums_[l] = std::move(product);
      } else {
        sums_[l].add_(product);
      }
    }
    total_ += info.weight;
  }

  void finalize(flotilla_output* out) override {
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto m = sums_[l].mul_(1.0 / total_);
      auto [u, s, vh] = at::linalg_svd(m, /*full_matrices=*/false);
      svd_[l] = Svd{u, s, vh};
      const auto& layer = layers_[l];
      const auto [a, b] = factors(l, layer.rank);
      host_.emit(out, lora::a_name(layer.name), a);
      host_.emit(out, lora::b_name(layer.name), b);
    }
    discard();
  }

  void discard() override {
    for (auto& s : sums_) s = at::Tensor();
    total_ = 0;
  }

  /// Client `client`'s adapters at the ranks its template has, from the latest SVD.
  void client_model(std::uint32_t client, const NamedTensors& tmpl, flotilla_output* out) override {
    for (const auto& t : tmpl) {
      const auto parsed = lora::parse(t.name);
      if (!parsed) continue;  // not an adapter: the client keeps the global model's value
      const auto l = lora::index_of(layers_, parsed->layer);
      if (l < 0) {
        throw Invalid("client " + std::to_string(client) + "'s model has '" + t.name +
                      "', but the global model has no adapter on '" + parsed->layer + "'");
      }
      const auto& layer = layers_[static_cast<std::size_t>(l)];
      const auto rank = lora::rank_of(parsed->part, t.tensor);
      const std::vector<std::int64_t> expected =
          parsed->part == lora::Part::A ? std::vector<std::int64_t>{rank, layer.in}
                                        : std::vector<std::int64_t>{layer.out, rank};
      if (rank < 1 || !t.tensor.sizes().equals(expected)) {
        throw Invalid("client " + std::to_string(client) + "'s '" + t.name + "' is " +
                      lora::describe(t.tensor) + ", which does not fit layer '" + layer.name +
                      "' (" + std::to_string(layer.out) + " x " + std::to_string(layer.in) + ")");
      }
      const auto [a, b] = factors(static_cast<std::size_t>(l), rank);
      const auto& value = parsed->part == lora::Part::A ? a : b;
      host_.emit(out, t.name, value.to(t.tensor.scalar_type()));
    }
  }

  void export_state(flotilla_output* out) override {
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      if (!svd_[l].u.defined()) continue;
      host_.emit(out, layers_[l].name + ".svd.U", svd_[l].u);
      host_.emit(out, layers_[l].name + ".svd.S", svd_[l].s);
      host_.emit(out, layers_[l].name + ".svd.Vh", svd_[l].vh);
    }
  }

  void import_state(const NamedTensors& saved) override {
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      Svd s;
      for (const auto& t : saved) {
        const auto& p = layers_[l].name + ".svd.";
        if (t.name == p + "U") s.u = t.tensor.to(host_.device(), at::kFloat, false, true);
        if (t.name == p + "S") s.s = t.tensor.to(host_.device(), at::kFloat, false, true);
        if (t.name == p + "Vh") s.vh = t.tensor.to(host_.device(), at::kFloat, false, true);
      }
      if (s.u.defined() && s.s.defined() && s.vh.defined()) svd_[l] = s;
    }
  }

 private:
  struct Svd {
    at::Tensor u, s, vh;
  };
  struct Pair {
    const at::Tensor* a = nullptr;
    const at::Tensor* b = nullptr;
  };


  /// Each adapted layer's A and B in `update` (any rank, the same for A and B), checked.
  std::vector<Pair> pairs(const NamedTensors& update) const {
    if (update.empty()) throw Rejected("update has no tensors");
    std::vector<Pair> found(layers_.size());
    for (const auto& u : update) {
      const auto parsed = lora::parse(u.name);
      if (!parsed) {
        throw Rejected("flexlora averages LoRA adapters only, and the update carries '" + u.name +
                       "' (a base weight): clients must train with lora.rank > 0 and send only "
                       "\"*.lora_A.weight\" and \"*.lora_B.weight\"");
      }
      const auto l = lora::adapted_layer(layers_, parsed->layer, u.name);
      auto& slot = parsed->part == lora::Part::A ? found[l].a : found[l].b;
      if (slot != nullptr) throw Rejected("update carries '" + u.name + "' twice");
      if (!at::isFloatingType(u.tensor.scalar_type())) {
        throw Rejected("tensor '" + u.name + "' is " + lora::describe(u.tensor) +
                       ", expected a floating tensor");
      }
      slot = &u.tensor;
    }
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto& layer = layers_[l];
      if (found[l].a == nullptr || found[l].b == nullptr) {
        throw Rejected("flexlora needs A and B of every adapted layer, and the update lacks '" +
                       (found[l].a == nullptr ? lora::a_name(layer.name) : lora::b_name(layer.name)) +
                       "' (with lora.freeze-a, use ffa-lora)");
      }
      const auto& a = *found[l].a;
      const auto& b = *found[l].b;
      if (a.dim() != 2 || b.dim() != 2 || a.size(0) < 1 || a.size(0) != b.size(1) ||
          a.size(1) != layer.in || b.size(0) != layer.out) {
        throw Rejected("layer '" + layer.name + "': A is " + lora::describe(a) + " and B is " +
                       lora::describe(b) + "; expected A [r, " + std::to_string(layer.in) +
                       "] and B [" + std::to_string(layer.out) + ", r] with the same r >= 1");
      }
    }
    return found;
  }

  /// Layer l's A (rank × in) and B (out × rank), float32 on the host's device: from the latest
  /// SVD, or before any version from the global model's initial adapters.
  std::pair<at::Tensor, at::Tensor> factors(std::size_t l, std::int64_t rank) const {
    const auto& layer = layers_[l];
    const auto opts = at::TensorOptions().dtype(at::kFloat).device(host_.device());
    auto a = at::zeros({rank, layer.in}, opts);
    auto b = at::zeros({layer.out, rank}, opts);
    const double scale = alpha_ / static_cast<double>(rank);
    const Svd* svd = svd_[l].u.defined() ? &svd_[l] : nullptr;
    Svd initial;
    if (svd == nullptr) {
      if (!layer.a.defined() || !layer.b.defined()) {
        throw Invalid("flexlora: the global model's adapters on '" + layer.name + "' have no data");
      }
      if (layer.b.abs().max().item<double>() == 0) {
        // The initial model (B = 0): the global A cut or padded to `rank`, B zero.
        const auto keep = std::min(rank, layer.rank);
        a.narrow(0, 0, keep).copy_(layer.a.narrow(0, 0, keep));
        if (rank > keep) {
          auto gen = at::make_generator<at::CPUGeneratorImpl>(0x5eedULL + l);
          const double bound = 1.0 / std::sqrt(static_cast<double>(layer.in));
          a.narrow(0, keep, rank - keep)
              .copy_(at::empty({rank - keep, layer.in}).uniform_(-bound, bound, gen));
        }
        return {a, b};
      }
      // Adapters already trained (e.g. a run resumed from a model): serve the SVD of theirs.
      const auto m = at::mm(layer.b, layer.a).mul_(alpha_ / static_cast<double>(layer.rank));
      auto [u, s, vh] = at::linalg_svd(m, false);
      initial = Svd{u, s, vh};
      svd = &initial;
    }
    const auto keep = std::min<std::int64_t>(rank, svd->s.size(0));
    a.narrow(0, 0, keep).copy_(svd->vh.narrow(0, 0, keep));
    b.narrow(1, 0, keep).copy_(svd->u.narrow(1, 0, keep) * svd->s.narrow(0, 0, keep).unsqueeze(0) /
                               scale);
    return {a, b};
  }

  Host host_;
  double alpha_;
  std::vector<lora::Layer> layers_;
  std::vector<at::Tensor> sums_;  ///< Σ_k w_k (alpha/r_k) B_k A_k per layer this version
  std::vector<Svd> svd_;          ///< the latest version's SVD per layer
  double total_ = 0;
};

const flotilla_option_spec kOptions[] = {
    {"alpha", "float", "16",
     "the clients' LoRA alpha (adapter scale alpha/r); the runtime passes lora.alpha unless set "
     "here"},
};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FlexLora, "flexlora", "1.0.0",
                           "FlexLoRA (Bai et al. 2024): the example-weighted mean of the clients' "
                           "full-size updates (alpha/r_k)·B_k·A_k, one SVD, each client served at "
                           "its own rank",
                           kOptions)

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
// alpha is the run's lora.alpha, which the host passes (flotilla_host.lora_alpha, ABI 1.2).
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
  static constexpr std::uint32_t kFlags =
      FLOTILLA_AGG_NEEDS_COHORT | FLOTILLA_AGG_LORA_ADAPTERS | FLOTILLA_AGG_LORA_TRAINS_A;

  FlexLora(const Host& host, const Options& options, const NamedTensors& global)
      : host_(host),
        alpha_(options.real("alpha", 0) > 0 ? options.real("alpha", 0) : lora::host_alpha(host, "flexlora")),
        layers_(lora::layers(global, host, "flexlora")),
        mean_(host, layers_.size(), alpha_),
        svd_(layers_.size()) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    (void)pairs(update);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    mean_.add(pairs(update), info.weight);
  }

  void finalize(flotilla_output* out) override {
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto m = mean_.mean(l);
      auto [u, s, vh] = at::linalg_svd(m, /*full_matrices=*/false);
      svd_[l] = Svd{u, s, vh};
      const auto& layer = layers_[l];
      const auto [a, b] = factors(l, layer.rank);
      host_.emit(out, lora::a_name(layer.name), a);
      host_.emit(out, lora::b_name(layer.name), b);
    }
    discard();
  }

  void discard() override { mean_.clear(); }

  /// Client `client`'s adapters at the ranks its template has, from the latest SVD.
  void client_model(std::uint32_t client, const NamedTensors& tmpl, flotilla_output* out) override {
    for (const auto& t : tmpl) {
      const auto adapter = lora::template_adapter(layers_, t, client);
      if (!adapter) continue;  // not an adapter: the client keeps the global model's value
      const auto [a, b] = factors(adapter->layer, adapter->rank);
      const auto& value = adapter->part == lora::Part::A ? a : b;
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
  /// Each adapted layer's A and B in `update` (any rank, the same for A and B), checked.
  std::vector<lora::Pair> pairs(const NamedTensors& update) const {
    return lora::pairs(layers_, update, "flexlora");
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
  lora::ProductMean mean_;  ///< Σ_k p_k (alpha/r_k) B_k A_k per layer this version
  std::vector<Svd> svd_;    ///< the latest version's SVD per layer
};

const flotilla_option_spec kOptions[] = {
    {"alpha", "float", "0",
     "deprecated: 0 (the default) takes the run's lora.alpha from the host; set only to "
     "aggregate at another scale than the clients train with"},
};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FlexLora, "flexlora", "1.1.0",
                           "FlexLoRA (Bai et al. 2024): the example-weighted mean of the clients' "
                           "full-size updates (alpha/r_k)·B_k·A_k, one SVD, each client served at "
                           "its own rank",
                           kOptions)

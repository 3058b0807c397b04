// flora: FLoRA, stacking heterogeneous LoRA adapters (Wang et al., 2024, "FLoRA: Federated
// Fine-Tuning Large Language Models with Heterogeneous Low-Rank Adaptations", NeurIPS 2024).
//
// Client k trains adapters at its own rank r_k (lora.ranks) from a fresh start each round. The
// server stacks them along the rank, weighting B by p_k = n_k / Σ n and the clients' scales
// s_k = alpha/r_k:
//   B_stack = [p_1 s_1 B_1 | … | p_K s_K B_K]  (out × Σ r_k),   A_stack = [A_1; …; A_K]  (Σ r_k × in),
// whose product is exactly Σ_k p_k s_k B_k·A_k: no cross term (FedIT), no truncation (FlexLoRA),
// any mix of ranks. The stacked adapter is merged into the base weight of each layer,
//   W ← W + B_stack·A_stack,
// (computed as that sum of products: the same matrix, without materialising the stack), and
// every client starts the next round from fresh adapters at its own rank: A drawn like LoRA's
// init from a seed that changes every version (`seed`), B = 0. The base weights it changes
// travel in the next tasks (FLOTILLA_AGG_WRITES_BASE); it keeps them between versions
// (FLOTILLA_AGG_TRACKS_GLOBAL, in its exported state for checkpoints and reloads).
#include "flotilla/lora.hpp"
#include "flotilla/plugin.hpp"

#include <string>
#include <vector>

namespace {

using flotilla::sdk::Host;
using flotilla::sdk::Invalid;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;
using flotilla::sdk::Rejected;
namespace lora = flotilla::sdk::lora;

class Flora final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = true;
  static constexpr std::uint32_t kFlags =
      FLOTILLA_AGG_LORA_ADAPTERS | FLOTILLA_AGG_WRITES_BASE | FLOTILLA_AGG_TRACKS_GLOBAL |
      FLOTILLA_AGG_LORA_TRAINS_A;

  Flora(const Host& host, const Options& options, const NamedTensors& global)
      : host_(host),
        alpha_(lora::host_alpha(host, "flora")),
        seed_(static_cast<std::uint64_t>(options.integer("seed", 0))),
        layers_(lora::layers(global, host, "flora", /*with_base=*/true)),
        products_(host, layers_.size(), alpha_) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    (void)lora::pairs(layers_, update, "flora");
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    products_.add(lora::pairs(layers_, update, "flora"), info.weight);
  }

  void finalize(flotilla_output* out) override {
    // Kept only once everything is emitted: a version that fails half-way (the host then
    // discards it) leaves the method's state as it was.
    std::vector<at::Tensor> next(layers_.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto& layer = layers_[l];
      next[l] = layer.w + products_.mean(l);  // the stacked adapters, merged
      host_.emit(out, lora::w_name(layer.name), next[l].to(layer.w_dtype));
      host_.emit(out, lora::a_name(layer.name), fresh_a(l, layer.rank, version_ + 1));
      host_.emit(out, lora::b_name(layer.name), at::zeros({layer.out, layer.rank}, at::kFloat));
    }
    products_.clear();
    for (std::size_t l = 0; l < layers_.size(); ++l) layers_[l].w = std::move(next[l]);
    ++version_;
  }

  void discard() override { products_.clear(); }

  /// Fresh adapters at the client's own rank: this version's A, B = 0.
  void client_model(std::uint32_t client, const NamedTensors& tmpl, flotilla_output* out) override {
    for (const auto& t : tmpl) {
      const auto adapter = lora::template_adapter(layers_, t, client);
      if (!adapter) continue;
      const auto& layer = layers_[adapter->layer];
      const auto value = adapter->part == lora::Part::A ? fresh_a(adapter->layer, adapter->rank, version_)
                                                        : at::zeros({layer.out, adapter->rank}, at::kFloat);
      host_.emit(out, t.name, value.to(t.tensor.scalar_type()));
    }
  }

  void export_state(flotilla_output* out) override {
    for (const auto& layer : layers_) host_.emit(out, lora::w_name(layer.name), layer.w);
    host_.emit(out, "version", at::full({1}, static_cast<std::int64_t>(version_), at::kLong));
  }

  void import_state(const NamedTensors& saved) override {
    for (const auto& t : saved) {
      if (t.name == "version" && t.tensor.numel() == 1) {
        version_ = static_cast<std::uint64_t>(t.tensor.to(at::kCPU).item<std::int64_t>());
        continue;
      }
      for (auto& layer : layers_) {
        if (t.name != lora::w_name(layer.name)) continue;
        if (!t.tensor.sizes().equals(layer.w.sizes())) {
          throw Invalid("flora: the saved '" + t.name + "' is " + lora::describe(t.tensor) +
                        ", the model's is " + lora::describe(layer.w));
        }
        layer.w = t.tensor.to(host_.device(), at::kFloat, false, true);
      }
    }
  }

 private:
  /// Layer l's fresh A at `rank` for `version` (the same rows for every client: a lower rank's
  /// A is the first rows of a higher rank's).
  at::Tensor fresh_a(std::size_t l, std::int64_t rank, std::uint64_t version) const {
    const std::uint64_t seed = (seed_ * 0x9E3779B97F4A7C15ULL) ^ (version << 24) ^ (l + 1);
    return lora::fresh_a(layers_[l], rank, seed, host_.device());
  }

  Host host_;
  double alpha_;
  std::uint64_t seed_;
  std::uint64_t version_ = 0;
  std::vector<lora::Layer> layers_;
  lora::ProductMean products_;  ///< Σ_k p_k s_k B_k·A_k per layer: B_stack·A_stack
};

const flotilla_option_spec kOptions[] = {
    {"seed", "int", "0", "seeds the fresh A every client starts each round from"},
};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(Flora, "flora", "1.0.0",
                           "FLoRA (Wang et al. 2024): the clients' adapters stacked along the rank "
                           "(exact, any mix of ranks), merged into the base weights; fresh "
                           "adapters each round",
                           kOptions)

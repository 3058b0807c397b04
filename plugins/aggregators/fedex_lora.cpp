// fedex-lora: exact aggregation of LoRA adapters (Singhal et al., 2025, "FedEx-LoRA: Exact
// Aggregation for Federated and Efficient Fine-Tuning of Foundation Models", ACL 2025).
//
// FedIT averages A and B separately, and the product of the means is not the mean of the
// products: with p_k = n_k / Σ n and s = alpha/r,
//   mean(s·B_k·A_k) − s·mean(B)·mean(A)  ≠ 0.
// FedEx-LoRA keeps FedIT's adapters (the means of A and B, so clients go on training a low-rank
// adapter) and folds that residual into the frozen base weight of each adapted layer:
//   W ← W + Σ_k p_k s·B_k·A_k − s·B̄·Ā,   A ← Ā,   B ← B̄,
// so the global model's effective weight W + s·B̄·Ā is exactly the clients' mean merged weight
// Σ_k p_k (W + s·B_k·A_k). The base weights it changes travel in the next tasks
// (FLOTILLA_AGG_WRITES_BASE); it keeps them between versions (FLOTILLA_AGG_TRACKS_GLOBAL, in its
// exported state for checkpoints and reloads). One rank for all clients.
#include "flotilla/fold.hpp"
#include "flotilla/lora.hpp"
#include "flotilla/plugin.hpp"

#include <string>
#include <vector>

namespace {

using flotilla::sdk::Host;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;
using flotilla::sdk::Rejected;
namespace lora = flotilla::sdk::lora;

class FedExLora final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;
  static constexpr std::uint32_t kFlags =
      FLOTILLA_AGG_LORA_ADAPTERS | FLOTILLA_AGG_WRITES_BASE | FLOTILLA_AGG_TRACKS_GLOBAL |
      FLOTILLA_AGG_LORA_TRAINS_A;

  FedExLora(const Host& host, const Options&, const NamedTensors& global)
      : host_(host),
        alpha_(lora::host_alpha(host, "fedex-lora")),
        layers_(lora::layers(global, host, "fedex-lora", /*with_base=*/true)),
        mean_(host),
        products_(host, layers_.size(), alpha_) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    for (const auto& u : update) (void)lora::expect_adapter(layers_, u, "fedex-lora");
    (void)lora::pairs(layers_, update, "fedex-lora");
    mean_.check_same(update);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    mean_.add(update, info.weight);
    products_.add(lora::pairs(layers_, update, "fedex-lora"), info.weight);
  }

  void finalize(flotilla_output* out) override {
    // The new base weights are kept only once everything is emitted: a version that fails
    // half-way (the host then discards it) leaves the method's state as it was.
    std::vector<at::Tensor> next(layers_.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto& layer = layers_[l];
      const auto* a = mean_.mean(lora::a_name(layer.name));
      const auto* b = mean_.mean(lora::b_name(layer.name));
      const double scale = alpha_ / static_cast<double>(layer.rank);
      // The mean of the products minus the product of the means: what FedIT loses.
      const auto residual = products_.mean(l).sub_(b->to(at::kFloat).mm(a->to(at::kFloat)).mul_(scale));
      next[l] = layer.w + residual;
      host_.emit(out, lora::w_name(layer.name), next[l].to(layer.w_dtype));
    }
    mean_.emit(out);  // Ā and B̄
    products_.clear();
    for (std::size_t l = 0; l < layers_.size(); ++l) layers_[l].w = std::move(next[l]);
  }

  void discard() override {
    mean_.clear();
    products_.clear();
  }

  void export_state(flotilla_output* out) override {
    for (const auto& layer : layers_) host_.emit(out, lora::w_name(layer.name), layer.w);
  }

  void import_state(const NamedTensors& saved) override {
    for (auto& layer : layers_) {
      for (const auto& t : saved) {
        if (t.name != lora::w_name(layer.name)) continue;
        if (!t.tensor.sizes().equals(layer.w.sizes())) {
          throw flotilla::sdk::Invalid("fedex-lora: the saved '" + t.name + "' is " +
                                       lora::describe(t.tensor) + ", the model's is " +
                                       lora::describe(layer.w));
        }
        layer.w = t.tensor.to(host_.device(), at::kFloat, false, true);
      }
    }
  }

 private:
  Host host_;
  double alpha_;
  std::vector<lora::Layer> layers_;
  flotilla::sdk::WeightedMean mean_;  ///< Ā and B̄
  lora::ProductMean products_;        ///< Σ_k p_k s·B_k·A_k per layer
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedExLora, "fedex-lora", "1.0.0",
                           "FedEx-LoRA (Singhal et al. 2025): A and B averaged as FedIT does, and "
                           "the residual mean(B·A) − mean(B)·mean(A) folded into the frozen base "
                           "weight, so the aggregate is exact",
                           kOptions)

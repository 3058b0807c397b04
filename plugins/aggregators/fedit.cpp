// fedit: federated instruction tuning with LoRA (Zhang et al., 2024, "Towards Building the
// FederatedGPT: Federated Instruction Tuning", ICASSP 2024; the FedIT baseline).
//
// Every client trains LoRA adapters (A and B) on a frozen base model and sends only them. The
// server averages A and B separately, each weighted by the clients' example counts:
//   A' = Σ_k p_k A_k,   B' = Σ_k p_k B_k,   p_k = n_k / Σ n.
// Note that B'·A' is not the average of the clients' updates B_k·A_k: for two clients,
//   B'·A' − (p B_1 A_1 + q B_2 A_2) = −p·q·(B_1 − B_2)(A_1 − A_2),
// the cross-term noise FFA-LoRA and FlexLoRA avoid. All clients must use the global model's
// rank; updates carrying base weights or another rank are refused.
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

class FedIt final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_LORA_ADAPTERS;

  FedIt(const Host& host, const Options&, const NamedTensors& global)
      : layers_(lora::layers(global, host, "fedit")), mean_(host) {
    rank_ = layers_.front().rank;
    for (const auto& l : layers_) {
      if (l.rank != rank_) {
        throw flotilla::sdk::Invalid("fedit: the global model's adapters have ranks " +
                                     std::to_string(rank_) + " and " + std::to_string(l.rank) +
                                     "; fedit needs one rank");
      }
    }
  }

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    if (update.empty()) throw Rejected("update has no tensors");
    for (const auto& u : update) (void)lora::expect_adapter(layers_, u, "fedit");
    mean_.check_same(update);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    mean_.add(update, info.weight);
  }

  void finalize(flotilla_output* out) override { mean_.emit(out); }

  void discard() override { mean_.clear(); }

 private:
  std::vector<lora::Layer> layers_;
  std::int64_t rank_ = 0;
  flotilla::sdk::WeightedMean mean_;
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedIt, "fedit", "1.0.0",
                           "FedIT (Zhang et al. 2024): LoRA A and B averaged separately, weighted "
                           "by examples; one rank for all clients",
                           kOptions)

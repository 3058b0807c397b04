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
namespace lora = flotilla::sdk::lora;

class FedIt final : public lora::AdapterMean {
 public:
  static constexpr bool kPerClient = false;
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_LORA_ADAPTERS;

  FedIt(const Host& host, const Options&, const NamedTensors& global) : AdapterMean(host, global, "fedit") {
    const auto rank = layers_.front().rank;
    for (const auto& l : layers_) {
      if (l.rank != rank) {
        throw flotilla::sdk::Invalid("fedit: the global model's adapters have ranks " + std::to_string(rank) +
                                     " and " + std::to_string(l.rank) + "; fedit needs one rank");
      }
    }
  }

 protected:
  void check_tensor(const flotilla::sdk::Named& u) const override { (void)lora::expect_adapter(layers_, u, "fedit"); }
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedIt, "fedit", "1.0.0",
                           "FedIT (Zhang et al. 2024): LoRA A and B averaged separately, weighted "
                           "by examples; one rank for all clients",
                           kOptions)

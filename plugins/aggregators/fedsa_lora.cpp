// fedsa-lora: selective aggregation (Guo et al., 2025, "Selective Aggregation for Low-Rank
// Adaptation in Federated Learning", ICLR 2025).
//
// The paper finds that A learns what is common to the clients and B what is particular to
// each. So only A is shared: clients send A, the server averages it (weighted by examples),
// and each client keeps its own B from task to task (FLOTILLA_AGG_LORA_LOCAL_B: tasks carry no
// B and updates carry none). Each client ends with a model of its own, W + s·B_k·Ā; the global
// model's B is never trained (it stays at its initial zeros), so evaluate the clients' models,
// not the global one.
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

class FedSaLora final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_LORA_ADAPTERS | FLOTILLA_AGG_LORA_LOCAL_B;

  FedSaLora(const Host& host, const Options&, const NamedTensors& global)
      : layers_(lora::layers(global, host, "fedsa-lora")), mean_(host) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    if (update.empty()) throw Rejected("update has no tensors");
    for (const auto& u : update) {
      if (lora::expect_adapter(layers_, u, "fedsa-lora").part == lora::Part::B) {
        throw Rejected("fedsa-lora shares only A; each client keeps its B, and the update carries '" +
                       u.name + "' (clients keep the tensors a task's keepLocal names)");
      }
    }
    mean_.check_same(update);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    mean_.add(update, info.weight);
  }

  /// Emits the mean A of each layer, never B.
  void finalize(flotilla_output* out) override { mean_.emit(out); }

  void discard() override { mean_.clear(); }

 private:
  std::vector<lora::Layer> layers_;
  flotilla::sdk::WeightedMean mean_;
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedSaLora, "fedsa-lora", "1.0.0",
                           "FedSA-LoRA (Guo et al. 2025): only A is shared and averaged (weighted "
                           "by examples); each client keeps its own B",
                           kOptions)

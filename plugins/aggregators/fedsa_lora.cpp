// fedsa-lora: selective aggregation (Guo et al., 2025, "Selective Aggregation for Low-Rank
// Adaptation in Federated Learning", ICLR 2025).
//
// The paper finds that A learns what is common to the clients and B what is particular to
// each. So only A is shared: clients send A, the server averages it (weighted by examples),
// and each client keeps its own B from task to task (FLOTILLA_AGG_LORA_LOCAL_B: tasks carry no
// B and updates carry none). Each client ends with a model of its own, W + s·B_k·Ā; the global
// model's B is never trained (it stays at its initial zeros), so evaluate the clients' models,
// not the global one.
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

class FedSaLora final : public lora::AdapterMean {
 public:
  static constexpr bool kPerClient = false;
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_LORA_ADAPTERS | FLOTILLA_AGG_LORA_LOCAL_B;

  FedSaLora(const Host& host, const Options&, const NamedTensors& global) : AdapterMean(host, global, "fedsa-lora") {}

 protected:
  /// A only (the mean A of each layer is emitted, never B).
  void check_tensor(const flotilla::sdk::Named& u) const override {
    if (lora::expect_adapter(layers_, u, "fedsa-lora").part == lora::Part::B) {
      throw Rejected("fedsa-lora shares only A; each client keeps its B, and the update carries '" + u.name +
                     "' (clients keep the tensors a task's keepLocal names)");
    }
  }
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedSaLora, "fedsa-lora", "1.0.0",
                           "FedSA-LoRA (Guo et al. 2025): only A is shared and averaged (weighted "
                           "by examples); each client keeps its own B",
                           kOptions)

// ffa-lora: Federated Freeze-A LoRA (Sun et al., 2024, "Improving LoRA in Privacy-preserving
// Federated Learning", ICLR 2024).
//
// A is initialised once from a seed every client shares (lora.freeze-a = true: the same A in
// every process, derived from run.seed) and never trained; clients train and send only B. Since
// A is common, averaging B averages the updates exactly:
//   Σ_k p_k (B_k·A) = (Σ_k p_k B_k)·A,   p_k = n_k / Σ n,
// with none of FedIT's cross-term, and half the upload. The server averages the B matrices
// (weighted by examples) and never emits A; an update carrying any A is refused.
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

class FfaLora final : public lora::AdapterMean {
 public:
  static constexpr bool kPerClient = false;
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_LORA_ADAPTERS | FLOTILLA_AGG_LORA_FROZEN_A;

  FfaLora(const Host& host, const Options&, const NamedTensors& global) : AdapterMean(host, global, "ffa-lora") {}

 protected:
  /// B only (the mean B of each layer is emitted, never A).
  void check_tensor(const flotilla::sdk::Named& u) const override {
    const auto parsed = lora::parse(u.name);
    if (parsed && parsed->part == lora::Part::A) {
      throw Rejected("ffa-lora never changes A, and the update carries '" + u.name +
                     "': set lora.freeze-a = true so clients train and send only B");
    }
    if (!parsed) {
      throw Rejected("ffa-lora averages LoRA B matrices only, and the update carries '" + u.name +
                     "' (a base weight): clients must train with lora.rank > 0 and "
                     "lora.freeze-a = true");
    }
    const lora::Layer* layer = &layers_[lora::adapted_layer(layers_, parsed->layer, u.name)];
    if (!u.tensor.sizes().equals({layer->out, layer->rank}) || !at::isFloatingType(u.tensor.scalar_type())) {
      throw Rejected("tensor '" + u.name + "' is " + lora::describe(u.tensor) +
                     ", expected a floating tensor of shape [" + std::to_string(layer->out) + ", " +
                     std::to_string(layer->rank) + "] (B at the global model's rank " +
                     std::to_string(layer->rank) + ")");
    }
  }
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FfaLora, "ffa-lora", "1.0.0",
                           "FFA-LoRA (Sun et al. 2024): A frozen from a shared seed, only B "
                           "trained, sent and averaged (weighted by examples)",
                           kOptions)

// fedyogi: Yogi as the server optimizer (Reddi et al., 2021, "Adaptive Federated
// Optimization"). Each version, with Δ = (example-weighted mean of the updates) − global:
//   m ← β1·m + (1 − β1)·Δ,   v ← v − (1 − β2)·Δ²·sign(v − Δ²),   global ← global + η·m / (√v + τ)
// with m₀ = 0 and v₀ = τ² (the paper's v₋₁ ≥ τ²). Unlike FedAdam, v changes additively, by at
// most (1 − β2)·Δ² a version, so it does not shrink quickly when updates get small. m and v are
// kept per tensor between versions and survive a hot reload ("m/<tensor>", "v/<tensor>").
//
// Options:
//   server-learning-rate  η > 0, default 0.01
//   beta1                 β1 in [0, 1), default 0.9
//   beta2                 β2 in [0, 1), default 0.99
//   tau                   τ > 0, default 1e-3
//
// Updates may carry all of the global model's tensors or a subset in the same order; the first
// update of a version fixes the subset. Integer tensors take the latest update's value.
// Memory: see server_optimizer.hpp (global copy, sum, m, v).
#include "server_optimizer.hpp"

namespace {

using namespace flotilla::aggregators;

class FedYogi final : public AdaptiveServerOptimizer {
 public:
  FedYogi(const flotilla::sdk::Host& host, const flotilla::sdk::Options& options,
          const NamedTensors& global)
      : AdaptiveServerOptimizer(host, options, global, Rule::yogi) {}
};

const flotilla_option_spec kOptions[] = {
    {"server-learning-rate", "float", "0.01", "server step size η (> 0)"},
    {"beta1", "float", "0.9", "first-moment decay β1 in [0, 1)"},
    {"beta2", "float", "0.99", "second-moment decay β2 in [0, 1)"},
    {"tau", "float", "1e-3", "adaptivity τ (> 0): step = η·m / (√v + τ)"},
};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedYogi, "fedyogi", "1.0.0",
                           "Yogi server optimizer over the weighted mean (FedYogi, Reddi et al. 2021)",
                           kOptions)

// fedavgm: FedAvg with server momentum (Hsu, Qi and Brown, 2019, "Measuring the Effects of
// Non-Identical Data Distribution for Federated Visual Classification"). Each version, the
// example-weighted mean of the updates gives a pseudo-gradient Δ = global − mean, and
//   m ← β·m + Δ,   global ← global − η·m.
// With β = 0 and η = 1 it is FedAvg. m is kept per tensor between versions and survives a hot
// reload (exported as "m/<tensor>").
//
// Options:
//   server-learning-rate  η > 0, default 1.0
//   momentum              β in [0, 1), default 0.9
//
// Updates may carry all of the global model's tensors or a subset in the same order (e.g. only
// LoRA adapters); the first update of a version fixes the subset. Integer tensors take the
// latest update's value. Memory: see server_optimizer.hpp (global copy, sum, m).
#include "server_optimizer.hpp"

namespace {

using namespace flotilla::aggregators;

class FedAvgM final : public ServerOptimizer {
 public:
  FedAvgM(const flotilla::sdk::Host& host, const flotilla::sdk::Options& options,
          const NamedTensors& global)
      : ServerOptimizer(host, global, {"m"}),
        lr_(positive(options, "server-learning-rate", 1.0)),
        momentum_(real_in(options, "momentum", 0.9, 0.0, 1.0)) {}

 protected:
  at::Tensor step(at::Tensor& delta, std::vector<at::Tensor>& state) override {
    // delta is mean − global = −Δ.
    auto& m = state[0];
    m.mul_(momentum_).sub_(delta);
    return m * -lr_;
  }

 private:
  double lr_, momentum_;
};

const flotilla_option_spec kOptions[] = {
    {"server-learning-rate", "float", "1.0", "server step size η (> 0): global -= η·m"},
    {"momentum", "float", "0.9", "server momentum β in [0, 1): m = β·m + (global − mean)"},
};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedAvgM, "fedavgm", "1.0.0",
                           "FedAvg with server momentum (FedAvgM, Hsu et al. 2019)", kOptions)

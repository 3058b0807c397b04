// median: coordinate-wise median (Yin, Chen, Ramchandran and Bartlett, 2018, "Byzantine-Robust
// Distributed Learning: Towards Optimal Statistical Rates"). Every coordinate of the new model
// is the median of that coordinate over the version's updates (for an even count, the mean of
// the two middle values), so fewer than half of the updates, however large, cannot drag it
// outside the range of the honest ones.
//
// Unweighted: every update counts once, whatever its example count. Memory grows with the
// number of clients: all updates of a version are kept until finalize (see buffered.hpp).
//
// Options: none.
//
// Updates may carry all of the global model's tensors or a subset in the same order; the first
// update of a version fixes the subset. Integer tensors take the latest update's value.
#include "buffered.hpp"

namespace {

using namespace flotilla::aggregators;

class Median final : public BufferedAggregator {
 public:
  Median(const flotilla::sdk::Host& host, const flotilla::sdk::Options&, const NamedTensors& global)
      : BufferedAggregator(host, global) {}

 protected:
  at::Tensor combine(std::size_t p) override {
    const auto n = static_cast<std::int64_t>(count());
    const auto sorted = std::get<0>(stacked(p).sort(0));
    if (n % 2 == 1) return sorted[n / 2];
    return (sorted[n / 2 - 1] + sorted[n / 2]) * 0.5;
  }
};

// The macro needs a non-empty array; a null key marks "no options".
const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(Median, "median", "1.0.0",
                           "Coordinate-wise median of the updates (unweighted; Yin et al. 2018)",
                           kOptions)

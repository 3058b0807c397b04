// trimmed-mean: coordinate-wise trimmed mean (Yin, Chen, Ramchandran and Bartlett, 2018,
// "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"). For every
// coordinate, the k = floor(trim-fraction · n) largest and k smallest of the n updates' values
// are dropped and the rest averaged, so up to k outliers per side, however large, are ignored.
// With few updates k can be 0 (e.g. 0.1 · 9 updates): then nothing is trimmed.
//
// Unweighted: every update counts once, whatever its example count. Memory grows with the
// number of clients: all updates of a version are kept until finalize (see buffered.hpp).
//
// Options:
//   trim-fraction  fraction dropped at each end, in [0, 0.5), default 0.1
//
// Updates may carry all of the global model's tensors or a subset in the same order; the first
// update of a version fixes the subset. Integer tensors take the latest update's value.
#include "buffered.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

namespace {

using namespace flotilla::aggregators;

class TrimmedMean final : public BufferedAggregator {
 public:
  TrimmedMean(const flotilla::sdk::Host& host, const flotilla::sdk::Options& options,
              const NamedTensors& global)
      : BufferedAggregator(host, global), trim_(real_in(options, "trim-fraction", 0.1, 0.0, 0.5)) {}

 protected:
  void select() override {
    const auto n = static_cast<std::int64_t>(count());
    trimmed_ = static_cast<std::int64_t>(std::floor(trim_ * static_cast<double>(n)));
    // trim-fraction < 0.5 keeps at least one value; checked all the same, as the rule needs it.
    if (n - 2 * trimmed_ < 1) {
      throw std::runtime_error("trimmed-mean: trimming " + std::to_string(trimmed_) +
                               " per side leaves none of " + std::to_string(n) + " updates");
    }
  }

  at::Tensor combine(std::size_t p) override {
    const auto n = static_cast<std::int64_t>(count());
    auto values = stacked(p);
    if (trimmed_ > 0) values = std::get<0>(values.sort(0)).narrow(0, trimmed_, n - 2 * trimmed_);
    return values.mean(0);
  }

 private:
  double trim_;
  std::int64_t trimmed_ = 0;
};

const flotilla_option_spec kOptions[] = {
    {"trim-fraction", "float", "0.1",
     "fraction of the values dropped at each end of every coordinate, in [0, 0.5)"},
};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(TrimmedMean, "trimmed-mean", "1.0.0",
                           "Coordinate-wise trimmed mean of the updates (unweighted; Yin et al. 2018)",
                           kOptions)

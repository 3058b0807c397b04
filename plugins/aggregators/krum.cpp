// krum: Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, 2017, "Machine
// Learning with Adversaries: Byzantine Tolerant Gradient Descent"). With n updates of which up
// to f may be Byzantine, each update is scored by the sum of its squared Euclidean distances
// (over all the floating tensors it carries) to its n − f − 2 nearest other updates; Krum
// takes the update with the lowest score, Multi-Krum the mean of the m lowest-scored. Needs
// n > 2f + 2 updates: with fewer, finalize fails (the round fails) rather than guess.
//
// Unweighted: the selection and the Multi-Krum mean ignore example counts. Memory grows with
// the number of clients: all updates of a version are kept until finalize (see buffered.hpp);
// scoring costs n passes over the n updates.
//
// Options:
//   byzantine  f, the number of Byzantine updates tolerated, >= 0, default 1
//   multi      m, the number of best-scored updates averaged, >= 1 (and <= n), default 1 (Krum)
//
// Updates may carry all of the global model's tensors or a subset in the same order; the first
// update of a version fixes the subset. Integer tensors take the latest update's value.
#include "buffered.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace {

using namespace flotilla::aggregators;

class Krum final : public BufferedAggregator {
 public:
  Krum(const flotilla::sdk::Host& host, const flotilla::sdk::Options& options,
       const NamedTensors& global)
      : BufferedAggregator(host, global),
        f_(integer_at_least(options, "byzantine", 1, 0)),
        multi_(integer_at_least(options, "multi", 1, 1)) {}

 protected:
  void select() override {
    const auto n = static_cast<std::int64_t>(count());
    if (n <= 2 * f_ + 2) {
      throw std::runtime_error("krum with byzantine=" + std::to_string(f_) + " needs more than " +
                               std::to_string(2 * f_ + 2) + " updates, got " + std::to_string(n));
    }
    if (multi_ > n) {
      throw std::runtime_error("krum with multi=" + std::to_string(multi_) + " needs at least " +
                               std::to_string(multi_) + " updates, got " + std::to_string(n));
    }
    // Squared distances between every pair of updates, summed over the tensors (float64).
    auto dist = at::zeros({n, n}, at::TensorOptions().dtype(at::kDouble).device(host().device()));
    const auto& indices = layout().indices();
    for (std::size_t p = 0; p < indices.size(); ++p) {
      if (!at::isFloatingType(layout().reference()[indices[p]].tensor.scalar_type())) continue;
      const auto x = stacked(p).reshape({n, -1});
      for (std::int64_t i = 0; i < n; ++i) {
        dist[i].add_((x - x[i]).square_().sum(1, false, at::kDouble));
      }
    }
    dist = dist.cpu();
    const auto d = dist.accessor<double, 2>();
    std::vector<double> score(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) {
      std::vector<double> others;
      for (std::int64_t j = 0; j < n; ++j) {
        if (j != i) others.push_back(d[i][j]);
      }
      std::sort(others.begin(), others.end());
      score[static_cast<std::size_t>(i)] =
          std::accumulate(others.begin(), others.begin() + (n - f_ - 2), 0.0);
    }
    selected_.resize(static_cast<std::size_t>(n));
    std::iota(selected_.begin(), selected_.end(), std::size_t{0});
    std::stable_sort(selected_.begin(), selected_.end(),
                     [&](std::size_t a, std::size_t b) { return score[a] < score[b]; });
    selected_.resize(static_cast<std::size_t>(multi_));
    std::string chosen;
    for (const auto k : selected_) chosen += (chosen.empty() ? "" : ", ") + std::to_string(client(k));
    host().log(FLOTILLA_LOG_DEBUG, "krum selected client(s) " + chosen + " of " + std::to_string(n));
  }

  at::Tensor combine(std::size_t p) override { return stacked(p, selected_).mean(0); }

 private:
  std::int64_t f_, multi_;
  std::vector<std::size_t> selected_;
};

const flotilla_option_spec kOptions[] = {
    {"byzantine", "int", "1", "f, the number of Byzantine updates tolerated (>= 0); needs n > 2f+2"},
    {"multi", "int", "1", "m, how many best-scored updates are averaged (>= 1; 1 = Krum)"},
};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(Krum, "krum", "1.0.0",
                           "Krum / Multi-Krum: the update(s) closest to their neighbours "
                           "(unweighted; Blanchard et al. 2017)",
                           kOptions)

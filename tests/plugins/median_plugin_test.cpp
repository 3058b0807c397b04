// median plugin against the coordinate-wise median computed here by sorting in float64.
#include "plugin_testing.hpp"

using namespace flotilla;
using namespace flotilla::testing;

namespace {

/// The coordinate-wise median of `updates` (the mean of the two middle values for an even
/// count), by sorting in float64.
TensorList median64(const std::vector<TensorList>& updates) {
  TensorList out;
  const auto n = static_cast<std::int64_t>(updates.size());
  for (std::size_t i = 0; i < updates.front().size(); ++i) {
    std::vector<at::Tensor> values;
    for (const auto& u : updates) values.push_back(u[i].tensor.to(at::kDouble));
    const auto sorted = std::get<0>(at::stack(values).sort(0));
    out.push_back({updates.front()[i].name,
                   n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2});
  }
  return out;
}

std::vector<TensorList> models(int n) {
  std::vector<TensorList> out;
  for (int k = 0; k < n; ++k) out.push_back(seeded_model(100 + k));
  return out;
}

TEST(MedianPlugin, EqualsTheSortedMiddleForOddAndEvenCounts) {
  for (int n : {5, 4}) {
    const auto updates = models(n);
    // Weights differ wildly: the median ignores them.
    const std::vector<double> weights = {1, 1000, 1, 1, 50};
    auto agg = aggregation("median", seeded_model(0));
    const auto out = aggregate(*agg, updates, std::vector<double>(weights.begin(), weights.begin() + n));
    EXPECT_LT(max_difference(out, median64(updates)), 1e-6) << n << " updates";
  }
}

TEST(MedianPlugin, WithstandsAScaledOutlier) { expect_withstands_outlier("median"); }

TEST(MedianPlugin, SubsetsIntegersDiscardAndNextVersion) {
  TensorList global = seeded_model(0);
  global.push_back({"steps", at::full({1}, 5, at::kLong)});
  auto agg = aggregation("median", global);
  const auto junk = seeded_model(7);
  ASSERT_TRUE(agg->accept({&junk, 1.0, 0, 0}));
  agg->discard();  // a failed round: junk must not count
  std::vector<TensorList> updates;
  for (int k : {3, 1, 2}) {
    updates.push_back({{"fc.bias", at::full({10}, double(k))}, {"steps", at::full({1}, 10 + k, at::kLong)}});
  }
  const auto out = aggregate(*agg, updates, {1, 1, 1});
  EXPECT_TRUE(at::allclose(find(out, "fc.bias"), at::full({10}, 2.0)));
  EXPECT_EQ(find(out, "steps").item<std::int64_t>(), 12);  // the latest update's
  EXPECT_TRUE(at::equal(find(out, "fc.weight"), find(global, "fc.weight")));
  // The next version starts empty: its one update is its median.
  const std::vector<TensorList> next = {{{"fc.bias", at::full({10}, 9.0)}, {"steps", at::full({1}, 1, at::kLong)}}};
  EXPECT_TRUE(at::allclose(find(aggregate(*agg, next, {1}), "fc.bias"), at::full({10}, 9.0)));
}

}  // namespace

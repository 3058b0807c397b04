// trimmed-mean plugin against the trimmed mean computed here by sorting in float64.
#include "plugin_testing.hpp"

#include <cmath>

using namespace flotilla;
using namespace flotilla::testing;

namespace {

/// Per coordinate: sort, drop floor(trim·n) at each end, average the rest (float64).
TensorList trimmed_mean64(const std::vector<TensorList>& updates, double trim) {
  TensorList out;
  const auto n = static_cast<std::int64_t>(updates.size());
  const auto k = static_cast<std::int64_t>(std::floor(trim * static_cast<double>(n)));
  for (std::size_t i = 0; i < updates.front().size(); ++i) {
    std::vector<at::Tensor> values;
    for (const auto& u : updates) values.push_back(u[i].tensor.to(at::kDouble));
    const auto sorted = std::get<0>(at::stack(values).sort(0));
    out.push_back({updates.front()[i].name, sorted.slice(0, k, n - k).mean(0)});
  }
  return out;
}

std::vector<TensorList> models(int n) {
  std::vector<TensorList> out;
  for (int k = 0; k < n; ++k) out.push_back(seeded_model(200 + k));
  return out;
}

TEST(TrimmedMeanPlugin, EqualsTheSortedTrimmedMean) {
  const auto updates = models(10);
  const std::vector<double> weights(10, 1.0);
  auto agg = aggregation("trimmed-mean", seeded_model(0), {{"trim-fraction", "0.25"}});
  const auto out = aggregate(*agg, updates, weights);
  EXPECT_LT(max_difference(out, trimmed_mean64(updates, 0.25)), 1e-6);  // 2 dropped per side
  // ... which is not the plain mean.
  EXPECT_GT(max_difference(out, weighted_mean64(updates, weights)), 0.05);
}

TEST(TrimmedMeanPlugin, TrimsNothingWhenTheFractionRoundsToZero) {
  // Default 0.1 of 5 updates: floor(0.5) = 0 trimmed, the unweighted mean.
  const auto updates = models(5);
  auto agg = aggregation("trimmed-mean", seeded_model(0));
  const auto out = aggregate(*agg, updates, {1, 9, 1, 1, 1});
  EXPECT_LT(max_difference(out, weighted_mean64(updates, std::vector<double>(5, 1.0))), 1e-6);
}

TEST(TrimmedMeanPlugin, WithstandsAScaledOutlier) {
  // 7 updates × 0.2: one value dropped at each end.
  expect_withstands_outlier("trimmed-mean", {{"trim-fraction", "0.2"}});
}

TEST(TrimmedMeanPlugin, RefusesOutOfRangeFractions) {
  for (const char* value : {"0.5", "-0.1"}) {
    const auto error = creation_error("trimmed-mean", seeded_model(0), {{"trim-fraction", value}});
    EXPECT_NE(error.find("'trim-fraction'"), std::string::npos) << error;
    EXPECT_NE(error.find("[0, 0.5)"), std::string::npos) << error;
  }
}

}  // namespace

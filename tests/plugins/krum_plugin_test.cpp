// krum plugin against Krum's selection computed here in float64 (pairwise squared distances,
// scores over the n − f − 2 nearest neighbours).
#include "plugin_testing.hpp"

#include <algorithm>
#include <numeric>

using namespace flotilla;
using namespace flotilla::testing;

namespace {

/// Indices of `updates` by increasing Krum score with f Byzantine.
std::vector<std::size_t> krum_order(const std::vector<TensorList>& updates, int f) {
  const auto n = updates.size();
  std::vector<double> score(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<double> d;
    for (std::size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      double sum = 0;
      for (std::size_t t = 0; t < updates[i].size(); ++t) {
        sum += (updates[i][t].tensor.to(at::kDouble) - updates[j][t].tensor.to(at::kDouble))
                   .pow(2).sum().item<double>();
      }
      d.push_back(sum);
    }
    std::sort(d.begin(), d.end());
    score[i] = std::accumulate(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(n - f - 2), 0.0);
  }
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return score[a] < score[b]; });
  return order;
}

/// Updates at different distances from a common centre, so that scores are well apart.
std::vector<TensorList> spread_models(int n) {
  const auto centre = seeded_model(300);
  std::vector<TensorList> out;
  for (int k = 0; k < n; ++k) {
    const auto noise = seeded_model(301 + k);
    TensorList u;
    for (std::size_t i = 0; i < centre.size(); ++i) {
      u.push_back({centre[i].name, centre[i].tensor + (0.1 + 0.2 * ((k * 3) % n)) * noise[i].tensor});
    }
    out.push_back(std::move(u));
  }
  return out;
}

TEST(KrumPlugin, PicksTheBestScoredUpdate) {
  const auto updates = spread_models(7);
  const auto order = krum_order(updates, 2);
  auto agg = aggregation("krum", seeded_model(0), {{"byzantine", "2"}});
  const auto out = aggregate(*agg, updates, std::vector<double>(7, 1.0));
  for (const auto& t : updates[order[0]]) EXPECT_TRUE(at::equal(find(out, t.name), t.tensor)) << t.name;
}

TEST(KrumPlugin, ScoresOverTheNMinusFMinus2NearestNeighbours) {
  // Updates whose every coordinate is one of these values. With n = 7, f = 1, scores over the
  // 4 nearest pick 22; over 3 they would pick 24, over 5 they would pick 19.
  const auto global = seeded_model(0);
  std::vector<TensorList> updates;
  for (double value : {19, 0, 24, 8, 28, 22, 14}) {
    TensorList u;
    for (const auto& t : global) u.push_back({t.name, at::full(t.tensor.sizes(), value)});
    updates.push_back(std::move(u));
  }
  auto agg = aggregation("krum", global, {{"byzantine", "1"}});
  const auto out = aggregate(*agg, updates, std::vector<double>(7, 1.0));
  EXPECT_TRUE(at::equal(find(out, "fc.weight"), at::full({10, 64}, 22.0)));
}

TEST(KrumPlugin, MultiKrumAveragesTheBestScored) {
  const auto updates = spread_models(7);
  const auto order = krum_order(updates, 1);
  auto agg = aggregation("krum", seeded_model(0), {{"byzantine", "1"}, {"multi", "3"}});
  const auto out = aggregate(*agg, updates, {5, 1, 1, 1, 1, 1, 1});  // weights ignored
  const auto expected =
      weighted_mean64({updates[order[0]], updates[order[1]], updates[order[2]]}, {1, 1, 1});
  EXPECT_LT(max_difference(out, expected), 1e-6);
}

TEST(KrumPlugin, WithstandsAScaledOutlier) { expect_withstands_outlier("krum"); }

/// The message finalize fails with after accepting `updates` ("" if it does not fail).
std::string finalize_error(Aggregation& agg, const std::vector<TensorList>& updates) {
  for (const auto& u : updates) EXPECT_TRUE(agg.accept({&u, 1.0, 0, 0}));
  try {
    (void)agg.finalize();
  } catch (const Failure& e) {
    return e.what();
  }
  return "";
}

TEST(KrumPlugin, TooFewUpdatesFailTheVersionAndTheNextStartsClean) {
  auto agg = aggregation("krum", seeded_model(0), {{"byzantine", "1"}});
  // n > 2f + 2 = 4 is needed.
  const auto four = finalize_error(*agg, spread_models(4));
  EXPECT_NE(four.find("needs more than 4 updates, got 4"), std::string::npos) << four;
  // The failed version's updates are gone: 3 more are 3, not 7.
  const auto three = finalize_error(*agg, spread_models(3));
  EXPECT_NE(three.find("got 3"), std::string::npos) << three;
  const auto updates = spread_models(5);
  const auto out = aggregate(*agg, updates, std::vector<double>(5, 1.0));
  const auto best = krum_order(updates, 1)[0];
  for (const auto& t : updates[best]) EXPECT_TRUE(at::equal(find(out, t.name), t.tensor)) << t.name;
}

TEST(KrumPlugin, RefusesOutOfRangeOptions) {
  const auto byzantine = creation_error("krum", seeded_model(0), {{"byzantine", "-1"}});
  EXPECT_NE(byzantine.find("'byzantine'"), std::string::npos) << byzantine;
  const auto multi = creation_error("krum", seeded_model(0), {{"multi", "0"}});
  EXPECT_NE(multi.find("'multi'"), std::string::npos) << multi;
}

}  // namespace

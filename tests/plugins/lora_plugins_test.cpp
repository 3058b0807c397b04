// The LoRA aggregation plugins against references computed here in float64: separate means
// and FedIT's cross term, FFA-LoRA's untouched A, FlexLoRA's SVD truncation at every client's
// rank, FedEx-LoRA's exact aggregate, FLoRA's stacking, FedSA-LoRA's shared A; and what each
// declares to the host.
#include "plugin_testing.hpp"

#include <cmath>

using namespace flotilla;
using namespace flotilla::testing;

namespace {

constexpr std::int64_t kIn1 = 40, kOut1 = 24, kOut2 = 20;  // fc1: 40 -> 24, fc2: 24 -> 20

/// A global model with adapters of rank `rank` on fc1 and fc2 (fc3 has none).
TensorList global_model(std::int64_t rank, int seed = 0, bool zero_b = true) {
  at::manual_seed(seed);
  auto b = [&](std::int64_t out) {
    return zero_b ? at::zeros({out, rank}) : at::randn({out, rank});
  };
  return {{"fc1.weight", at::randn({kOut1, kIn1})},
          {"fc1.bias", at::randn({kOut1})},
          {"fc1.lora_A.weight", at::randn({rank, kIn1}) * 0.1},
          {"fc1.lora_B.weight", b(kOut1)},
          {"fc2.weight", at::randn({kOut2, kOut1})},
          {"fc2.bias", at::randn({kOut2})},
          {"fc2.lora_A.weight", at::randn({rank, kOut1}) * 0.1},
          {"fc2.lora_B.weight", b(kOut2)},
          {"fc3.weight", at::randn({10, kOut2})},
          {"fc3.bias", at::randn({10})}};
}

/// A client's trained adapters (A and B of fc1 and fc2) at `rank`.
TensorList adapters(std::int64_t rank, int seed) {
  at::manual_seed(1000 + seed);
  return {{"fc1.lora_A.weight", at::randn({rank, kIn1})},
          {"fc1.lora_B.weight", at::randn({kOut1, rank})},
          {"fc2.lora_A.weight", at::randn({rank, kOut1})},
          {"fc2.lora_B.weight", at::randn({kOut2, rank})}};
}

TensorList only_b(const TensorList& t) {
  TensorList out;
  for (const auto& x : t) {
    if (x.name.find("lora_B") != std::string::npos) out.push_back(x);
  }
  return out;
}

at::Tensor f64(const at::Tensor& t) { return t.to(at::kDouble); }

std::string refusal(Aggregation& agg, const TensorList& update) {
  auto ok = agg.check({&update, 1.0, 0, 0});
  EXPECT_FALSE(ok);
  if (ok) return "";
  EXPECT_EQ(ok.error().code, Errc::rejected);
  return ok.error().message;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---- fedit ---------------------------------------------------------------------------------

TEST(FedItPlugin, AveragesAAndBSeparately) {
  const auto global = global_model(8);
  const std::vector<TensorList> updates = {adapters(8, 1), adapters(8, 2), adapters(8, 3)};
  const std::vector<double> weights = {100, 300, 600};
  auto agg = aggregation("fedit", global);
  const auto out = aggregate(*agg, updates, weights);
  for (const auto& name : {"fc1.lora_A.weight", "fc1.lora_B.weight", "fc2.lora_A.weight",
                           "fc2.lora_B.weight"}) {
    auto expected = at::zeros_like(f64(find(updates[0], name)));
    for (std::size_t k = 0; k < updates.size(); ++k) {
      expected += f64(find(updates[k], name)) * (weights[k] / 1000.0);
    }
    EXPECT_TRUE(at::allclose(f64(find(out, name)), expected, 1e-6, 1e-6)) << name;
  }
  for (const auto& name : {"fc1.weight", "fc1.bias", "fc2.weight", "fc3.weight"}) {
    EXPECT_TRUE(at::equal(find(out, name), find(global, name))) << name << " must not change";
  }
}

TEST(FedItPlugin, ProductOfMeansMissesTheMeanProductByTheCrossTerm) {
  // Two clients with weights p and q = 1 − p:
  //   mean(B)·mean(A) − mean(B·A) = (pB1 + qB2)(pA1 + qA2) − pB1A1 − qB2A2
  //                               = −p·q·(B1 − B2)(A1 − A2).
  const double p = 0.3, q = 0.7;
  const auto u1 = adapters(8, 4), u2 = adapters(8, 5);
  auto agg = aggregation("fedit", global_model(8));
  const auto out = aggregate(*agg, {u1, u2}, {30, 70});
  for (const std::string layer : {"fc1", "fc2"}) {
    const auto a = layer + ".lora_A.weight", b = layer + ".lora_B.weight";
    const auto a1 = f64(find(u1, a)), b1 = f64(find(u1, b)), a2 = f64(find(u2, a)), b2 = f64(find(u2, b));
    const auto product_of_means = f64(find(out, b)).mm(f64(find(out, a)));
    const auto mean_of_products = p * b1.mm(a1) + q * b2.mm(a2);
    const auto cross = -p * q * (b1 - b2).mm(a1 - a2);
    EXPECT_TRUE(at::allclose(product_of_means - mean_of_products, cross, 1e-5, 1e-5)) << layer;
    EXPECT_GT(cross.norm().item<double>(), 1.0) << "the clients differ, so the cross term is not 0";
  }
}

TEST(FedItPlugin, RefusesBaseWeightsMixedRanksAndUnknownLayers) {
  auto agg = aggregation("fedit", global_model(8));
  auto with_base = adapters(8, 1);
  with_base.insert(with_base.begin(), {"fc1.weight", at::randn({kOut1, kIn1})});
  auto m = refusal(*agg, with_base);
  EXPECT_TRUE(contains(m, "'fc1.weight' (a base weight)")) << m;
  m = refusal(*agg, adapters(4, 1));
  EXPECT_TRUE(contains(m, "rank 8") && contains(m, "has rank 4") && contains(m, "flexlora")) << m;
  m = refusal(*agg, {{"fc3.lora_A.weight", at::randn({8, kOut2})}});
  EXPECT_TRUE(contains(m, "no adapter on 'fc3'")) << m;
  // A model without adapters cannot use fedit at all.
  auto lib = load_builtin("fedit", FLOTILLA_KIND_AGGREGATOR);
  auto r = PluginAggregation::create(lib, {}, {{"fc.weight", at::randn({4, 4})}});
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "lora.rank > 0")) << r.error().message;
}

// ---- ffa-lora ------------------------------------------------------------------------------

TEST(FfaLoraPlugin, NeverChangesAAndAveragesB) {
  auto global = global_model(8, 3);
  const auto a1 = find(global, "fc1.lora_A.weight").clone();
  const auto a2 = find(global, "fc2.lora_A.weight").clone();
  auto agg = aggregation("ffa-lora", global);
  for (int round = 0; round < 3; ++round) {
    const std::vector<TensorList> updates = {only_b(adapters(8, 10 * round + 1)),
                                             only_b(adapters(8, 10 * round + 2))};
    const auto out = aggregate(*agg, updates, {1, 3});
    EXPECT_TRUE(at::equal(find(out, "fc1.lora_A.weight"), a1)) << "round " << round;
    EXPECT_TRUE(at::equal(find(out, "fc2.lora_A.weight"), a2)) << "round " << round;
    for (const auto& name : {"fc1.lora_B.weight", "fc2.lora_B.weight"}) {
      const auto expected = 0.25 * f64(find(updates[0], name)) + 0.75 * f64(find(updates[1], name));
      EXPECT_TRUE(at::allclose(f64(find(out, name)), expected, 1e-6, 1e-6)) << name;
    }
    // With A common, the mean of B is exactly the mean of the updates B·A.
    const auto expected_product = 0.25 * f64(find(updates[0], "fc1.lora_B.weight")).mm(f64(a1)) +
                                  0.75 * f64(find(updates[1], "fc1.lora_B.weight")).mm(f64(a1));
    EXPECT_TRUE(at::allclose(f64(find(out, "fc1.lora_B.weight")).mm(f64(a1)), expected_product,
                             1e-6, 1e-6));
  }
}

TEST(FfaLoraPlugin, RefusesAnyA) {
  auto agg = aggregation("ffa-lora", global_model(8));
  auto m = refusal(*agg, adapters(8, 1));
  EXPECT_TRUE(contains(m, "ffa-lora never changes A")) << m;
  EXPECT_TRUE(contains(m, "fc1.lora_A.weight")) << m;
  m = refusal(*agg, {{"fc1.weight", at::randn({kOut1, kIn1})}});
  EXPECT_TRUE(contains(m, "base weight")) << m;
  m = refusal(*agg, only_b(adapters(4, 1)));
  EXPECT_TRUE(contains(m, "[24, 8]")) << m;
}

// ---- flexlora ------------------------------------------------------------------------------

constexpr double kAlpha = 16;

/// Σ_k p_k (alpha/r_k) B_k A_k for `layer`, in float64.
at::Tensor averaged_product(const std::vector<TensorList>& updates, const std::vector<double>& w,
                            const std::string& layer) {
  double total = 0;
  for (const double x : w) total += x;
  at::Tensor m;
  for (std::size_t k = 0; k < updates.size(); ++k) {
    const auto a = f64(find(updates[k], layer + ".lora_A.weight"));
    const auto b = f64(find(updates[k], layer + ".lora_B.weight"));
    const auto term = (w[k] / total) * (kAlpha / static_cast<double>(a.size(0))) * b.mm(a);
    m = m.defined() ? m + term : term;
  }
  return m;
}

/// sqrt(Σ_{i >= rank} σ_i²): the Frobenius error of M's best rank-`rank` approximation.
double tail(const at::Tensor& m, std::int64_t rank) {
  const auto s = at::linalg_svdvals(m);
  if (rank >= s.size(0)) return 0;
  return s.narrow(0, rank, s.size(0) - rank).pow(2).sum().sqrt().item<double>();
}

/// M's best rank-`rank` approximation (truncated SVD), float64.
at::Tensor best(const at::Tensor& m, std::int64_t rank) {
  auto [u, s, vh] = at::linalg_svd(m, false);
  const auto k = std::min<std::int64_t>(rank, s.size(0));
  return u.narrow(1, 0, k).mm(at::diag(s.narrow(0, 0, k))).mm(vh.narrow(0, 0, k));
}

/// Client templates: the names and shapes of the adapters at `rank` (meta tensors).
TensorList client_template(std::int64_t rank) {
  TensorList t;
  for (const auto& x : adapters(rank, 0)) {
    t.push_back({x.name, at::empty(x.tensor.sizes(), x.tensor.options().device(at::kMeta))});
  }
  return t;
}

TEST(FlexLoraPlugin, GlobalModelIsTheTruncatedSvdOfTheAveragedProduct) {
  const std::vector<TensorList> updates = {adapters(4, 1), adapters(8, 2), adapters(16, 3)};
  const std::vector<double> weights = {200, 300, 500};
  auto agg = aggregation("flexlora", global_model(8));
  const auto out = aggregate(*agg, updates, weights);
  for (const std::string layer : {"fc1", "fc2"}) {
    const auto m = averaged_product(updates, weights, layer);
    const auto a = f64(find(out, layer + ".lora_A.weight"));
    const auto b = f64(find(out, layer + ".lora_B.weight"));
    ASSERT_EQ(a.size(0), 8);
    ASSERT_EQ(b.size(1), 8);
    const auto approx = (kAlpha / 8.0) * b.mm(a);
    const double err = (m - approx).norm().item<double>();
    const double bound = tail(m, 8);
    EXPECT_GT(bound, 0.1 * m.norm().item<double>()) << "the truncation must matter";
    EXPECT_NEAR(err, bound, 1e-4 * m.norm().item<double>()) << layer;
    EXPECT_TRUE(at::allclose(approx, best(m, 8), 1e-4, 1e-4 * m.abs().max().item<double>())) << layer;
    // A's rows are orthonormal (right singular vectors).
    EXPECT_TRUE(at::allclose(a.mm(a.t()), at::eye(8, at::kDouble), 1e-4, 1e-4)) << layer;
  }
  EXPECT_TRUE(at::equal(find(out, "fc1.weight"), find(global_model(8), "fc1.weight")));
}

TEST(FlexLoraPlugin, ServesEveryClientItsOwnRank) {
  const std::vector<std::int64_t> ranks = {4, 8, 16};
  std::vector<TensorList> updates;
  for (std::size_t k = 0; k < ranks.size(); ++k) updates.push_back(adapters(ranks[k], 20 + int(k)));
  const std::vector<double> weights = {1, 1, 2};
  auto agg = aggregation("flexlora", global_model(8));

  // Before any version: each client gets the global adapters at its rank, B zero.
  for (std::size_t k = 0; k < ranks.size(); ++k) {
    const auto mine = agg->client_model(std::uint32_t(k), client_template(ranks[k]));
    ASSERT_TRUE(mine);
    ASSERT_EQ(mine->size(), 4U);
    const auto a = find(*mine, "fc1.lora_A.weight");
    EXPECT_EQ(a.sizes(), (std::vector<std::int64_t>{ranks[k], kIn1}));
    EXPECT_TRUE(at::equal(find(*mine, "fc1.lora_B.weight"), at::zeros({kOut1, ranks[k]})));
    const auto keep = std::min<std::int64_t>(ranks[k], 8);
    EXPECT_TRUE(at::equal(a.narrow(0, 0, keep),
                          find(global_model(8), "fc1.lora_A.weight").narrow(0, 0, keep)));
  }

  (void)aggregate(*agg, updates, weights);
  for (std::size_t k = 0; k < ranks.size(); ++k) {
    const auto r = ranks[k];
    const auto mine = agg->client_model(std::uint32_t(k), client_template(r));
    ASSERT_TRUE(mine);
    for (const std::string layer : {"fc1", "fc2"}) {
      const auto a = f64(find(*mine, layer + ".lora_A.weight"));
      const auto b = f64(find(*mine, layer + ".lora_B.weight"));
      const auto in = layer == "fc1" ? kIn1 : kOut1;
      const auto out = layer == "fc1" ? kOut1 : kOut2;
      EXPECT_EQ(a.sizes(), (std::vector<std::int64_t>{r, in})) << layer << " rank " << r;
      EXPECT_EQ(b.sizes(), (std::vector<std::int64_t>{out, r})) << layer << " rank " << r;
      const auto m = averaged_product(updates, weights, layer);
      const auto approx = (kAlpha / static_cast<double>(r)) * b.mm(a);
      const double tol = 1e-4 * m.norm().item<double>();
      EXPECT_NEAR((m - approx).norm().item<double>(), tail(m, r), tol) << layer << " rank " << r;
      EXPECT_TRUE(at::allclose(approx, best(m, r), 1e-4, 1e-4 * m.abs().max().item<double>()))
          << layer << " rank " << r;
    }
  }
  // Higher ranks approximate better.
  const auto m2 = averaged_product(updates, weights, "fc2");
  EXPECT_GT(tail(m2, 4), tail(m2, 8));
  EXPECT_GT(tail(m2, 8), tail(m2, 16));
}

TEST(FlexLoraPlugin, TakesAlphaFromTheHostAndRefusesIncompleteUpdates) {
  auto lib = load_builtin("flexlora", FLOTILLA_KIND_AGGREGATOR);
  ASSERT_EQ(lib->info().options.size(), 1U);
  EXPECT_EQ(lib->info().options[0].default_value, "0") << "0: the run's alpha, from the host";
  EXPECT_TRUE(lib->info().per_client);
  // Without the run's alpha (a model without adapters) it cannot work, and says why.
  auto none = PluginAggregation::create(load_builtin("flexlora", FLOTILLA_KIND_AGGREGATOR, {0.0}), {},
                                        global_model(8));
  ASSERT_FALSE(none);
  EXPECT_TRUE(contains(none.error().message, "lora_alpha")) << none.error().message;
  auto agg = aggregation("flexlora", global_model(8));
  auto m = refusal(*agg, only_b(adapters(8, 1)));
  EXPECT_TRUE(contains(m, "lacks 'fc1.lora_A.weight'")) << m;
  auto mixed = adapters(8, 1);
  mixed[0].tensor = at::randn({4, kIn1});  // fc1's A at rank 4, its B at rank 8
  m = refusal(*agg, mixed);
  EXPECT_TRUE(contains(m, "same r")) << m;
  m = refusal(*agg, {{"fc1.weight", at::randn({kOut1, kIn1})}});
  EXPECT_TRUE(contains(m, "base weight")) << m;
  // Another alpha scales B: (alpha/r)·B·A is what is approximated.
  const std::vector<TensorList> updates = {adapters(8, 1)};
  auto a16 = aggregation("flexlora", global_model(8));
  auto a32 = aggregation("flexlora", global_model(8), {}, {32.0});
  const auto o16 = aggregate(*a16, updates, {1});
  const auto o32 = aggregate(*a32, updates, {1});
  // A single client at the global rank: the model is its own adapters' product again.
  const auto p16 = f64(find(o16, "fc1.lora_B.weight")).mm(f64(find(o16, "fc1.lora_A.weight")));
  const auto p32 = f64(find(o32, "fc1.lora_B.weight")).mm(f64(find(o32, "fc1.lora_A.weight")));
  const auto own = f64(find(updates[0], "fc1.lora_B.weight")).mm(f64(find(updates[0], "fc1.lora_A.weight")));
  EXPECT_TRUE(at::allclose(p16, own, 1e-4, 1e-3));
  EXPECT_TRUE(at::allclose(p32, own, 1e-4, 1e-3));
}

// ---- fedex-lora ----------------------------------------------------------------------------

/// Σ_k p_k (W + (alpha/r)·B_k·A_k) for `layer`: the mean of the clients' merged weights, float64.
at::Tensor mean_merged(const at::Tensor& w, const std::vector<TensorList>& updates,
                       const std::vector<double>& weights, const std::string& layer) {
  return f64(w) + averaged_product(updates, weights, layer);
}

TEST(FedExLoraPlugin, GlobalModelEqualsTheMeanOfTheClientsMergedWeights) {
  auto global = global_model(8, 7);
  const std::vector<TensorList> updates = {adapters(8, 31), adapters(8, 32), adapters(8, 33)};
  const std::vector<double> weights = {100, 300, 600};
  auto agg = aggregation("fedex-lora", global);
  auto out = aggregate(*agg, updates, weights);
  for (const std::string layer : {"fc1", "fc2"}) {
    const auto a = f64(find(out, layer + ".lora_A.weight"));
    const auto b = f64(find(out, layer + ".lora_B.weight"));
    const auto w = f64(find(out, layer + ".weight"));
    const auto expected = mean_merged(find(global, layer + ".weight"), updates, weights, layer);
    const auto effective = w + (kAlpha / 8.0) * b.mm(a);
    EXPECT_TRUE(at::allclose(effective, expected, 1e-4, 1e-4)) << layer;
    // A and B are FedIT's means; the base weight took the residual (not zero: clients differ).
    auto mean_a = at::zeros_like(a);
    for (std::size_t k = 0; k < updates.size(); ++k) {
      mean_a += f64(find(updates[k], layer + ".lora_A.weight")) * (weights[k] / 1000.0);
    }
    EXPECT_TRUE(at::allclose(a, mean_a, 1e-6, 1e-6)) << layer;
    EXPECT_GT((w - f64(find(global, layer + ".weight"))).norm().item<double>(), 0.1) << layer;
  }
  EXPECT_TRUE(at::equal(find(out, "fc3.weight"), find(global, "fc3.weight"))) << "fc3 has no adapter";
  EXPECT_TRUE(at::equal(find(out, "fc1.bias"), find(global, "fc1.bias")));

  // The next version folds into the base weight it produced, not the initial one.
  const std::vector<TensorList> second = {adapters(8, 41), adapters(8, 42)};
  const auto out2 = aggregate(*agg, second, {1, 1});
  const auto effective2 = f64(find(out2, "fc1.weight")) +
                          (kAlpha / 8.0) * f64(find(out2, "fc1.lora_B.weight")).mm(f64(find(out2, "fc1.lora_A.weight")));
  EXPECT_TRUE(at::allclose(effective2, mean_merged(find(out, "fc1.weight"), second, {1, 1}, "fc1"), 1e-4, 1e-4));
}

TEST(FedExLoraPlugin, ItsBaseWeightsSurviveACheckpoint) {
  const auto global = global_model(8, 7);
  auto agg = aggregation("fedex-lora", global);
  (void)aggregate(*agg, {adapters(8, 51), adapters(8, 52)}, {1, 2});
  auto saved = agg->export_state();
  ASSERT_TRUE(saved) << saved.error().message;
  // A new process: built from the initial model, then the saved state.
  auto resumed = aggregation("fedex-lora", global);
  ASSERT_TRUE(resumed->import_state(*saved));
  const std::vector<TensorList> next = {adapters(8, 53), adapters(8, 54)};
  const auto a = aggregate(*agg, next, {1, 1});
  const auto b = aggregate(*resumed, next, {1, 1});
  EXPECT_TRUE(at::allclose(find(a, "fc1.weight"), find(b, "fc1.weight"), 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(find(a, "fc2.weight"), find(b, "fc2.weight"), 1e-6, 1e-6));
}

TEST(FedExLoraPlugin, RefusesMixedRanksAndHalfAdapters) {
  auto agg = aggregation("fedex-lora", global_model(8));
  auto m = refusal(*agg, adapters(4, 1));
  EXPECT_TRUE(contains(m, "rank 8") && contains(m, "has rank 4")) << m;
  m = refusal(*agg, only_b(adapters(8, 1)));
  EXPECT_TRUE(contains(m, "lacks 'fc1.lora_A.weight'")) << m;
  // A model whose adapted layer has no base weight of the right shape cannot use it.
  auto global = global_model(8);
  global.erase(global.begin());  // fc1.weight
  auto r = PluginAggregation::create(load_builtin("fedex-lora", FLOTILLA_KIND_AGGREGATOR), {}, global);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "no 'fc1.weight'")) << r.error().message;
}

// ---- flora ---------------------------------------------------------------------------------

TEST(FloraPlugin, MergesTheStackedAdaptersOfEveryRankExactly) {
  const auto global = global_model(8, 9);
  const std::vector<std::int64_t> ranks = {4, 8, 16};
  std::vector<TensorList> updates;
  for (std::size_t k = 0; k < ranks.size(); ++k) updates.push_back(adapters(ranks[k], 60 + int(k)));
  const std::vector<double> weights = {200, 300, 500};
  auto agg = aggregation("flora", global);
  const auto out = aggregate(*agg, updates, weights);
  for (const std::string layer : {"fc1", "fc2"}) {
    // The stack, built explicitly: B_stack = [p_k s_k B_k], A_stack = [A_k].
    std::vector<at::Tensor> bs, as;
    for (std::size_t k = 0; k < updates.size(); ++k) {
      const double scale = kAlpha / static_cast<double>(ranks[k]);
      bs.push_back(f64(find(updates[k], layer + ".lora_B.weight")) * (weights[k] / 1000.0 * scale));
      as.push_back(f64(find(updates[k], layer + ".lora_A.weight")));
    }
    const auto stacked = at::cat(bs, 1).mm(at::cat(as, 0));
    EXPECT_EQ(at::cat(as, 0).size(0), 28) << "ranks 4 + 8 + 16 stacked";
    const auto expected = f64(find(global, layer + ".weight")) + stacked;
    EXPECT_TRUE(at::allclose(f64(find(out, layer + ".weight")), expected, 1e-4, 1e-4)) << layer;
    // Fresh adapters for the next round: B zero, so the model is exactly the merged weight.
    EXPECT_TRUE(at::equal(find(out, layer + ".lora_B.weight"), at::zeros_like(find(out, layer + ".lora_B.weight"))));
  }
}

TEST(FloraPlugin, ServesEveryClientFreshAdaptersAtItsRank) {
  auto agg = aggregation("flora", global_model(8, 9));
  auto a_at = [&](std::int64_t rank) {
    const auto mine = agg->client_model(0, client_template(rank));
    EXPECT_TRUE(mine);
    EXPECT_TRUE(at::equal(find(*mine, "fc1.lora_B.weight"), at::zeros({kOut1, rank})));
    return find(*mine, "fc1.lora_A.weight").clone();
  };
  const auto a4 = a_at(4), a16 = a_at(16);
  ASSERT_EQ(a16.sizes(), (std::vector<std::int64_t>{16, kIn1}));
  EXPECT_TRUE(at::equal(a4, a16.narrow(0, 0, 4))) << "a lower rank's A is the first rows of a higher rank's";
  const double bound = 1.0 / std::sqrt(static_cast<double>(kIn1));
  EXPECT_LE(a16.abs().max().item<double>(), bound);
  (void)aggregate(*agg, {adapters(8, 70)}, {1});
  EXPECT_FALSE(at::equal(a_at(16), a16)) << "every round starts from new adapters";
}

// ---- fedsa-lora ----------------------------------------------------------------------------

TEST(FedSaLoraPlugin, AveragesOnlyA) {
  auto global = global_model(8, 11, /*zero_b=*/false);
  auto agg = aggregation("fedsa-lora", global);
  auto only_a = [](const TensorList& t) {
    TensorList out;
    for (const auto& x : t) {
      if (x.name.find("lora_A") != std::string::npos) out.push_back(x);
    }
    return out;
  };
  const std::vector<TensorList> updates = {only_a(adapters(8, 81)), only_a(adapters(8, 82))};
  const auto out = aggregate(*agg, updates, {1, 3});
  for (const auto& name : {"fc1.lora_A.weight", "fc2.lora_A.weight"}) {
    const auto expected = 0.25 * f64(find(updates[0], name)) + 0.75 * f64(find(updates[1], name));
    EXPECT_TRUE(at::allclose(f64(find(out, name)), expected, 1e-6, 1e-6)) << name;
  }
  for (const auto& name : {"fc1.lora_B.weight", "fc2.lora_B.weight", "fc1.weight"}) {
    EXPECT_TRUE(at::equal(find(out, name), find(global, name))) << name << " is never aggregated";
  }
  const auto m = refusal(*agg, adapters(8, 83));
  EXPECT_TRUE(contains(m, "keeps its B") && contains(m, "fc1.lora_B.weight")) << m;
}

// ---- what each declares ----------------------------------------------------------------------

TEST(LoraPlugins, DeclareWhatTheyNeedRatherThanBeingKnownByName) {
  auto flags = [](const std::string& name) {
    return load_builtin(name, FLOTILLA_KIND_AGGREGATOR)->info().aggregator_flags;
  };
  auto traits = [](const std::string& name) {
    return traits_of(load_builtin(name, FLOTILLA_KIND_AGGREGATOR)->info());
  };
  for (const auto* name : {"fedit", "ffa-lora", "flexlora", "fedex-lora", "flora", "fedsa-lora"}) {
    EXPECT_TRUE(flags(name) & FLOTILLA_AGG_LORA_ADAPTERS) << name;
  }
  EXPECT_TRUE(traits("ffa-lora").lora_frozen_a);
  EXPECT_TRUE(traits("fedsa-lora").lora_local_b);
  EXPECT_FALSE(traits("fedit").lora_frozen_a || traits("fedit").lora_local_b || traits("fedit").writes_base);
  EXPECT_TRUE(traits("fedex-lora").writes_base && traits("flora").writes_base);
  EXPECT_TRUE(traits("flexlora").per_client && traits("flora").per_client);
  EXPECT_FALSE(traits("fedit").per_client || traits("fedex-lora").per_client);
  EXPECT_FALSE(traits("fedavg").lora_adapters) << "fedavg averages whatever clients send";
}

}  // namespace

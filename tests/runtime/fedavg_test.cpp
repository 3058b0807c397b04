#include "runtime/plugin_host/fedavg.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

using namespace flotilla;

namespace {

TensorList random_model(std::int64_t seed, at::ScalarType dtype = at::kFloat) {
  torch::manual_seed(seed);
  return {{"conv.weight", torch::randn({16, 1, 5, 5}).to(dtype)},
          {"conv.bias", torch::randn({16}).to(dtype)},
          {"fc.weight", torch::randn({10, 300}).to(dtype)}};
}

/// The textbook definition, computed independently: Σ w_k x_k / Σ w_k in float64.
TensorList naive_weighted_mean(const std::vector<TensorList>& updates, const std::vector<double>& w) {
  TensorList out;
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  for (std::size_t i = 0; i < updates[0].size(); ++i) {
    auto sum = torch::zeros_like(updates[0][i].tensor, torch::kDouble);
    for (std::size_t k = 0; k < updates.size(); ++k) sum += updates[k][i].tensor.to(torch::kDouble) * w[k];
    out.push_back({updates[0][i].name, sum / total});
  }
  return out;
}

}  // namespace

TEST(FedAvg, OneAtATimeMatchesNaiveWeightedMean) {
  auto global = random_model(0);
  std::vector<TensorList> updates;
  std::vector<double> weights = {100, 2500, 37, 900, 1};
  for (int k = 0; k < 5; ++k) updates.push_back(random_model(k + 1));
  FedAvg fold(global);
  for (int k = 0; k < 5; ++k) ASSERT_TRUE(fold.accept({&updates[k], weights[k], 0}).has_value());
  EXPECT_EQ(fold.accepted(), 5U);
  auto result = fold.finalize();
  auto expected = naive_weighted_mean(updates, weights);
  ASSERT_EQ(result.size(), expected.size());
  for (std::size_t i = 0; i < result.size(); ++i) {
    EXPECT_EQ(result[i].name, expected[i].name);
    EXPECT_EQ(result[i].tensor.scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::allclose(result[i].tensor.to(torch::kDouble), expected[i].tensor, 1e-5, 1e-6))
        << result[i].name;
  }
}

TEST(FedAvg, BatchFoldEqualsOneAtATime) {
  auto global = random_model(0);
  std::vector<TensorList> updates;
  for (int k = 0; k < 7; ++k) updates.push_back(random_model(10 + k));
  std::vector<WeightedUpdate> batch;
  for (int k = 0; k < 7; ++k) batch.push_back({&updates[k], 1.0 + k, 0});
  FedAvg a(global), b(global);
  for (const auto& u : batch) ASSERT_TRUE(a.accept(u).has_value());
  ASSERT_TRUE(b.accept_batch(batch).has_value());
  auto ra = a.finalize(), rb = b.finalize();
  for (std::size_t i = 0; i < ra.size(); ++i) EXPECT_TRUE(torch::allclose(ra[i].tensor, rb[i].tensor, 1e-6, 1e-6));
}

TEST(FedAvg, HalfPrecisionIsAccumulatedInFloat) {
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    auto global = random_model(0, dtype);
    std::vector<TensorList> updates = {random_model(1, dtype), random_model(2, dtype)};
    FedAvg fold(global);
    ASSERT_TRUE(fold.accept({&updates[0], 3, 0}).has_value());
    ASSERT_TRUE(fold.accept({&updates[1], 1, 0}).has_value());
    auto result = fold.finalize();
    auto expected = naive_weighted_mean(updates, {3, 1});
    EXPECT_EQ(result[0].tensor.scalar_type(), dtype);
    EXPECT_TRUE(torch::allclose(result[0].tensor.to(torch::kDouble), expected[0].tensor, 1e-2, 1e-2));
  }
}

TEST(FedAvg, MismatchedUpdateIsRejectedAndAcceptedOnesSurvive) {
  auto global = random_model(0);
  auto good = random_model(1);
  FedAvg fold(global);
  ASSERT_TRUE(fold.accept({&good, 2, 0}).has_value());

  auto wrong_shape = random_model(2);
  wrong_shape[2].tensor = torch::randn({10, 299});
  auto e = fold.accept({&wrong_shape, 1, 0});
  ASSERT_FALSE(e.has_value());
  EXPECT_EQ(e.error().code, Errc::rejected);
  EXPECT_NE(e.error().message.find("'fc.weight'"), std::string::npos) << e.error().message;
  EXPECT_NE(e.error().message.find("[10, 300]"), std::string::npos) << e.error().message;

  auto wrong_name = random_model(3);
  wrong_name[1].name = "conv.b";
  EXPECT_FALSE(fold.accept({&wrong_name, 1, 0}).has_value());
  TensorList too_few(good.begin(), good.begin() + 2);
  EXPECT_FALSE(fold.accept({&too_few, 1, 0}).has_value());
  auto wrong_dtype = random_model(4, torch::kDouble);
  EXPECT_FALSE(fold.accept({&wrong_dtype, 1, 0}).has_value());
  EXPECT_FALSE(fold.accept({&good, 0, 0}).has_value()) << "zero weight";

  // A batch with one bad update folds none of it.
  std::vector<WeightedUpdate> batch = {{&good, 1, 0}, {&wrong_shape, 1, 0}};
  EXPECT_FALSE(fold.accept_batch(batch).has_value());

  EXPECT_EQ(fold.accepted(), 1U);
  auto result = fold.finalize();
  for (std::size_t i = 0; i < result.size(); ++i) EXPECT_TRUE(torch::allclose(result[i].tensor, good[i].tensor));
}

TEST(FedAvg, FinalizeResetsForTheNextVersion) {
  auto global = random_model(0);
  auto a = random_model(1), b = random_model(2);
  FedAvg fold(global);
  ASSERT_TRUE(fold.accept({&a, 1, 0}).has_value());
  (void)fold.finalize();
  EXPECT_EQ(fold.accepted(), 0U);
  ASSERT_TRUE(fold.accept({&b, 5, 0}).has_value());
  auto second = fold.finalize();
  EXPECT_TRUE(torch::allclose(second[0].tensor, b[0].tensor));
}

TEST(FedAvg, IntegerTensorsTakeTheLatestValue) {
  TensorList global = {{"w", torch::zeros({4})}, {"steps", torch::zeros({1}, torch::kLong)}};
  TensorList u1 = {{"w", torch::ones({4})}, {"steps", torch::full({1}, 5, torch::kLong)}};
  TensorList u2 = {{"w", torch::ones({4}) * 3}, {"steps", torch::full({1}, 9, torch::kLong)}};
  FedAvg fold(global);
  ASSERT_TRUE(fold.accept({&u1, 1, 0}).has_value());
  ASSERT_TRUE(fold.accept({&u2, 1, 0}).has_value());
  auto r = fold.finalize();
  EXPECT_TRUE(torch::allclose(r[0].tensor, torch::full({4}, 2.0)));
  EXPECT_EQ(r[1].tensor.item<std::int64_t>(), 9);
}

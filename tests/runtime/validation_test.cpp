#include "runtime/server/validation.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

using namespace flotilla;

namespace {

TensorList model_of(float value) {
  return {{"w", torch::full({4}, value)}, {"steps", torch::zeros({1}, torch::kLong)}};
}

/// A model moved by `distance` in norm along the first axis.
TensorList moved(float distance) {
  auto m = model_of(0);
  m[0].tensor[0] = distance;
  return m;
}

ValidationOptions norms(ValidationOptions::Norm mode) {
  ValidationOptions o;
  o.norm = mode;
  o.norm_factor = 5;
  o.norm_window = 10;
  o.norm_min_samples = 5;
  return o;
}

}  // namespace

TEST(UpdateValidation, NaNAndInfinityAreRefusedFiniteValuesAreNot) {
  UpdateValidator v;
  const auto model = model_of(0);
  auto nan = model_of(1);
  nan[0].tensor[2] = std::numeric_limits<float>::quiet_NaN();
  auto inf = model_of(1);
  inf[0].tensor[0] = -std::numeric_limits<float>::infinity();
  auto huge = model_of(3e38F);  // finite, though its sum overflows a float
  EXPECT_FALSE(v.inspect(nan, model).ok);
  EXPECT_NE(v.inspect(nan, model).why.find("'w' has a NaN or an infinity"), std::string::npos);
  EXPECT_FALSE(v.inspect(inf, model).ok);
  EXPECT_TRUE(v.inspect(huge, model).ok);
  EXPECT_TRUE(v.inspect(model_of(1), model).ok);
  ValidationOptions off;
  off.finite = false;
  EXPECT_TRUE(UpdateValidator(off).inspect(nan, model).ok) << "update-validation = \"off\"";
}

TEST(UpdateValidation, NormOutliersAreRefusedOnlyOnceThereIsAMedian) {
  UpdateValidator v(norms(ValidationOptions::Norm::reject));
  const auto model = model_of(0);
  // Before five accepted updates nothing is an outlier.
  auto first = v.inspect(moved(100), model);
  EXPECT_TRUE(first.ok);
  EXPECT_DOUBLE_EQ(first.norm, 100);
  for (float d : {1.0F, 2.0F, 1.5F, 0.5F, 1.0F}) {
    auto verdict = v.inspect(moved(d), model);
    ASSERT_TRUE(verdict.ok);
    EXPECT_NEAR(verdict.norm, d, 1e-6);
    v.accepted(verdict.norm);
  }
  ASSERT_TRUE(v.median());
  EXPECT_DOUBLE_EQ(*v.median(), 1.0);
  EXPECT_TRUE(v.inspect(moved(4.9F), model).ok) << "under 5 x the median";
  auto outlier = v.inspect(moved(50), model);
  EXPECT_FALSE(outlier.ok);
  EXPECT_TRUE(outlier.outlier);
  EXPECT_NE(outlier.why.find("more than 5 x the median 1"), std::string::npos) << outlier.why;
}

TEST(UpdateValidation, ClippingScalesTheChangeToTheBoundKeepingItsDirection) {
  UpdateValidator v(norms(ValidationOptions::Norm::clip));
  const auto model = model_of(1);
  for (int i = 0; i < 5; ++i) v.accepted(2.0);
  TensorList update = model_of(1);
  update[0].tensor = torch::tensor({1.0F + 30, 1.0F + 40, 1.0F, 1.0F});  // change (30, 40): norm 50
  update[1].tensor = torch::full({1}, 7, torch::kLong);
  const auto verdict = v.inspect(update, model);
  ASSERT_TRUE(verdict.ok);
  EXPECT_TRUE(verdict.outlier);
  EXPECT_NEAR(verdict.norm, 50, 1e-4);
  EXPECT_NEAR(verdict.scale, 10.0 / 50, 1e-9);
  const auto clipped = UpdateValidator::clip(update, model, verdict.scale);
  EXPECT_TRUE(torch::allclose(clipped[0].tensor, torch::tensor({1.0F + 6, 1.0F + 8, 1.0F, 1.0F})))
      << clipped[0].tensor;
  EXPECT_EQ(clipped[1].tensor.item<std::int64_t>(), 7) << "integer tensors pass through";
}

TEST(UpdateValidation, TheMedianFollowsTheLatestWindow) {
  UpdateValidator v(norms(ValidationOptions::Norm::reject));
  for (int i = 0; i < 10; ++i) v.accepted(1.0);
  for (int i = 0; i < 10; ++i) v.accepted(100.0);  // the fleet's updates grew: the old ones left
  EXPECT_DOUBLE_EQ(*v.median(), 100.0);
  EXPECT_TRUE(v.inspect(moved(300), model_of(0)).ok);
}

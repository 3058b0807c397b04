#include "runtime/trainer.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <numeric>

namespace flotilla {
namespace {

const c10::Device kCpu(c10::kCPU);

std::unique_ptr<Model> make(const std::string& name, std::uint64_t seed) {
  ModelSpec spec;
  spec.name = name;
  spec.hidden = 64;
  return std::move(Model::create(spec, kCpu, seed).value());
}

bool states_equal(const TensorList& a, const TensorList& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i].tensor, b[i].tensor)) return false;
  }
  return true;
}

/// 2,000 training and 1,000 held-out Fashion-MNIST examples, loaded once.
class Trainer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One thread: with ctest -j2 or any other load on a 2-core machine, two OpenMP threads
    // spin against it (a 150-step run went from 0.4 s to 31 s).
    at::set_num_threads(1);
    auto train = load_fashion_mnist("/usr/share/datasets/fashion-mnist", true);
    ASSERT_TRUE(train) << train.error().message;
    auto test = load_fashion_mnist("/usr/share/datasets/fashion-mnist", false);
    ASSERT_TRUE(test) << test.error().message;
    std::vector<std::int64_t> idx(2000);
    std::iota(idx.begin(), idx.end(), 0);
    train_ = new Dataset(subset(*train, idx));
    idx.resize(1000);
    test_ = new Dataset(subset(*test, idx));
  }
  static void TearDownTestSuite() {
    delete train_;
    delete test_;
    train_ = test_ = nullptr;
  }
  static Dataset* train_;
  static Dataset* test_;
};
Dataset* Trainer::train_ = nullptr;
Dataset* Trainer::test_ = nullptr;

TEST_F(Trainer, TrainingLowersLossAndBeatsChance) {
  for (const std::string name : {"cnn", "mlp"}) {
    auto model = make(name, 1);
    const auto before = evaluate(*model, *test_);
    EXPECT_EQ(before.num_examples, 1000U);
    EXPECT_LT(before.accuracy, 0.3) << name << ": an untrained model should be near chance";

    TrainingConfig config;
    config.local_steps = 150;
    config.batch_size = 32;
    config.learning_rate = 0.05F;
    config.momentum = 0.9F;
    config.seed = 4;
    const auto stats = train_local(*model, *train_, config);
    EXPECT_EQ(stats.steps, 150U);
    EXPECT_EQ(stats.num_examples, 2000U);
    EXPECT_GT(stats.seconds, 0.0);
    EXPECT_GT(stats.accuracy, 0.5) << name;

    const auto after = evaluate(*model, *test_);
    EXPECT_LT(after.loss, before.loss * 0.5) << name;
    EXPECT_GT(after.accuracy, 0.65) << name << ": held-out accuracy after training";
    // Evaluation restores training mode and leaves the weights alone.
    EXPECT_TRUE(static_cast<torch::nn::Module*>(model->module())->is_training());
    const auto again = evaluate(*model, *test_, 333);
    EXPECT_NEAR(again.loss, after.loss, 1e-6);
    EXPECT_DOUBLE_EQ(again.accuracy, after.accuracy);
  }
}

TEST_F(Trainer, SameSeedSameWeights) {
  TrainingConfig config;
  config.local_steps = 10;
  config.batch_size = 64;
  config.learning_rate = 0.05F;
  config.momentum = 0.9F;
  config.weight_decay = 1e-4F;
  config.seed = 17;
  auto a = make("cnn", 3);
  auto b = make("cnn", 3);
  const auto sa = train_local(*a, *train_, config);
  const auto sb = train_local(*b, *train_, config);
  EXPECT_TRUE(states_equal(a->state(), b->state()));
  EXPECT_DOUBLE_EQ(sa.loss, sb.loss);

  // Another shuffling seed visits other batches: other weights.
  auto c = make("cnn", 3);
  config.seed = 18;
  (void)train_local(*c, *train_, config);
  EXPECT_FALSE(states_equal(a->state(), c->state()));
}

TEST_F(Trainer, CountsStepsAndEpochs) {
  std::vector<std::int64_t> idx(100);
  std::iota(idx.begin(), idx.end(), 0);
  const auto small = subset(*train_, idx);
  auto model = make("mlp", 1);
  TrainingConfig config;
  config.batch_size = 32;
  config.learning_rate = 0.01F;

  // Steps cycle through epochs as needed: 10 steps over 4 batches per epoch.
  config.local_steps = 10;
  EXPECT_EQ(train_local(*model, small, config).steps, 10U);

  // local_steps == 0: whole epochs, the last batch of each partial (100 = 3*32 + 4).
  config.local_steps = 0;
  config.local_epochs = 1;
  EXPECT_EQ(train_local(*model, small, config).steps, 4U);
  config.local_epochs = 3;
  const auto stats = train_local(*model, small, config);
  EXPECT_EQ(stats.steps, 12U);
  EXPECT_EQ(stats.num_examples, 100U);

  config.local_epochs = 0;
  EXPECT_EQ(train_local(*model, small, config).steps, 0U);
}

TEST_F(Trainer, TrainingChangesOnlyWhatItShould) {
  auto model = make("mlp", 1);
  const auto before = model->state();
  TrainingConfig config;
  config.local_steps = 1;
  config.batch_size = 8;
  (void)train_local(*model, *train_, config);
  EXPECT_FALSE(states_equal(before, model->state()));
  // Evaluation is read-only.
  const auto trained = model->state();
  (void)evaluate(*model, *test_);
  EXPECT_TRUE(states_equal(trained, model->state()));
}

TEST_F(Trainer, BadConfigIsAnError) {
  auto model = make("mlp", 1);
  TrainingConfig config;
  config.batch_size = 0;
  EXPECT_THROW((void)train_local(*model, *train_, config), Failure);
  config.batch_size = 8;
  config.learning_rate = -1;
  EXPECT_THROW((void)train_local(*model, *train_, config), Failure);
}

}  // namespace
}  // namespace flotilla

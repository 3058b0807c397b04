#include "runtime/ml/trainer.hpp"
#include "runtime/ml/client_task.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <numeric>
#include <random>

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

/// Optimizer plugin `name` from the built-in plugins (build/plugins, next to build/bin).
std::shared_ptr<PluginLibrary> plugin(const std::string& name) {
  static PluginRegistry registry({}, kCpu);
  return registry.load(name, FLOTILLA_KIND_OPTIMIZER).value();
}

/// train_local with a fresh optimizer from plugin `optimizer` (what a client does per task).
TrainStats train(Model& model, const Dataset& data, const TrainingConfig& config,
                 const std::string& optimizer = "sgd", const PluginOptions& options = {}) {
  auto opt = make_optimizer(plugin(optimizer), options, config, model).value();
  return train_local(model, data, config, *opt);
}

/// The training loop as it was with torch::optim::SGD (before optimizer plugins), as reference.
void train_with_torch_sgd(Model& model, const Dataset& data, const TrainingConfig& config) {
  auto& module = *static_cast<torch::nn::Module*>(model.module());
  torch::optim::SGD optimizer(module.parameters(), torch::optim::SGDOptions(config.learning_rate)
                                                       .momentum(config.momentum)
                                                       .weight_decay(config.weight_decay));
  const std::int64_t n = data.size();
  const auto batch = static_cast<std::int64_t>(config.batch_size);
  std::mt19937_64 rng(config.seed);
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  torch::Tensor order_tensor;
  std::int64_t pos = n;
  for (std::uint32_t step = 0; step < config.local_steps; ++step) {
    if (pos >= n) {
      std::iota(order.begin(), order.end(), std::int64_t{0});
      shuffle(order, rng);
      order_tensor = torch::from_blob(order.data(), {n}, torch::kInt64).clone();
      pos = 0;
    }
    const std::int64_t len = std::min(batch, n - pos);
    const auto index = order_tensor.narrow(0, pos, len);
    pos += len;
    optimizer.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model.forward(data.inputs.index_select(0, index)),
                                                     data.labels.index_select(0, index));
    loss.backward();
    optimizer.step();
  }
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
    const auto stats = train(*model, *train_, config);
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
  const auto sa = train(*a, *train_, config);
  const auto sb = train(*b, *train_, config);
  EXPECT_TRUE(states_equal(a->state(), b->state()));
  EXPECT_DOUBLE_EQ(sa.loss, sb.loss);

  // Another shuffling seed visits other batches: other weights.
  auto c = make("cnn", 3);
  config.seed = 18;
  (void)train(*c, *train_, config);
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
  EXPECT_EQ(train(*model, small, config).steps, 10U);

  // local_steps == 0: whole epochs, the last batch of each partial (100 = 3*32 + 4).
  config.local_steps = 0;
  config.local_epochs = 1;
  EXPECT_EQ(train(*model, small, config).steps, 4U);
  config.local_epochs = 3;
  const auto stats = train(*model, small, config);
  EXPECT_EQ(stats.steps, 12U);
  EXPECT_EQ(stats.num_examples, 100U);

  config.local_epochs = 0;
  EXPECT_EQ(train(*model, small, config).steps, 0U);
}

TEST_F(Trainer, TrainingChangesOnlyWhatItShould) {
  auto model = make("mlp", 1);
  const auto before = model->state();
  TrainingConfig config;
  config.local_steps = 1;
  config.batch_size = 8;
  (void)train(*model, *train_, config);
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
  EXPECT_THROW((void)train(*model, *train_, config), Failure);
  config.batch_size = 8;
  config.learning_rate = -1;
  EXPECT_THROW((void)train(*model, *train_, config), Failure);
}

TEST_F(Trainer, SgdPluginTrainsLikeTorchSgd) {
  TrainingConfig config;
  config.local_steps = 12;
  config.batch_size = 32;
  config.learning_rate = 0.05F;
  config.momentum = 0.9F;
  config.weight_decay = 1e-3F;
  config.seed = 5;
  auto ours = make("cnn", 2);
  auto reference = make("cnn", 2);
  (void)train(*ours, *train_, config);
  train_with_torch_sgd(*reference, *train_, config);
  const auto a = ours->state();
  const auto b = reference->state();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::allclose(a[i].tensor, b[i].tensor, 1e-5, 1e-6)) << a[i].name;
  }
}

TEST_F(Trainer, TrainsWithAdamW) {
  auto model = make("mlp", 1);
  const auto before = evaluate(*model, *test_);
  TrainingConfig config;
  config.local_steps = 100;
  config.batch_size = 32;
  config.learning_rate = 1e-3F;
  config.seed = 4;
  (void)train(*model, *train_, config, "adamw");
  EXPECT_LT(evaluate(*model, *test_).loss, before.loss * 0.6);
}

TEST_F(Trainer, OnlyTrainableParametersAreStepped) {
  auto model = make("mlp", 1);
  auto& module = *static_cast<torch::nn::Module*>(model->module());
  std::string frozen;
  for (auto& p : module.named_parameters()) {
    if (frozen.empty()) {
      frozen = p.key();
      p.value().requires_grad_(false);
    }
  }
  const auto params = trainable_parameters(*model);
  EXPECT_EQ(params.size(), module.parameters().size() - 1);
  for (const auto& p : params) EXPECT_NE(p.name, frozen);
  const auto before = module.named_parameters()[frozen].clone();
  TrainingConfig config;
  config.local_steps = 3;
  config.batch_size = 8;
  config.weight_decay = 0.1F;
  (void)train(*model, *train_, config);
  EXPECT_TRUE(torch::equal(module.named_parameters()[frozen], before));
}

TEST(OptimizerOptions, TrainingKeysBecomeThePluginsOptions) {
  TrainingConfig config;
  config.learning_rate = 0.5F;
  config.momentum = 0.25F;
  config.weight_decay = 0.125F;
  // sgd declares all three; values are passed exactly.
  auto sgd = optimizer_options(plugin("sgd")->info(), {{"nesterov", "true"}}, config);
  ASSERT_TRUE(sgd) << sgd.error().message;
  EXPECT_EQ(sgd->at("learning-rate"), "0.5");
  EXPECT_EQ(sgd->at("momentum"), "0.25");
  EXPECT_EQ(sgd->at("weight-decay"), "0.125");
  EXPECT_EQ(sgd->at("nesterov"), "true");
  // adamw has no momentum: refused naming both keys, unless momentum is 0.
  auto adamw = optimizer_options(plugin("adamw")->info(), {}, config);
  ASSERT_FALSE(adamw);
  EXPECT_THAT(adamw.error().message, ::testing::HasSubstr("training.momentum"));
  EXPECT_THAT(adamw.error().message, ::testing::HasSubstr("training.optimizer 'adamw' has no option 'momentum'"));
  config.momentum = 0;
  adamw = optimizer_options(plugin("adamw")->info(), {{"beta2", "0.99"}}, config);
  ASSERT_TRUE(adamw) << adamw.error().message;
  EXPECT_EQ(adamw->count("momentum"), 0U);
  EXPECT_EQ(adamw->at("weight-decay"), "0.125");
  // A [training.options] key that is one of [training]'s is refused.
  auto dup = optimizer_options(plugin("sgd")->info(), {{"learning-rate", "0.1"}}, config);
  ASSERT_FALSE(dup);
  EXPECT_THAT(dup.error().message, ::testing::HasSubstr("training.options.learning-rate duplicates training.learning-rate"));
}

TEST(OptimizerOptions, PluginRefusalsAreErrors) {
  auto model = make("mlp", 1);
  TrainingConfig config;
  auto bad = make_optimizer(plugin("galore-adamw"), {{"rank", "0"}}, config, *model);
  ASSERT_FALSE(bad);
  EXPECT_THAT(bad.error().message, ::testing::HasSubstr("option 'rank' is 0"));
  auto unknown = make_optimizer(plugin("sgd"), {{"betas", "1"}}, config, *model, "run.toml: training.options");
  ASSERT_FALSE(unknown);
  EXPECT_THAT(unknown.error().message, ::testing::HasSubstr("run.toml: training.options: unknown option 'betas'"));
}

TEST_F(Trainer, ATaskKeepsTheTensorsItNamesOnTheClientFromTaskToTask) {
  ModelSpec spec;
  spec.name = "mlp";
  spec.hidden = 32;
  spec.lora.rank = 4;
  spec.lora.targets = {"fc1", "fc2"};
  auto model = Model::create(spec, kCpu, 1).value();
  auto get = [](const TensorList& s, const std::string& name) {
    for (const auto& t : s) {
      if (t.name == name) return t.tensor;
    }
    throw std::out_of_range(name);
  };
  Task task;
  task.round = 1;
  task.config.local_steps = 20;
  task.config.learning_rate = 0.05F;
  task.keep_local = {"fc1.lora_B.weight", "fc2.lora_B.weight"};
  // What a FedSA-LoRA task carries: A, no B.
  for (const auto& t : model->trainable_state()) {
    if (t.name.find("lora_A") != std::string::npos) task.tensors.push_back(t);
  }
  auto first = run_task(*model, *train_, task, plugin("sgd"), {});
  ASSERT_TRUE(first) << first.error().message;
  std::vector<std::string> sent;
  for (const auto& t : first->update.tensors) sent.push_back(t.name);
  EXPECT_EQ(sent, (std::vector<std::string>{"fc1.lora_A.weight", "fc2.lora_A.weight"})) << "B never leaves";
  const auto b_after_first = get(model->state(), "fc1.lora_B.weight");
  EXPECT_GT(b_after_first.abs().sum().item<double>(), 0) << "B trained";
  // The next task starts from this client's own B, not from zeros.
  task.round = 2;
  task.config.local_steps = 1;
  task.config.learning_rate = 1e-12F;  // a step too small to matter: B stays what it was
  auto second = run_task(*model, *train_, task, plugin("sgd"), {});
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_TRUE(torch::allclose(get(model->state(), "fc1.lora_B.weight"), b_after_first, 0, 1e-9))
      << "the second task started from zeros, not from this client's B";
}

TEST(ClientTask, ASharedModelGetsBackWhatAnEarlierTaskBroughtInAndThisOneDoesNotCarry) {
  const TensorList initial = {{"w", torch::zeros({2})}, {"base", torch::zeros({2})}, {"b", torch::zeros({2})}};
  std::set<std::string> loaded;
  // A newer task carried a changed base; an older one does not carry it: back to the initial.
  auto reset = restore_uncarried(initial, loaded, {{"w", torch::ones({2})}, {"base", torch::ones({2})}}, {});
  EXPECT_TRUE(reset.empty());
  reset = restore_uncarried(initial, loaded, {{"w", torch::ones({2})}}, {"b"});
  ASSERT_EQ(reset.size(), 1U);
  EXPECT_EQ(reset[0].name, "base");
  // What the task keeps on the client is never put back.
  reset = restore_uncarried(initial, loaded, {{"w", torch::ones({2})}, {"b", torch::ones({2})}}, {});
  reset = restore_uncarried(initial, loaded, {{"w", torch::ones({2})}}, {"b"});
  ASSERT_EQ(reset.size(), 1U) << "base again, never b";
  EXPECT_EQ(reset[0].name, "base");
}

}  // namespace
}  // namespace flotilla

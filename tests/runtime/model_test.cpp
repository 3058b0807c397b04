#include "runtime/ml/model.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <future>
#include <vector>

namespace flotilla {
namespace {

const c10::Device kCpu(c10::kCPU);

std::unique_ptr<Model> make(const std::string& name, std::uint64_t seed, std::int64_t hidden = 32,
                            c10::Device device = kCpu) {
  ModelSpec spec;
  spec.name = name;
  spec.hidden = hidden;
  auto model = Model::create(spec, device, seed);
  if (!model) throw Failure(model.error());
  return std::move(model.value());
}

bool states_equal(const TensorList& a, const TensorList& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || !torch::equal(a[i].tensor, b[i].tensor)) return false;
  }
  return true;
}

std::vector<std::string> names(const TensorList& s) {
  std::vector<std::string> out;
  for (const auto& t : s) out.push_back(t.name);
  return out;
}

TEST(Model, ForwardGivesOneLogitPerClass) {
  for (const std::string name : {"mlp", "cnn"}) {
    auto model = make(name, 1);
    const auto logits = model->forward(torch::randn({5, 1, 28, 28}));
    EXPECT_EQ(logits.sizes(), (std::vector<std::int64_t>{5, 10})) << name;
    EXPECT_GT(model->num_parameters(), 1000) << name;
  }
}

TEST(Model, StateHasStableNamesAndShapes) {
  auto cnn = make("cnn", 1, 64);
  const auto state = cnn->state();
  EXPECT_EQ(names(state),
            (std::vector<std::string>{"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                      "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}));
  EXPECT_EQ(state[4].tensor.sizes(), (std::vector<std::int64_t>{64, 16 * 7 * 7}));
  std::int64_t total = 0;
  for (const auto& t : state) {
    EXPECT_TRUE(t.tensor.is_contiguous());
    EXPECT_EQ(t.tensor.device(), kCpu);
    EXPECT_FALSE(t.tensor.requires_grad());
    total += t.tensor.numel();
  }
  EXPECT_EQ(total, cnn->num_parameters());
  EXPECT_EQ(names(make("mlp", 2)->state()),
            (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                      "fc3.weight", "fc3.bias"}));
  // Names and order do not depend on the seed.
  EXPECT_EQ(names(state), names(make("cnn", 99, 64)->state()));
}

TEST(Model, SameSeedSameWeights) {
  EXPECT_TRUE(states_equal(make("cnn", 7)->state(), make("cnn", 7)->state()));
  EXPECT_FALSE(states_equal(make("cnn", 7)->state(), make("cnn", 8)->state()));
  EXPECT_TRUE(states_equal(make("mlp", 7)->state(), make("mlp", 7)->state()));
}

TEST(Model, SeededInitHoldsWhenBuiltConcurrently) {
  const auto reference = make("cnn", 42)->state();
  std::vector<std::future<TensorList>> futures;
  for (int i = 0; i < 6; ++i) {
    futures.push_back(std::async(std::launch::async, [i] {
      // Interleave other seeds so an unguarded global generator would show.
      return make("cnn", i % 2 == 0 ? 42 : 1000 + i)->state();
    }));
  }
  for (int i = 0; i < 6; ++i) {
    const auto s = futures[static_cast<std::size_t>(i)].get();
    if (i % 2 == 0) EXPECT_TRUE(states_equal(s, reference)) << "build " << i;
  }
}

TEST(Model, StateIsASnapshot) {
  auto model = make("mlp", 3);
  const auto before = model->state();
  const auto copy = before[0].tensor.clone();
  {
    torch::NoGradGuard no_grad;
    auto* module = static_cast<torch::nn::Module*>(model->module());
    for (auto& p : module->parameters()) p.add_(1.0);
  }
  EXPECT_TRUE(torch::equal(before[0].tensor, copy)) << "state() must not alias the parameters";
}

TEST(Model, LoadStateRoundTrip) {
  auto a = make("cnn", 1);
  auto b = make("cnn", 2);
  ASSERT_FALSE(states_equal(a->state(), b->state()));
  ASSERT_TRUE(b->load_state(a->state()));
  EXPECT_TRUE(states_equal(a->state(), b->state()));
  const auto x = torch::randn({3, 1, 28, 28});
  EXPECT_TRUE(torch::allclose(a->forward(x), b->forward(x)));
}

TEST(Model, LoadStateRejectsMismatchesAndChangesNothing) {
  auto model = make("cnn", 1, 128);
  const auto original = model->state();
  const auto good = make("cnn", 2, 128)->state();

  {  // wrong shape: a model of another width
    auto bad = make("cnn", 2, 64)->state();
    auto r = model->load_state(bad);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::rejected);
    EXPECT_EQ(r.error().message,
              "tensor 4 'fc1.weight': expected shape [128, 784], got [64, 784]");
  }
  {  // wrong name, after tensors that would have matched
    auto bad = good;
    bad[6].name = "head.weight";
    auto r = model->load_state(bad);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::rejected);
    EXPECT_NE(r.error().message.find("fc2.weight"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("head.weight"), std::string::npos) << r.error().message;
  }
  {  // wrong count
    auto bad = good;
    bad.pop_back();
    auto r = model->load_state(bad);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::rejected);
    EXPECT_EQ(r.error().message, "expected 8 tensors, got 7");
  }
  {  // another architecture altogether
    auto r = model->load_state(make("mlp", 2)->state());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::rejected);
  }
  EXPECT_TRUE(states_equal(model->state(), original)) << "a refused state must change nothing";
}

TEST(Model, UnknownModelIsAConfigError) {
  ModelSpec spec;
  spec.name = "transformer";
  auto r = Model::create(spec, kCpu, 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::invalid_config);
  EXPECT_NE(r.error().message.find("transformer"), std::string::npos);
}

TEST(Device, ResolvesCpuAndAuto) {
  auto cpu = resolve_device("cpu");
  ASSERT_TRUE(cpu);
  EXPECT_EQ(*cpu, kCpu);
  auto automatic = resolve_device("auto");
  ASSERT_TRUE(automatic);
  if (torch::cuda::is_available()) {
    EXPECT_EQ(*automatic, c10::Device(c10::kCUDA, 0));
  } else {
    EXPECT_EQ(*automatic, kCpu);
  }
}

TEST(Device, CudaWithoutAGpuIsAConfigError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is present";
  for (const std::string name : {"cuda", "cuda:0", "cuda:1"}) {
    auto r = resolve_device(name);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.error().code, Errc::invalid_config);
    EXPECT_NE(r.error().message.find("no CUDA device is available"), std::string::npos)
        << r.error().message;
  }
  EXPECT_EQ(resolve_device("cuda").error().message.rfind("device 'cuda:0' requested", 0), 0U)
      << resolve_device("cuda").error().message;
}

TEST(Device, UnknownNamesAreConfigErrors) {
  for (const std::string name : {"banana", "", "CPU", "cuda:", "cuda:x", "cuda:-1", "gpu"}) {
    auto r = resolve_device(name);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.error().code, Errc::invalid_config) << name;
    EXPECT_NE(r.error().message.find("'" + name + "'"), std::string::npos) << r.error().message;
  }
  EXPECT_NE(resolve_device("banana").error().message.find("\"cuda:N\""), std::string::npos);
}

TEST(Device, ModelOnGpu) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device (this LibTorch is CPU-only or no GPU is visible)";
  }
  const c10::Device gpu(c10::kCUDA, 0);
  auto model = make("cnn", 5, 32, gpu);
  EXPECT_EQ(model->device(), gpu);
  const auto logits = model->forward(torch::randn({4, 1, 28, 28}));
  EXPECT_EQ(logits.device(), gpu);
  const auto state = model->state();
  for (const auto& t : state) EXPECT_EQ(t.tensor.device(), kCpu);
  // Same seed on CPU and GPU: same initial weights (initialised before the move).
  EXPECT_TRUE(states_equal(state, make("cnn", 5, 32)->state()));
  auto other = make("cnn", 6, 32, gpu);
  ASSERT_TRUE(other->load_state(state));
  EXPECT_TRUE(states_equal(other->state(), state));
}


// ---- LoRA ----------------------------------------------------------------------------------

std::unique_ptr<Model> make_lora(const std::string& name, std::int64_t rank, std::uint64_t seed = 1,
                                 bool freeze_a = false,
                                 std::vector<std::string> targets = {"fc1", "fc2"},
                                 double alpha = 16) {
  ModelSpec spec;
  spec.name = name;
  spec.hidden = 32;
  spec.lora.rank = rank;
  spec.lora.alpha = alpha;
  spec.lora.targets = std::move(targets);
  spec.lora.freeze_a = freeze_a;
  auto model = Model::create(spec, kCpu, seed);
  if (!model) throw Failure(model.error());
  return std::move(model.value());
}

const torch::Tensor& get(const TensorList& s, const std::string& name) {
  for (const auto& t : s) {
    if (t.name == name) return t.tensor;
  }
  throw std::out_of_range("no tensor " + name);
}

TEST(Lora, NamesShapesAndFrozenBase) {
  auto mlp = make_lora("mlp", 4);
  EXPECT_EQ(names(mlp->state()),
            (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc1.lora_A.weight",
                                      "fc1.lora_B.weight", "fc2.weight", "fc2.bias",
                                      "fc2.lora_A.weight", "fc2.lora_B.weight", "fc3.weight",
                                      "fc3.bias"}));
  const auto s = mlp->state();
  EXPECT_EQ(get(s, "fc1.lora_A.weight").sizes(), (std::vector<std::int64_t>{4, 784}));
  EXPECT_EQ(get(s, "fc1.lora_B.weight").sizes(), (std::vector<std::int64_t>{32, 4}));
  EXPECT_TRUE(torch::equal(get(s, "fc2.lora_B.weight"), torch::zeros({32, 4})));
  // A: kaiming-uniform with a = sqrt(5), i.e. within 1/sqrt(fan_in).
  EXPECT_LE(get(s, "fc1.lora_A.weight").abs().max().item<double>(), 1.0 / std::sqrt(784.0));
  EXPECT_GT(get(s, "fc1.lora_A.weight").abs().max().item<double>(), 0.9 / std::sqrt(784.0));
  auto* module = static_cast<torch::nn::Module*>(mlp->module());
  for (const auto& p : module->named_parameters(true)) {
    const bool adapter = p.key().find(".lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), adapter) << p.key();
  }
  // The base weights are those of the same model without LoRA.
  const auto plain = make("mlp", 1);
  for (const auto& t : plain->state()) EXPECT_TRUE(torch::equal(t.tensor, get(s, t.name))) << t.name;
  // The CNN's linear layers are fc1 and fc2; the convolutions are frozen too.
  auto cnn = make_lora("cnn", 2, 1, false, {"fc1"});
  EXPECT_EQ(names(cnn->trainable_state()),
            (std::vector<std::string>{"fc1.lora_A.weight", "fc1.lora_B.weight"}));
}

TEST(Lora, UnknownTargetNamesItAndTheLinearLayers) {
  for (const std::string target : {"fc9", "conv1"}) {
    ModelSpec spec;
    spec.name = "cnn";
    spec.lora.rank = 4;
    spec.lora.targets = {"fc1", target};
    auto r = Model::create(spec, kCpu, 0);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::invalid_config);
    EXPECT_EQ(r.error().message, "lora.targets: '" + target +
                                     "' names no linear layer of model 'cnn' (its linear layers: "
                                     "fc1, fc2)");
  }
}

TEST(Lora, ForwardIsBasePlusScaledProduct) {
  const double alpha = 8;
  const std::int64_t rank = 4;
  auto model = make_lora("mlp", rank, 3, false, {"fc1", "fc2", "fc3"}, alpha);
  // Non-zero B everywhere (B starts at zero, which would hide the adapter).
  TensorList s = model->state();
  torch::manual_seed(5);
  for (auto& t : s) {
    if (t.name.find("lora_B") != std::string::npos) t.tensor = torch::randn(t.tensor.sizes());
  }
  ASSERT_TRUE(model->load_state(s));
  const auto x = torch::randn({6, 1, 28, 28});
  const double scale = alpha / static_cast<double>(rank);
  auto layer = [&](const std::string& n, const torch::Tensor& in) {
    const auto w = get(s, n + ".weight").to(torch::kFloat64);
    const auto b = get(s, n + ".bias").to(torch::kFloat64);
    const auto a_ = get(s, n + ".lora_A.weight").to(torch::kFloat64);
    const auto b_ = get(s, n + ".lora_B.weight").to(torch::kFloat64);
    return in.mm(w.t()) + b + scale * in.mm(a_.t()).mm(b_.t());
  };
  auto h = torch::relu(layer("fc1", x.flatten(1).to(torch::kFloat64)));
  h = torch::relu(layer("fc2", h));
  const auto expected = layer("fc3", h);
  EXPECT_TRUE(torch::allclose(model->forward(x).to(torch::kFloat64), expected, 1e-4, 1e-5));
  // And the adapter changes the output: without it the result differs.
  auto plain = make("mlp", 3);
  EXPECT_FALSE(torch::allclose(plain->forward(x), model->forward(x), 1e-3, 1e-3));
}

TEST(Lora, MergeThenUnmergeRoundTrips) {
  auto model = make_lora("mlp", 8);
  TensorList s = model->state();
  torch::manual_seed(6);
  for (auto& t : s) {
    if (t.name.find("lora_B") != std::string::npos) t.tensor = torch::randn(t.tensor.sizes()) * 0.1;
  }
  ASSERT_TRUE(model->load_state(s));
  const auto x = torch::randn({5, 1, 28, 28});
  const auto before = model->forward(x).detach();
  model->merge();
  EXPECT_TRUE(model->merged());
  const auto merged = model->state();
  // W now holds W + (alpha/r)·B·A, and the output is unchanged.
  const auto expected_w = get(s, "fc1.weight") +
                          2.0 * get(s, "fc1.lora_B.weight").mm(get(s, "fc1.lora_A.weight"));
  EXPECT_TRUE(torch::allclose(get(merged, "fc1.weight"), expected_w, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(model->forward(x), before, 1e-4, 1e-5));
  model->merge();  // idempotent
  EXPECT_TRUE(torch::allclose(model->forward(x), before, 1e-4, 1e-5));
  model->unmerge();
  EXPECT_FALSE(model->merged());
  const auto after = model->state();
  for (std::size_t i = 0; i < s.size(); ++i) {
    EXPECT_TRUE(torch::allclose(after[i].tensor, s[i].tensor, 1e-5, 1e-6)) << s[i].name;
  }
  EXPECT_TRUE(torch::allclose(model->forward(x), before, 1e-4, 1e-5));
}

TEST(Lora, TrainableStatePerMode) {
  EXPECT_EQ(names(make("mlp", 1)->trainable_state()), names(make("mlp", 1)->state()));
  EXPECT_EQ(names(make_lora("mlp", 4)->trainable_state()),
            (std::vector<std::string>{"fc1.lora_A.weight", "fc1.lora_B.weight",
                                      "fc2.lora_A.weight", "fc2.lora_B.weight"}));
  EXPECT_EQ(names(make_lora("mlp", 4, 1, true)->trainable_state()),
            (std::vector<std::string>{"fc1.lora_B.weight", "fc2.lora_B.weight"}));
  const auto t = make_lora("mlp", 4)->trainable_state();
  for (const auto& x : t) {
    EXPECT_FALSE(x.tensor.requires_grad());
    EXPECT_EQ(x.tensor.device(), kCpu);
  }
}

/// A few SGD steps on random data, as a client would take them (only trainable parameters).
void train_a_bit(Model& model, int seed) {
  torch::manual_seed(seed);
  auto* module = static_cast<torch::nn::Module*>(model.module());
  std::vector<torch::Tensor> params;
  for (const auto& p : module->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.1));
  for (int i = 0; i < 5; ++i) {
    opt.zero_grad();
    const auto loss = torch::nn::functional::cross_entropy(model.forward(torch::randn({16, 1, 28, 28})),
                                                           torch::randint(0, 10, {16}));
    loss.backward();
    opt.step();
  }
}

TEST(Lora, FreezeAKeepsASharedAndUntouched) {
  // Clients built from the run's seed have the same A, whatever their rank (a lower rank's A
  // is the first rows of a higher rank's), and training never changes it.
  auto c1 = make_lora("mlp", 8, 11, true);
  auto c2 = make_lora("mlp", 8, 11, true);
  auto c3 = make_lora("mlp", 4, 11, true);
  const auto a1 = get(c1->state(), "fc1.lora_A.weight");
  EXPECT_TRUE(torch::equal(a1, get(c2->state(), "fc1.lora_A.weight")));
  EXPECT_TRUE(torch::equal(a1.narrow(0, 0, 4), get(c3->state(), "fc1.lora_A.weight")));
  EXPECT_FALSE(torch::equal(a1, get(make_lora("mlp", 8, 12, true)->state(), "fc1.lora_A.weight")));
  // Different targets draw different A.
  EXPECT_FALSE(torch::equal(a1.narrow(1, 0, 32), get(c1->state(), "fc2.lora_A.weight")));
  const auto b_before = get(c1->state(), "fc1.lora_B.weight");
  train_a_bit(*c1, 1);
  train_a_bit(*c2, 2);
  EXPECT_TRUE(torch::equal(get(c1->state(), "fc1.lora_A.weight"), a1));
  EXPECT_TRUE(torch::equal(get(c2->state(), "fc1.lora_A.weight"), a1));
  EXPECT_FALSE(torch::equal(get(c1->state(), "fc1.lora_B.weight"), b_before)) << "B is trained";
  EXPECT_TRUE(torch::equal(get(c1->state(), "fc1.weight"), get(make("mlp", 11)->state(), "fc1.weight")))
      << "the base weights are frozen";
  // Without freeze-a, A is trained.
  auto c4 = make_lora("mlp", 8, 11, false);
  train_a_bit(*c4, 1);
  EXPECT_FALSE(torch::equal(get(c4->state(), "fc1.lora_A.weight"), a1));
}

TEST(Lora, LoadsAStateAtItsOwnRank) {
  auto rank4 = make_lora("mlp", 4, 1);
  auto other4 = make_lora("mlp", 4, 2);
  ASSERT_TRUE(rank4->load_state(other4->state()));
  EXPECT_TRUE(states_equal(rank4->state(), other4->state()));
  auto r = rank4->load_state(make_lora("mlp", 8, 1)->state());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "tensor 2 'fc1.lora_A.weight': expected shape [4, 784], got [8, 784]");
}

TEST(Lora, LoadsSomeTensorsByNameAndLeavesTheRest) {
  auto model = make_lora("mlp", 4, 1);
  const auto before = model->state();
  auto other = make_lora("mlp", 4, 2);
  // Any order, a subset: what a task carries.
  const TensorList part = {{"fc2.lora_A.weight", get(other->state(), "fc2.lora_A.weight")},
                           {"fc1.weight", get(other->state(), "fc1.weight")}};
  ASSERT_TRUE(model->load_tensors(part));
  const auto after = model->state();
  for (std::size_t i = 0; i < after.size(); ++i) {
    const bool loaded = after[i].name == "fc2.lora_A.weight" || after[i].name == "fc1.weight";
    EXPECT_TRUE(torch::equal(after[i].tensor, loaded ? get(other->state(), after[i].name) : before[i].tensor))
        << after[i].name;
  }
  // A tensor the model lacks, or of another shape, is refused, and nothing is loaded.
  const auto unchanged = model->state();
  auto r = model->load_tensors({{"fc1.weight", torch::zeros({32, 784})}, {"fc9.weight", torch::zeros({1})}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "tensor 'fc9.weight' is not a tensor of this model");
  r = model->load_tensors({{"fc1.weight", torch::zeros({32, 784})}, {"fc1.lora_A.weight", torch::zeros({8, 784})}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "tensor 'fc1.lora_A.weight': expected shape [4, 784], got [8, 784]");
  r = model->load_tensors({{"fc1.bias", torch::zeros({32})}, {"fc1.bias", torch::zeros({32})}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "tensor 'fc1.bias' comes twice");
  EXPECT_TRUE(states_equal(model->state(), unchanged));
}

}  // namespace
}  // namespace flotilla

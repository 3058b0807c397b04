#include "runtime/model.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

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

}  // namespace
}  // namespace flotilla

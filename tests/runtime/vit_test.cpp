// The ViT image classifier: transformers' parameter names, logits against a forward pass written
// out here in float64 from the formulas (patches cut by slicing, LayerNorm from its definition,
// attention head by head, the exact GELU), learning a task, LoRA targets by name, bad sizes.
#include "runtime/ml/model.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

#include "training_testing.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

namespace flotilla {
namespace {

const c10::Device kCpu(c10::kCPU);

ModelSpec toy() {
  ModelSpec m;
  m.name = "vit";
  m.input_channels = 2;
  m.input_size = 8;
  m.num_classes = 5;
  m.vit.patch_size = 4;  // 4 patches
  m.vit.hidden_size = 12;
  m.vit.intermediate_size = 20;
  m.vit.num_layers = 2;
  m.vit.num_heads = 3;
  m.vit.layer_norm_eps = 1e-6;
  m.vit.initializer_range = 0.3;  // large enough that every part of the forward pass matters
  return m;
}

std::unique_ptr<Model> make(const ModelSpec& m, std::uint64_t seed = 1) {
  auto model = Model::create(m, kCpu, seed);
  if (!model) throw Failure(model.error());
  return std::move(model).value();
}

at::Tensor get(const TensorList& s, const std::string& name) {
  for (const auto& t : s) {
    if (t.name == name) return t.tensor.to(at::kDouble);
  }
  throw std::out_of_range("no tensor " + name);
}

/// One image [C, H, W] to logits [classes], in float64, from the weights by name.
at::Tensor reference_logits(const TensorList& w, const ModelSpec& m, const at::Tensor& image) {
  const auto& s = m.vit;
  const auto p = s.patch_size, grid = m.input_size / p, d = s.hidden_size;
  auto norm = [&](const at::Tensor& x, const std::string& name) {
    const auto mean = x.mean(-1, true);
    const auto var = (x - mean).pow(2).mean(-1, true);
    return (x - mean) / (var + s.layer_norm_eps).sqrt() * get(w, name + ".weight") + get(w, name + ".bias");
  };
  auto linear = [&](const at::Tensor& x, const std::string& name) {
    return x.mm(get(w, name + ".weight").t()) + get(w, name + ".bias");
  };
  // Row-major patches, each flattened channel by channel as the convolution's kernel is.
  const auto kernel = get(w, "vit.embeddings.patch_embeddings.projection.weight").reshape({d, -1});
  auto h = at::empty({grid * grid + 1, d}, at::kDouble);
  h[0] = get(w, "vit.embeddings.cls_token").reshape({d});
  for (std::int64_t r = 0; r < grid; ++r) {
    for (std::int64_t c = 0; c < grid; ++c) {
      const auto patch = image.to(at::kDouble).narrow(1, r * p, p).narrow(2, c * p, p).reshape({-1});
      h[1 + r * grid + c] = kernel.mv(patch) + get(w, "vit.embeddings.patch_embeddings.projection.bias");
    }
  }
  h = h + get(w, "vit.embeddings.position_embeddings").reshape({-1, d});
  const auto hd = d / s.num_heads;
  for (std::int64_t l = 0; l < s.num_layers; ++l) {
    const std::string pre = "vit.encoder.layer." + std::to_string(l) + ".";
    const auto x = norm(h, pre + "layernorm_before");
    const auto q = linear(x, pre + "attention.attention.query"), k = linear(x, pre + "attention.attention.key"),
               v = linear(x, pre + "attention.attention.value");
    auto attn = at::zeros_like(h);
    for (std::int64_t head = 0; head < s.num_heads; ++head) {
      const auto qh = q.narrow(1, head * hd, hd), kh = k.narrow(1, head * hd, hd), vh = v.narrow(1, head * hd, hd);
      for (std::int64_t t = 0; t < h.size(0); ++t) {
        const auto scores = kh.mv(qh[t]) / std::sqrt(double(hd));
        const auto e = (scores - scores.max()).exp();
        attn[t].narrow(0, head * hd, hd).copy_(vh.t().mv(e / e.sum()));
      }
    }
    h = h + linear(attn, pre + "attention.output.dense");
    const auto y = linear(norm(h, pre + "layernorm_after"), pre + "intermediate.dense");
    const auto gelu = 0.5 * y * (1 + (y / std::sqrt(2.0)).erf());
    h = h + linear(gelu, pre + "output.dense");
  }
  return linear(norm(h, "vit.layernorm").narrow(0, 0, 1), "classifier").reshape({-1});
}

TEST(Vit, HasTransformersParameterNames) {
  std::vector<std::string> names;
  for (const auto& t : make(toy())->state()) names.push_back(t.name);
  const std::vector<std::string> head = {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
                                         "vit.embeddings.patch_embeddings.projection.weight",
                                         "vit.embeddings.patch_embeddings.projection.bias"};
  const std::vector<std::string> layer0 = {
      "vit.encoder.layer.0.attention.attention.query.weight", "vit.encoder.layer.0.attention.attention.query.bias",
      "vit.encoder.layer.0.attention.attention.key.weight",   "vit.encoder.layer.0.attention.attention.key.bias",
      "vit.encoder.layer.0.attention.attention.value.weight", "vit.encoder.layer.0.attention.attention.value.bias",
      "vit.encoder.layer.0.attention.output.dense.weight",    "vit.encoder.layer.0.attention.output.dense.bias",
      "vit.encoder.layer.0.intermediate.dense.weight",        "vit.encoder.layer.0.intermediate.dense.bias",
      "vit.encoder.layer.0.output.dense.weight",              "vit.encoder.layer.0.output.dense.bias",
      "vit.encoder.layer.0.layernorm_before.weight",          "vit.encoder.layer.0.layernorm_before.bias",
      "vit.encoder.layer.0.layernorm_after.weight",           "vit.encoder.layer.0.layernorm_after.bias"};
  ASSERT_EQ(names.size(), head.size() + 2 * layer0.size() + 4);
  EXPECT_EQ(std::vector<std::string>(names.begin(), names.begin() + 4), head);
  EXPECT_EQ(std::vector<std::string>(names.begin() + 4, names.begin() + 20), layer0);
  EXPECT_EQ(std::vector<std::string>(names.end() - 4, names.end()),
            (std::vector<std::string>{"vit.layernorm.weight", "vit.layernorm.bias", "classifier.weight", "classifier.bias"}));
}

TEST(Vit, LogitsMatchTheFormulas) {
  const auto spec = toy();
  auto model = make(spec, 5);
  torch::manual_seed(0);
  const auto images = torch::randn({3, 2, 8, 8});
  const auto logits = model->forward(images).to(at::kDouble);
  ASSERT_EQ(logits.sizes(), (std::vector<std::int64_t>{3, 5}));
  const auto weights = model->state();
  for (std::int64_t i = 0; i < 3; ++i) {
    const auto expected = reference_logits(weights, spec, images[i]);
    EXPECT_TRUE(at::allclose(logits[i], expected, 1e-4, 1e-5))
        << "image " << i << ": max difference " << (logits[i] - expected).abs().max().item<double>();
    EXPECT_GT(expected.std().item<double>(), 0.05) << "logits that vary: the test can tell them apart";
  }
}

TEST(Vit, LearnsWhereTheBrightPatchIs) {
  at::set_num_threads(1);
  auto spec = toy();
  spec.vit.initializer_range = 0.02;
  spec.num_classes = 4;
  auto model = make(spec, 2);
  // The class is the quadrant (patch) that is bright: only attention across patches tells.
  torch::manual_seed(1);
  const std::int64_t n = 128;
  Dataset data;
  data.labels = torch::randint(0, 4, {n}, torch::kLong);
  data.inputs = torch::randn({n, 2, 8, 8}) * 0.3;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto q = data.labels[i].item<std::int64_t>();
    data.inputs[i].narrow(1, (q / 2) * 4, 4).narrow(2, (q % 2) * 4, 4).add_(1.5);
  }
  const auto before = evaluate(*model, data);
  (void)train_with_adamw(*model, data, 150, 32, 0.003F);
  const auto after = evaluate(*model, data);
  EXPECT_LT(before.accuracy, 0.5);
  EXPECT_GT(after.accuracy, 0.95) << "loss " << before.loss << " -> " << after.loss;
}

TEST(Vit, LoraTargetsAndBadSizes) {
  auto spec = toy();
  spec.lora.rank = 2;
  spec.lora.targets = {"query", "value", "intermediate.dense"};
  std::vector<std::string> adapted;
  for (const auto& t : make(spec)->trainable_state()) {
    if (t.name.ends_with(".lora_A.weight")) adapted.push_back(t.name.substr(0, t.name.size() - 14));
  }
  EXPECT_EQ(adapted, (std::vector<std::string>{"vit.encoder.layer.0.attention.attention.query",
                                               "vit.encoder.layer.0.attention.attention.value",
                                               "vit.encoder.layer.0.intermediate.dense",
                                               "vit.encoder.layer.1.attention.attention.query",
                                               "vit.encoder.layer.1.attention.attention.value",
                                               "vit.encoder.layer.1.intermediate.dense"}));
  auto bad = toy();
  bad.vit.patch_size = 3;
  auto r = Model::create(bad, kCpu, 1);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("the image size (8) is not a multiple of patch-size (3)"), std::string::npos)
      << r.error().message;
  bad = toy();
  bad.vit.num_heads = 5;
  r = Model::create(bad, kCpu, 1);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("hidden-size (12) does not split into 5 heads"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace flotilla

// The LLaMA-layout language model: Hugging Face's parameter names and config.json, logits
// against a forward pass written out here in float64 from the formulas (RMSNorm, rotary
// positions, grouped-query causal attention, SwiGLU), a short text learnt by heart, weights
// from a safetensors checkpoint, and LoRA targets by name pattern.
#include "runtime/ml/llama.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/storage/safetensors.hpp"

#include "training_testing.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

namespace flotilla {
namespace {

const c10::Device kCpu(c10::kCPU);

LmSpec toy(bool tied) {
  LmSpec s;
  s.vocab_size = 11;
  s.hidden_size = 8;
  s.intermediate_size = 12;
  s.num_layers = 2;
  s.num_heads = 2;
  s.num_kv_heads = 1;  // grouped: both query heads share one key/value head
  s.max_positions = 16;
  s.rope_theta = 10000;
  s.rms_norm_eps = 1e-5;
  s.tie_embeddings = tied;
  s.initializer_range = 0.3;  // large enough that every part of the forward pass matters
  return s;
}

std::unique_ptr<Model> make_llama(const LmSpec& lm, std::uint64_t seed = 1, std::int64_t rank = 0,
                                  std::vector<std::string> targets = {}) {
  ModelSpec spec;
  spec.name = "llama";
  spec.lm = lm;
  spec.lora.rank = rank;
  spec.lora.targets = std::move(targets);
  auto m = Model::create(spec, kCpu, seed);
  if (!m) throw Failure(m.error());
  return std::move(m).value();
}

at::Tensor get(const TensorList& s, const std::string& name) {
  for (const auto& t : s) {
    if (t.name == name) return t.tensor.to(at::kDouble);
  }
  throw std::out_of_range("no tensor " + name);
}

/// The forward pass from the formulas, float64, one sequence, written independently of the
/// model's code: every rotation and every attention weight computed element by element.
at::Tensor reference_logits(const TensorList& w, const LmSpec& s, const std::vector<std::int64_t>& ids) {
  const auto t = static_cast<std::int64_t>(ids.size());
  const auto d = s.hidden_size, hd = s.head_dim();
  auto rms = [&](const at::Tensor& x, const at::Tensor& g) {
    return x / (x.pow(2).mean(-1, true) + s.rms_norm_eps).sqrt() * g;
  };
  auto rotate = [&](const at::Tensor& v) {  // v [t, hd]: pairs (i, i + hd/2) rotated by pos·θ_i
    auto out = v.clone();
    for (std::int64_t p = 0; p < t; ++p) {
      for (std::int64_t i = 0; i < hd / 2; ++i) {
        const double theta = p * std::pow(s.rope_theta, -2.0 * i / hd);
        const double a = v[p][i].item<double>(), b = v[p][i + hd / 2].item<double>();
        out[p][i] = a * std::cos(theta) - b * std::sin(theta);
        out[p][i + hd / 2] = b * std::cos(theta) + a * std::sin(theta);
      }
    }
    return out;
  };
  const auto emb = get(w, "model.embed_tokens.weight");
  auto h = at::empty({t, d}, at::kDouble);
  for (std::int64_t p = 0; p < t; ++p) h[p] = emb[ids[p]];
  for (std::int64_t l = 0; l < s.num_layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    const auto x = rms(h, get(w, pre + "input_layernorm.weight"));
    const auto q = x.mm(get(w, pre + "self_attn.q_proj.weight").t());
    const auto k = x.mm(get(w, pre + "self_attn.k_proj.weight").t());
    const auto v = x.mm(get(w, pre + "self_attn.v_proj.weight").t());
    auto attn = at::zeros({t, s.num_heads * hd}, at::kDouble);
    const auto group = s.num_heads / s.num_kv_heads;
    for (std::int64_t head = 0; head < s.num_heads; ++head) {
      const auto kvh = head / group;
      const auto qh = rotate(q.narrow(1, head * hd, hd));
      const auto kh = rotate(k.narrow(1, kvh * hd, hd));
      const auto vh = v.narrow(1, kvh * hd, hd);
      for (std::int64_t p = 0; p < t; ++p) {
        // Position p attends to 0..p only.
        auto scores = qh[p].unsqueeze(0).mm(kh.narrow(0, 0, p + 1).t()).squeeze(0) / std::sqrt(double(hd));
        const auto weights = (scores - scores.max()).exp();
        attn[p].narrow(0, head * hd, hd).copy_((weights / weights.sum()).unsqueeze(0).mm(vh.narrow(0, 0, p + 1)).squeeze(0));
      }
    }
    h = h + attn.mm(get(w, pre + "self_attn.o_proj.weight").t());
    const auto y = rms(h, get(w, pre + "post_attention_layernorm.weight"));
    const auto gate = y.mm(get(w, pre + "mlp.gate_proj.weight").t());
    const auto up = y.mm(get(w, pre + "mlp.up_proj.weight").t());
    h = h + (gate * at::sigmoid(gate) * up).mm(get(w, pre + "mlp.down_proj.weight").t());
  }
  h = rms(h, get(w, "model.norm.weight"));
  const auto head = s.tie_embeddings ? emb : get(w, "lm_head.weight");
  return h.mm(head.t());
}

TEST(Llama, LogitsMatchTheFormulasWithTiedAndUntiedEmbeddings) {
  for (const bool tied : {false, true}) {
    const auto spec = toy(tied);
    auto model = make_llama(spec, 3);
    const std::vector<std::int64_t> ids = {1, 7, 3, 3, 10, 0, 5};
    const auto logits = model->forward(torch::tensor(ids).unsqueeze(0)).squeeze(0).to(at::kDouble);
    ASSERT_EQ(logits.sizes(), (std::vector<std::int64_t>{7, 11}));
    const auto expected = reference_logits(model->state(), spec, ids);
    EXPECT_TRUE(at::allclose(logits, expected, 1e-4, 1e-5))
        << (tied ? "tied" : "untied") << ": max difference " << (logits - expected).abs().max().item<double>();
    EXPECT_GT(expected.std().item<double>(), 0.1) << "logits that vary: the test can tell them apart";
  }
}

TEST(Llama, HasHuggingFacesParameterNames) {
  auto model = make_llama(toy(false));
  std::vector<std::string> names;
  for (const auto& t : model->state()) names.push_back(t.name);
  const std::vector<std::string> layer0 = {
      "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
      "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
      "model.layers.0.mlp.gate_proj.weight",    "model.layers.0.mlp.up_proj.weight",
      "model.layers.0.mlp.down_proj.weight",    "model.layers.0.input_layernorm.weight",
      "model.layers.0.post_attention_layernorm.weight"};
  ASSERT_EQ(names.size(), 2U + 2 * layer0.size() + 1) << "embedding, 2 layers, norm, lm_head";
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(std::vector<std::string>(names.begin() + 1, names.begin() + 10), layer0);
  EXPECT_EQ(names[names.size() - 2], "model.norm.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_EQ(make_llama(toy(true))->state().size(), names.size() - 1) << "tied: no lm_head";
  // Shapes: grouped-query attention has smaller key/value projections.
  EXPECT_EQ(get(model->state(), "model.layers.0.self_attn.k_proj.weight").sizes(), (std::vector<std::int64_t>{4, 8}));
}

TEST(Llama, IsCausalAPositionSeesNothingAfterIt) {
  auto model = make_llama(toy(false));
  const auto a = model->forward(torch::tensor({{1L, 2L, 3L, 4L, 5L}}));
  const auto b = model->forward(torch::tensor({{1L, 2L, 3L, 9L, 0L}}));
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 3), b.narrow(1, 0, 3), 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(a.narrow(1, 3, 1), b.narrow(1, 3, 1), 1e-3, 1e-3));
}

TEST(Llama, ScoresNextTokensAndSkipsIgnoredLabels) {
  // Logits favour token 2 everywhere: predicting [_, 2, 2, 5] from positions 0..2 gets 2 of 3
  // right; with the last label ignored, 2 of 2.
  auto logits = torch::zeros({1, 4, 6});
  logits.select(2, 2).fill_(10.0);
  const auto labels = torch::tensor({{7L, 2L, 2L, 5L}});
  auto s = score_batch(logits, labels, Objective::causal_lm);
  EXPECT_EQ(s.counted.item<std::int64_t>(), 3);
  EXPECT_EQ(s.correct.item<std::int64_t>(), 2);
  const auto ignored = torch::tensor({{7L, 2L, 2L, kIgnoreLabel}});
  s = score_batch(logits, ignored, Objective::causal_lm);
  EXPECT_EQ(s.counted.item<std::int64_t>(), 2);
  EXPECT_EQ(s.correct.item<std::int64_t>(), 2);
  EXPECT_LT(s.loss.item<double>(), 1e-3);
}

TEST(Llama, LearnsAShortTextByHeart) {
  at::set_num_threads(1);
  LmSpec spec = toy(true);
  spec.vocab_size = 32;
  spec.hidden_size = 32;
  spec.intermediate_size = 64;
  spec.num_heads = 4;
  spec.num_kv_heads = 2;
  spec.max_positions = 64;
  spec.initializer_range = 0.02;
  auto model = make_llama(spec, 7);
  const std::string text = "the quick brown fox jumps over the lazy dog";
  std::vector<std::int64_t> ids;
  for (const char c : text) ids.push_back(c == ' ' ? 0 : c - 'a' + 1);
  Dataset data;
  data.inputs = torch::tensor(ids).unsqueeze(0).repeat({4, 1});
  data.labels = data.inputs.clone();
  const auto before = evaluate(*model, data);
  (void)train_with_adamw(*model, data, 300, 4, 0.01F);
  const auto after = evaluate(*model, data);
  EXPECT_GT(before.loss, 3.0) << "about log(32) before training";
  EXPECT_LT(after.loss, 0.05) << "per-token loss after 300 steps";
  EXPECT_GT(after.accuracy, 0.99);
}

TEST(Llama, ReadsATransformersConfigJson) {
  // TinyLlama-1.1B's config.json, as transformers writes it.
  const std::string tiny_llama = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 5632, "max_position_embeddings": 2048, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.35.0",
  "use_cache": true, "vocab_size": 32000})";
  auto s = parse_llama_config(tiny_llama, "config.json");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->vocab_size, 32000);
  EXPECT_EQ(s->hidden_size, 2048);
  EXPECT_EQ(s->intermediate_size, 5632);
  EXPECT_EQ(s->num_layers, 22);
  EXPECT_EQ(s->num_heads, 32);
  EXPECT_EQ(s->num_kv_heads, 4);
  EXPECT_EQ(s->head_dim(), 64);
  EXPECT_FALSE(s->tie_embeddings);
  EXPECT_DOUBLE_EQ(s->rms_norm_eps, 1e-5);
  auto refusal = [](const std::string& json) {
    auto r = parse_llama_config(json, "config.json");
    return r ? std::string("accepted") : r.error().message;
  };
  const std::string base = R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 8)";
  EXPECT_EQ(refusal("{" + base + "}"), "accepted");
  EXPECT_EQ(refusal(R"({"vocab_size": 10})"), "config.json: lacks 'hidden_size'");
  EXPECT_NE(refusal("{" + base + R"(, "rope_scaling": {"type": "linear", "factor": 2.0}})").find("plain rotary"), std::string::npos);
  EXPECT_EQ(refusal("{" + base + R"(, "rope_scaling": {"rope_type": "default"}})"), "accepted");
  EXPECT_NE(refusal("{" + base + R"(, "head_dim": 8})").find("head_dim is 8"), std::string::npos);
  EXPECT_NE(refusal("{" + base + R"(, "hidden_act": "gelu"})").find("\"silu\""), std::string::npos);
  EXPECT_NE(refusal("{" + base + R"(, "num_key_value_heads": 3})").find("multiple of num_key_value_heads"), std::string::npos);
  EXPECT_NE(refusal("{" + base + R"(, "model_type": "gpt2"})").find("expected \"llama\""), std::string::npos);
  EXPECT_NE(refusal("[1, 2]").find("JSON object"), std::string::npos);
}

TEST(Llama, LoadsACheckpointWrittenInHuggingFacesLayout) {
  const auto dir = std::filesystem::temp_directory_path() / ("flotilla-llama-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto spec = toy(false);
  auto source = make_llama(spec, 11);
  // As a transformers checkpoint comes: bfloat16, an old rotary buffer, a directory of files.
  TensorList first, second;
  const auto state = source->state();
  for (std::size_t i = 0; i < state.size(); ++i) {
    (i < state.size() / 2 ? first : second).push_back({state[i].name, state[i].tensor.to(at::kBFloat16)});
  }
  second.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", torch::ones({2})});
  ASSERT_TRUE(write_safetensors(dir / "model-00001-of-00002.safetensors", first));
  ASSERT_TRUE(write_safetensors(dir / "model-00002-of-00002.safetensors", second));
  ModelSpec ms;
  ms.name = "llama";
  ms.lm = spec;
  ms.checkpoint = dir.string();
  ms.lora.rank = 2;
  ms.lora.targets = {"up_proj"};
  auto loaded = Model::create(ms, kCpu, 99);
  ASSERT_TRUE(loaded) << loaded.error().message;
  for (const auto& t : state) {
    EXPECT_TRUE(torch::equal(get((*loaded)->state(), t.name), t.tensor.to(at::kBFloat16).to(at::kDouble))) << t.name;
  }
  // Another file beside the shards (an adapter) is not the model's: the index names the shards.
  ASSERT_TRUE(write_safetensors(dir / "adapter_model.safetensors", {{"base_model.lora_A.weight", torch::ones({2, 2})}}));
  EXPECT_FALSE(Model::create(ms, kCpu, 99)) << "without an index every *.safetensors is read";
  {
    std::ofstream index(dir / "model.safetensors.index.json");
    index << R"({"metadata": {"total_size": 1}, "weight_map": {")" << first[0].name
          << R"(": "model-00001-of-00002.safetensors", ")" << second[0].name << R"(": "model-00002-of-00002.safetensors"}})";
  }
  auto indexed = Model::create(ms, kCpu, 99);
  ASSERT_TRUE(indexed) << indexed.error().message;
  EXPECT_TRUE(torch::equal(get((*indexed)->state(), state[0].name), state[0].tensor.to(at::kBFloat16).to(at::kDouble)));
  {
    std::ofstream index(dir / "model.safetensors.index.json");
    index << R"({"weight_map": {"x": "../elsewhere.safetensors"}})";
  }
  auto outside = Model::create(ms, kCpu, 99);
  ASSERT_FALSE(outside);
  EXPECT_NE(outside.error().message.find("names a shard outside its directory"), std::string::npos) << outside.error().message;
  std::filesystem::remove(dir / "model.safetensors.index.json");
  std::filesystem::remove(dir / "adapter_model.safetensors");
  // A checkpoint that lacks a tensor, or has one of another shape, is refused by name.
  std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
  auto partial = Model::create(ms, kCpu, 99);
  ASSERT_FALSE(partial);
  EXPECT_NE(partial.error().message.find("lacks '"), std::string::npos) << partial.error().message;
  auto wrong = second;
  wrong[0].tensor = torch::zeros({3, 3});
  ASSERT_TRUE(write_safetensors(dir / "model-00002-of-00002.safetensors", wrong));
  auto misshapen = Model::create(ms, kCpu, 99);
  ASSERT_FALSE(misshapen);
  EXPECT_NE(misshapen.error().message.find("'" + wrong[0].name + "': expected shape"), std::string::npos)
      << misshapen.error().message;
  // An untied checkpoint into a tied model: its own lm_head would be dropped, so it is refused.
  ASSERT_TRUE(write_safetensors(dir / "model-00002-of-00002.safetensors", second));
  ms.lm.tie_embeddings = true;
  auto tied = Model::create(ms, kCpu, 99);
  ASSERT_FALSE(tied);
  EXPECT_NE(tied.error().message.find("has an lm_head.weight of its own"), std::string::npos) << tied.error().message;
  std::filesystem::remove_all(dir);
}

TEST(Llama, LoraTargetsAreNamePatterns) {
  auto adapted = [](const std::vector<std::string>& targets) {
    auto model = make_llama(toy(false), 1, 2, targets);
    std::vector<std::string> names;
    for (const auto& t : model->trainable_state()) {
      if (t.name.ends_with(".lora_A.weight")) names.push_back(t.name.substr(0, t.name.size() - 14));
    }
    return names;
  };
  EXPECT_EQ(adapted({"up_proj"}), (std::vector<std::string>{"model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"}));
  EXPECT_EQ(adapted({"model.layers.1.self_attn.*"}),
            (std::vector<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                                      "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj"}));
  EXPECT_EQ(adapted({"lm_head"}), std::vector<std::string>{"lm_head"});
  ModelSpec ms;
  ms.name = "llama";
  ms.lm = toy(false);
  ms.lora.rank = 2;
  ms.lora.targets = {"fc1"};
  auto r = Model::create(ms, kCpu, 1);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("'fc1' names no linear layer of model 'llama' (its linear layers: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)"),
            std::string::npos)
      << r.error().message;
}

TEST(Llama, TrainableTrainsOnlyTheNamedLayersFully) {
  at::set_num_threads(1);
  ModelSpec spec;
  spec.name = "llama";
  spec.lm = toy(false);
  spec.trainable = {"up_proj"};
  auto model = Model::create(spec, kCpu, 3);
  ASSERT_TRUE(model) << model.error().message;
  std::vector<std::string> sent;
  for (const auto& t : (*model)->trainable_state()) sent.push_back(t.name);
  EXPECT_EQ(sent, (std::vector<std::string>{"model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"}));
  // Training changes those, and nothing else.
  const auto before = (*model)->state();
  Dataset data;
  data.inputs = torch::randint(0, spec.lm.vocab_size, {4, 12}, torch::kLong);
  data.labels = data.inputs.clone();
  (void)train_with_adamw(**model, data, 3, 4, 0.01F);
  const auto after = (*model)->state();
  ASSERT_EQ(before.size(), after.size());
  for (std::size_t i = 0; i < before.size(); ++i) {
    const bool trained = before[i].name.ends_with("up_proj.weight");
    EXPECT_EQ(at::equal(before[i].tensor, after[i].tensor), !trained) << before[i].name;
  }
  spec.trainable = {"fc9"};
  auto wrong = Model::create(spec, kCpu, 3);
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("model.trainable: 'fc9' names no linear layer of model 'llama'"), std::string::npos)
      << wrong.error().message;
}

}  // namespace
}  // namespace flotilla

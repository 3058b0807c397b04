#include "runtime/ml/llama.hpp"

#include "runtime/ml/layers.hpp"
#include "runtime/storage/durable.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>

namespace flotilla {

Expected<void> check_lm_spec(const LmSpec& s) {
  auto bad = [](const std::string& why) { return Error{Errc::invalid_config, "llama model: " + why}; };
  auto bounded = [&](const char* key, std::int64_t v, std::int64_t most) -> Expected<void> {
    if (v < 1 || v > most) {
      return bad(std::string(key) + " must be in [1, " + std::to_string(most) + "], got " + std::to_string(v));
    }
    return {};
  };
  for (auto ok : {bounded("vocab_size", s.vocab_size, 1 << 22), bounded("hidden_size", s.hidden_size, 1 << 16),
                  bounded("intermediate_size", s.intermediate_size, 1 << 18),
                  bounded("num_hidden_layers", s.num_layers, 1024), bounded("num_attention_heads", s.num_heads, 1024),
                  bounded("num_key_value_heads", s.num_kv_heads, 1024),
                  bounded("max_position_embeddings", s.max_positions, 1 << 20)}) {
    if (!ok) return ok;
  }
  if (s.hidden_size % s.num_heads != 0 || s.head_dim() % 2 != 0) {
    return bad("hidden_size (" + std::to_string(s.hidden_size) + ") must split into num_attention_heads (" +
               std::to_string(s.num_heads) + ") heads of an even size (rotary positions rotate pairs)");
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    return bad("num_attention_heads (" + std::to_string(s.num_heads) + ") must be a multiple of num_key_value_heads (" +
               std::to_string(s.num_kv_heads) + ")");
  }
  if (!(s.rope_theta > 0) || !std::isfinite(s.rope_theta)) return bad("rope_theta must be > 0");
  if (!(s.rms_norm_eps > 0) || !(s.rms_norm_eps < 1)) return bad("rms_norm_eps must be in (0, 1)");
  if (!(s.initializer_range > 0) || !(s.initializer_range < 10)) return bad("initializer_range must be in (0, 10)");
  return {};
}

Expected<LmSpec> parse_llama_config(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& why) { return Error{Errc::invalid_config, where + ": " + why}; };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return bad(std::string("not JSON: ") + e.what());
  }
  if (!j.is_object()) return bad("expected a JSON object (a transformers config.json)");
  if (auto t = j.find("model_type"); t != j.end() && *t != "llama") {
    return bad("model_type is " + t->dump() + ", expected \"llama\" (a LlamaForCausalLM)");
  }
  LmSpec s;
  std::string problem;
  auto integer = [&](const char* key, std::int64_t& out, bool required) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required && problem.empty()) problem = std::string("lacks '") + key + "'";
      return;
    }
    if (!it->is_number_integer()) {
      if (problem.empty()) problem = std::string("'") + key + "' is " + it->dump().substr(0, 40) + ", expected an integer";
      return;
    }
    out = it->get<std::int64_t>();
  };
  auto real = [&](const char* key, double& out) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!it->is_number()) {
      if (problem.empty()) problem = std::string("'") + key + "' is " + it->dump().substr(0, 40) + ", expected a number";
      return;
    }
    out = it->get<double>();
  };
  integer("vocab_size", s.vocab_size, true);
  integer("hidden_size", s.hidden_size, true);
  integer("intermediate_size", s.intermediate_size, true);
  integer("num_hidden_layers", s.num_layers, true);
  integer("num_attention_heads", s.num_heads, true);
  s.num_kv_heads = s.num_heads;
  integer("num_key_value_heads", s.num_kv_heads, false);
  integer("max_position_embeddings", s.max_positions, true);
  s.rms_norm_eps = 1e-6;
  real("rms_norm_eps", s.rms_norm_eps);
  real("rope_theta", s.rope_theta);
  real("initializer_range", s.initializer_range);
  s.tie_embeddings = false;
  if (auto t = j.find("tie_word_embeddings"); t != j.end() && !t->is_null()) {
    if (!t->is_boolean()) return bad("'tie_word_embeddings' is " + t->dump() + ", expected true or false");
    s.tie_embeddings = t->get<bool>();
  }
  if (!problem.empty()) return bad(problem);
  if (auto a = j.find("hidden_act"); a != j.end() && *a != "silu") {
    return bad("hidden_act is " + a->dump() + "; this LLaMA implements \"silu\" (SwiGLU)");
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (auto b = j.find(key); b != j.end() && *b == true) {
      return bad(std::string(key) + " is true; this LLaMA has no biases");
    }
  }
  if (auto r = j.find("rope_scaling"); r != j.end() && !r->is_null()) {
    const auto type = r->is_object() ? r->value("rope_type", r->value("type", std::string())) : std::string();
    if (type != "default") {
      return bad("rope_scaling is " + r->dump().substr(0, 80) + "; this LLaMA implements plain rotary positions");
    }
  }
  if (auto h = j.find("head_dim"); h != j.end() && !h->is_null() && s.num_heads > 0 &&
      (!h->is_number_integer() || h->get<std::int64_t>() * s.num_heads != s.hidden_size)) {
    return bad("head_dim is " + h->dump().substr(0, 40) + "; this LLaMA's heads are hidden_size / "
               "num_attention_heads wide");
  }
  if (auto ok = check_lm_spec(s); !ok) return bad(ok.error().message);
  return s;
}

Expected<LmSpec> read_llama_config(const std::filesystem::path& path) {
  auto text = read_file(path, 1u << 20);
  if (!text) return Error{Errc::invalid_config, text.error().message};
  return parse_llama_config(*text, path.string());
}

namespace detail {
namespace {

/// x · rsqrt(mean(x²) + eps) · weight, computed in float32 (as transformers' LlamaRMSNorm).
struct RmsNorm : torch::nn::Module {
  RmsNorm(std::int64_t size, double eps) : eps(eps) {
    weight = register_parameter("weight", torch::ones({size}));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const auto h = x.to(torch::kFloat32);
    const auto normed = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
    return weight * normed.to(x.scalar_type());
  }
  torch::Tensor weight;
  double eps;
};

/// transformers' rotate_half: the two halves of the last dimension, (x1, x2) -> (-x2, x1).
torch::Tensor rotate_half(const torch::Tensor& x) {
  const auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

struct Attention : torch::nn::Module {
  Attention(const LmSpec& s, Net& net, const std::string& prefix)
      : heads(s.num_heads), kv_heads(s.num_kv_heads), head_dim(s.head_dim()) {
    const auto std = s.initializer_range;
    q_proj = add_linear(*this, net, prefix, "q_proj", s.hidden_size, heads * head_dim, std);
    k_proj = add_linear(*this, net, prefix, "k_proj", s.hidden_size, kv_heads * head_dim, std);
    v_proj = add_linear(*this, net, prefix, "v_proj", s.hidden_size, kv_heads * head_dim, std);
    o_proj = add_linear(*this, net, prefix, "o_proj", heads * head_dim, s.hidden_size, std);
  }
  /// x [B, T, hidden]; cos, sin [T, head_dim]; a causal mask [T, T] (0 or -inf).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask) {
    const auto b = x.size(0), t = x.size(1);
    auto q = q_proj->forward(x).view({b, t, heads, head_dim}).transpose(1, 2);
    auto k = k_proj->forward(x).view({b, t, kv_heads, head_dim}).transpose(1, 2);
    auto v = v_proj->forward(x).view({b, t, kv_heads, head_dim}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    if (kv_heads != heads) {  // grouped-query attention: each key/value head serves a group
      k = k.repeat_interleave(heads / kv_heads, 1);
      v = v.repeat_interleave(heads / kv_heads, 1);
    }
    auto scores = torch::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(head_dim)) + mask;
    const auto weights = torch::softmax(scores.to(torch::kFloat32), -1).to(q.scalar_type());
    const auto out = torch::matmul(weights, v).transpose(1, 2).reshape({b, t, heads * head_dim});
    return o_proj->forward(out);
  }
  std::int64_t heads, kv_heads, head_dim;
  std::shared_ptr<LoraLinear> q_proj, k_proj, v_proj, o_proj;
};

/// down_proj(silu(gate_proj(x)) · up_proj(x)).
struct Mlp : torch::nn::Module {
  Mlp(const LmSpec& s, Net& net, const std::string& prefix) {
    const auto std = s.initializer_range;
    gate_proj = add_linear(*this, net, prefix, "gate_proj", s.hidden_size, s.intermediate_size, std);
    up_proj = add_linear(*this, net, prefix, "up_proj", s.hidden_size, s.intermediate_size, std);
    down_proj = add_linear(*this, net, prefix, "down_proj", s.intermediate_size, s.hidden_size, std);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
  }
  std::shared_ptr<LoraLinear> gate_proj, up_proj, down_proj;
};

struct DecoderLayer : torch::nn::Module {
  DecoderLayer(const LmSpec& s, Net& net, const std::string& prefix) {
    self_attn = register_module("self_attn", std::make_shared<Attention>(s, net, prefix + "self_attn."));
    mlp = register_module("mlp", std::make_shared<Mlp>(s, net, prefix + "mlp."));
    input_layernorm = register_module("input_layernorm", std::make_shared<RmsNorm>(s.hidden_size, s.rms_norm_eps));
    post_attention_layernorm =
        register_module("post_attention_layernorm", std::make_shared<RmsNorm>(s.hidden_size, s.rms_norm_eps));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask) {
    auto h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, mask);
    return h + mlp->forward(post_attention_layernorm->forward(h));
  }
  std::shared_ptr<Attention> self_attn;
  std::shared_ptr<Mlp> mlp;
  std::shared_ptr<RmsNorm> input_layernorm, post_attention_layernorm;
};

/// "model": the embedding, the decoder layers and the final norm (transformers' LlamaModel).
struct LlamaBody : torch::nn::Module {
  LlamaBody(const LmSpec& s, Net& net) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(s.vocab_size, s.hidden_size));
    torch::NoGradGuard no_grad;
    embed_tokens->weight.normal_(0.0, s.initializer_range);
    layers = register_module("layers", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < s.num_layers; ++i) {
      layers->push_back(std::make_shared<DecoderLayer>(s, net, "model.layers." + std::to_string(i) + "."));
    }
    norm = register_module("norm", std::make_shared<RmsNorm>(s.hidden_size, s.rms_norm_eps));
  }
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::shared_ptr<RmsNorm> norm;
};

struct Llama : Net {
  explicit Llama(const LmSpec& s) : spec(s) {
    model = register_module("model", std::make_shared<LlamaBody>(s, *this));
    if (!s.tie_embeddings) {
      lm_head = register_module("lm_head", std::make_shared<LoraLinear>(s.hidden_size, s.vocab_size, s.initializer_range));
      linear_layers.emplace_back("lm_head", lm_head);
    }
  }
  torch::Tensor forward(const torch::Tensor& ids) override {
    if (ids.dim() != 2 || ids.scalar_type() != torch::kInt64) {
      throw std::invalid_argument("a llama model takes token ids [batch, length] of int64, got " +
                                  std::string(c10::toString(ids.scalar_type())) + " of " +
                                  std::to_string(ids.dim()) + " dimensions");
    }
    const auto t = ids.size(1);
    if (t > spec.max_positions) {
      throw std::invalid_argument("a sequence of " + std::to_string(t) + " tokens is longer than " +
                                  "max_position_embeddings (" + std::to_string(spec.max_positions) + ")");
    }
    auto h = model->embed_tokens->forward(ids);
    const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(h.device());
    // Rotary positions as transformers computes them: inv_freq over even dimensions, the angles
    // repeated for both halves.
    const auto dim = spec.head_dim();
    const auto inv_freq = 1.0 / torch::pow(spec.rope_theta, torch::arange(0, dim, 2, opts) / static_cast<double>(dim));
    const auto angles = torch::outer(torch::arange(t, opts), inv_freq);
    const auto emb = torch::cat({angles, angles}, -1);
    const auto cos = emb.cos().to(h.scalar_type()), sin = emb.sin().to(h.scalar_type());
    const auto mask = torch::full({t, t}, -std::numeric_limits<float>::infinity(), opts).triu(1).to(h.scalar_type());
    for (const auto& layer : *model->layers) {
      h = layer->as<DecoderLayer>()->forward(h, cos, sin, mask);
    }
    h = model->norm->forward(h);
    return lm_head ? lm_head->forward(h) : torch::nn::functional::linear(h, model->embed_tokens->weight);
  }
  LmSpec spec;
  std::shared_ptr<LlamaBody> model;
  std::shared_ptr<LoraLinear> lm_head;
};

}  // namespace

std::shared_ptr<Net> make_llama(const LmSpec& spec) { return std::make_shared<Llama>(spec); }

}  // namespace detail
}  // namespace flotilla

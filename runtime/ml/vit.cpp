#include "runtime/ml/vit.hpp"

#include "runtime/ml/layers.hpp"

#include <cmath>

namespace flotilla {

Expected<void> check_vit_spec(const ModelSpec& m) {
  const auto& s = m.vit;
  auto bad = [](const std::string& why) { return Error{Errc::invalid_config, "vit model: " + why}; };
  auto bounded = [&](const char* key, std::int64_t v, std::int64_t most) -> Expected<void> {
    if (v < 1 || v > most) {
      return bad(std::string(key) + " must be in [1, " + std::to_string(most) + "], got " + std::to_string(v));
    }
    return {};
  };
  for (auto ok : {bounded("patch-size", s.patch_size, 1 << 12), bounded("hidden-size", s.hidden_size, 1 << 16),
                  bounded("intermediate-size", s.intermediate_size, 1 << 18), bounded("layers", s.num_layers, 1024),
                  bounded("heads", s.num_heads, 1024), bounded("input-size", m.input_size, 1 << 14),
                  bounded("input-channels", m.input_channels, 1 << 12), bounded("classes", m.num_classes, 1 << 20)}) {
    if (!ok) return ok;
  }
  if (m.input_size % s.patch_size != 0) {
    return bad("the image size (" + std::to_string(m.input_size) + ") is not a multiple of patch-size (" +
               std::to_string(s.patch_size) + ")");
  }
  if (s.hidden_size % s.num_heads != 0) {
    return bad("hidden-size (" + std::to_string(s.hidden_size) + ") does not split into " +
               std::to_string(s.num_heads) + " heads");
  }
  if (!(s.layer_norm_eps > 0) || !(s.layer_norm_eps < 1)) return bad("layer_norm_eps must be in (0, 1)");
  return {};
}

namespace detail {
namespace {

torch::nn::LayerNorm layer_norm(std::int64_t size, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({size}).eps(eps));
}

/// "attention": "attention" (query, key, value) and "output" (dense), as transformers nests them.
struct SelfAttention : torch::nn::Module {
  SelfAttention(const VitSpec& s, Net& net, const std::string& prefix) : heads(s.num_heads) {
    const auto h = s.hidden_size;
    const auto std = s.initializer_range;
    query = add_linear(*this, net, prefix, "query", h, h, std, true);
    key = add_linear(*this, net, prefix, "key", h, h, std, true);
    value = add_linear(*this, net, prefix, "value", h, h, std, true);
  }
  std::int64_t heads;
  std::shared_ptr<LoraLinear> query, key, value;
};
struct Dense : torch::nn::Module {
  Dense(Net& net, const std::string& prefix, std::int64_t in, std::int64_t out, double std) {
    dense = add_linear(*this, net, prefix, "dense", in, out, std, true);
  }
  std::shared_ptr<LoraLinear> dense;
};
struct Attention : torch::nn::Module {
  Attention(const VitSpec& s, Net& net, const std::string& prefix) {
    attention = register_module("attention", std::make_shared<SelfAttention>(s, net, prefix + "attention."));
    output = register_module("output", std::make_shared<Dense>(net, prefix + "output.", s.hidden_size,
                                                               s.hidden_size, s.initializer_range));
  }
  /// x [B, L, hidden] -> [B, L, hidden]; every token sees every token.
  torch::Tensor forward(const torch::Tensor& x) {
    const auto b = x.size(0), l = x.size(1), heads = attention->heads, d = x.size(2) / heads;
    auto split = [&](const std::shared_ptr<LoraLinear>& p) { return p->forward(x).view({b, l, heads, d}).transpose(1, 2); };
    const auto q = split(attention->query), k = split(attention->key), v = split(attention->value);
    const auto weights = torch::softmax(torch::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(d)), -1);
    return output->dense->forward(torch::matmul(weights, v).transpose(1, 2).reshape({b, l, heads * d}));
  }
  std::shared_ptr<SelfAttention> attention;
  std::shared_ptr<Dense> output;
};

/// transformers' ViTLayer: x + attention(layernorm_before(x)), then h + output(gelu(intermediate(layernorm_after(h)))).
struct Block : torch::nn::Module {
  Block(const VitSpec& s, Net& net, const std::string& prefix) {
    attention = register_module("attention", std::make_shared<Attention>(s, net, prefix + "attention."));
    intermediate = register_module("intermediate", std::make_shared<Dense>(net, prefix + "intermediate.", s.hidden_size,
                                                                           s.intermediate_size, s.initializer_range));
    output = register_module("output", std::make_shared<Dense>(net, prefix + "output.", s.intermediate_size,
                                                               s.hidden_size, s.initializer_range));
    layernorm_before = register_module("layernorm_before", layer_norm(s.hidden_size, s.layer_norm_eps));
    layernorm_after = register_module("layernorm_after", layer_norm(s.hidden_size, s.layer_norm_eps));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const auto h = x + attention->forward(layernorm_before(x));
    return h + output->dense->forward(torch::gelu(intermediate->dense->forward(layernorm_after(h))));
  }
  std::shared_ptr<Attention> attention;
  std::shared_ptr<Dense> intermediate, output;
  torch::nn::LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
};

struct PatchEmbeddings : torch::nn::Module {
  PatchEmbeddings(const ModelSpec& m) {
    const auto& s = m.vit;
    projection = register_module(
        "projection", torch::nn::Conv2d(torch::nn::Conv2dOptions(m.input_channels, s.hidden_size, s.patch_size)
                                            .stride(s.patch_size)));
    torch::NoGradGuard no_grad;
    projection->weight.normal_(0.0, s.initializer_range);
    projection->bias.zero_();
  }
  torch::nn::Conv2d projection{nullptr};
};

struct Embeddings : torch::nn::Module {
  Embeddings(const ModelSpec& m) {
    const auto& s = m.vit;
    const auto patches = (m.input_size / s.patch_size) * (m.input_size / s.patch_size);
    // transformers draws both from N(0, initializer_range²) truncated at ±2 (absolute: for a
    // std of 0.02, no draw is ever cut), i.e. a plain normal.
    auto normal = [&](std::vector<std::int64_t> shape) { return torch::empty(shape).normal_(0.0, s.initializer_range); };
    cls_token = register_parameter("cls_token", normal({1, 1, s.hidden_size}));
    position_embeddings = register_parameter("position_embeddings", normal({1, patches + 1, s.hidden_size}));
    patch_embeddings = register_module("patch_embeddings", std::make_shared<PatchEmbeddings>(m));
  }
  torch::Tensor cls_token, position_embeddings;
  std::shared_ptr<PatchEmbeddings> patch_embeddings;
};

/// "vit": embeddings, encoder.layer.N, layernorm (transformers' ViTModel without its pooler).
struct VitBody : torch::nn::Module {
  VitBody(const ModelSpec& m, Net& net) {
    embeddings = register_module("embeddings", std::make_shared<Embeddings>(m));
    auto encoder = register_module("encoder", std::make_shared<torch::nn::Module>());
    layer = encoder->register_module("layer", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < m.vit.num_layers; ++i) {
      layer->push_back(std::make_shared<Block>(m.vit, net, "vit.encoder.layer." + std::to_string(i) + "."));
    }
    layernorm = register_module("layernorm", layer_norm(m.vit.hidden_size, m.vit.layer_norm_eps));
  }
  std::shared_ptr<Embeddings> embeddings;
  torch::nn::ModuleList layer{nullptr};
  torch::nn::LayerNorm layernorm{nullptr};
};

struct Vit : Net {
  explicit Vit(const ModelSpec& m) : spec(m) {
    vit = register_module("vit", std::make_shared<VitBody>(m, *this));
    classifier = add_linear(*this, *this, "", "classifier", m.vit.hidden_size, m.num_classes, m.vit.initializer_range, true);
  }
  torch::Tensor forward(const torch::Tensor& images) override {
    if (images.dim() != 4 || images.size(1) != spec.input_channels || images.size(2) != spec.input_size ||
        images.size(3) != spec.input_size) {
      throw std::invalid_argument("a vit model takes images [batch, " + std::to_string(spec.input_channels) + ", " +
                                  std::to_string(spec.input_size) + ", " + std::to_string(spec.input_size) + "]");
    }
    const auto& e = *vit->embeddings;
    auto h = e.patch_embeddings->projection->forward(images).flatten(2).transpose(1, 2);  // [B, patches, hidden]
    h = torch::cat({e.cls_token.expand({h.size(0), 1, h.size(2)}), h}, 1) + e.position_embeddings;
    for (const auto& block : *vit->layer) h = block->as<Block>()->forward(h);
    return classifier->forward(vit->layernorm(h).select(1, 0));
  }
  ModelSpec spec;
  std::shared_ptr<VitBody> vit;
  std::shared_ptr<LoraLinear> classifier;
};

}  // namespace

std::shared_ptr<Net> make_vit(const ModelSpec& spec) { return std::make_shared<Vit>(spec); }

}  // namespace detail
}  // namespace flotilla

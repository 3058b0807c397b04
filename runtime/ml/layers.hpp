#pragma once
/// The layers Flotilla's models are built from (internal to runtime/ml: LibTorch types): a
/// linear layer that can carry a LoRA adapter, and the network base every architecture shares.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "runtime/ml/model.hpp"

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::detail {

/// A linear layer that can carry a LoRA adapter. Without one it is exactly torch::nn::Linear
/// (same parameters "weight" and "bias", same initialisation draws from the global generator).
struct LoraLinear : torch::nn::Module {
  LoraLinear(std::int64_t in, std::int64_t out) : in_features(in), out_features(out) {
    torch::nn::Linear base(in, out);  // draws its init exactly as a plain Linear layer would
    weight = register_parameter("weight", base->weight);
    bias = register_parameter("bias", base->bias);
  }
  /// Weights drawn from N(0, std²) (transformers' initializer_range); a bias of zeros if asked.
  LoraLinear(std::int64_t in, std::int64_t out, double std, bool with_bias = false)
      : in_features(in), out_features(out) {
    weight = register_parameter("weight", torch::empty({out, in}).normal_(0.0, std));
    if (with_bias) bias = register_parameter("bias", torch::zeros({out}));
  }

  /// Adds A (rank×in, kaiming-uniform with a = sqrt(5) as PEFT does, i.e. U(-1/sqrt(in),
  /// 1/sqrt(in)), drawn from `seed` row by row so a lower rank's A is the first rows of a higher
  /// rank's) and B (out×rank, zeros).
  void add_adapter(const LoraSpec& spec, std::uint64_t seed) {
    rank = spec.rank;
    scale = spec.scale();
    dropout = spec.dropout;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    auto a = torch::empty({rank, in_features}).uniform_(-bound, bound, gen);
    auto b = torch::zeros({out_features, rank});
    lora_a_module = register_module("lora_A", std::make_shared<torch::nn::Module>());
    lora_b_module = register_module("lora_B", std::make_shared<torch::nn::Module>());
    lora_a = lora_a_module->register_parameter("weight", a, !spec.freeze_a);
    lora_b = lora_b_module->register_parameter("weight", b, true);
  }

  [[nodiscard]] torch::Tensor delta() const { return scale * lora_b.mm(lora_a); }

  torch::Tensor forward(const torch::Tensor& x) {
    auto y = bias.defined() ? torch::nn::functional::linear(x, weight, bias)
                            : torch::nn::functional::linear(x, weight);
    if (rank > 0 && !merged) {
      const auto h = dropout > 0 ? torch::dropout(x, dropout, is_training()) : x;
      y = y + scale * torch::nn::functional::linear(torch::nn::functional::linear(h, lora_a), lora_b);
    }
    return y;
  }

  void merge() {
    if (rank == 0 || merged) return;
    torch::NoGradGuard no_grad;
    weight.add_(delta());
    merged = true;
  }
  void unmerge() {
    if (rank == 0 || !merged) return;
    torch::NoGradGuard no_grad;
    weight.sub_(delta());
    merged = false;
  }

  std::int64_t in_features, out_features;
  torch::Tensor weight, bias, lora_a, lora_b;
  std::shared_ptr<torch::nn::Module> lora_a_module, lora_b_module;
  std::int64_t rank = 0;
  double scale = 0;
  double dropout = 0;
  bool merged = false;
};

/// A network with a forward pass, so one wrapper serves every architecture.
struct Net : torch::nn::Module {
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  /// The linear layers LoRA can target, by their full dotted name ("fc1",
  /// "model.layers.0.mlp.up_proj"), in registration order.
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> linear_layers;

 protected:
  std::shared_ptr<LoraLinear> linear(const std::string& name, std::int64_t in, std::int64_t out) {
    auto layer = register_module(name, std::make_shared<LoraLinear>(in, out));
    linear_layers.emplace_back(name, layer);
    return layer;
  }
};

/// A transformers-style linear layer (N(0, std²) weights, optional zero bias) registered as
/// `owner`'s child `name` and listed in `net.linear_layers` as prefix + name (its full name).
inline std::shared_ptr<LoraLinear> add_linear(torch::nn::Module& owner, Net& net, const std::string& prefix,
                                              const std::string& name, std::int64_t in, std::int64_t out,
                                              double std, bool bias = false) {
  auto layer = owner.register_module(name, std::make_shared<LoraLinear>(in, out, std, bias));
  net.linear_layers.emplace_back(prefix + name, layer);
  return layer;
}

}  // namespace flotilla::detail

namespace flotilla::detail {

/// The LLaMA-layout language model (runtime/ml/llama.cpp), initialised from the global
/// generator (the caller seeds it); its linear layers in linear_layers by full dotted name.
[[nodiscard]] std::shared_ptr<Net> make_llama(const LmSpec& spec);
/// The ViT (runtime/ml/vit.cpp), likewise.
[[nodiscard]] std::shared_ptr<Net> make_vit(const ModelSpec& spec);

}  // namespace flotilla::detail

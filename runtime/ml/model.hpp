#pragma once
/// Models built with LibTorch, behind a small interface so torch/torch.h stays out of headers.
#include "runtime/base/error.hpp"
#include "runtime/base/tensor.hpp"

#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace flotilla {

/// Low-rank adapters (LoRA, Hu et al. 2021) on some of the model's linear layers: each target
/// computes y = W x + b + (alpha/rank)·B(A(dropout(x))) with A: rank×in (kaiming-uniform like
/// PEFT, from a seed derived from the model's seed and the layer's name, so every model built
/// with the same seed has the same A) and B: out×rank (zeros). With rank > 0 every other
/// parameter is frozen; parameters are "<layer>.lora_A.weight" and "<layer>.lora_B.weight".
struct LoraSpec {
  std::int64_t rank = 0;  ///< 0 = no adapters: the full weights are trained
  double alpha = 16;      ///< the adapter's output is scaled by alpha/rank
  double dropout = 0;     ///< on the adapter's input, while training
  std::vector<std::string> targets = {"fc1", "fc2"};  ///< linear layers adapted, by name
  bool freeze_a = false;  ///< FFA-LoRA: A stays at its seeded init; only B is trained

  [[nodiscard]] bool enabled() const { return rank > 0; }
  [[nodiscard]] double scale() const { return rank > 0 ? alpha / static_cast<double>(rank) : 0; }
};

/// A decoder-only language model in the LLaMA layout (ModelSpec::name "llama"): RMSNorm,
/// rotary positions, grouped-query attention, a SwiGLU MLP, tied or untied embeddings, with
/// Hugging Face's parameter names ("model.layers.0.mlp.up_proj.weight"). Sizes as a
/// transformers LlamaConfig names them (runtime/ml/llama.hpp reads its config.json).
struct LmSpec {
  std::int64_t vocab_size = 259;  ///< the byte tokenizer's
  std::int64_t hidden_size = 64;
  std::int64_t intermediate_size = 172;
  std::int64_t num_layers = 2;
  std::int64_t num_heads = 4;
  std::int64_t num_kv_heads = 2;  ///< grouped-query attention: num_heads is a multiple of it
  std::int64_t max_positions = 256;
  double rope_theta = 10000;
  double rms_norm_eps = 1e-5;
  bool tie_embeddings = false;  ///< the output projection is the embedding's transpose (as transformers, off by default)
  double initializer_range = 0.02;
  [[nodiscard]] std::int64_t head_dim() const { return hidden_size / num_heads; }
};

/// A Vision Transformer image classifier (ModelSpec::name "vit", Dosovitskiy et al. 2021) with
/// transformers' ViTForImageClassification layout and parameter names
/// ("vit.encoder.layer.0.attention.attention.query.weight", "classifier.weight"): non-overlapping
/// patches embedded by a strided convolution, a class token, learnt position embeddings,
/// pre-norm encoder blocks (multi-head attention, a GELU MLP), a final LayerNorm, a linear
/// classifier on the class token. Image size, channels and classes come from ModelSpec.
struct VitSpec {
  std::int64_t patch_size = 7;   ///< input_size must be a multiple of it
  std::int64_t hidden_size = 64;
  std::int64_t intermediate_size = 128;
  std::int64_t num_layers = 4;
  std::int64_t num_heads = 4;
  double layer_norm_eps = 1e-12;  ///< transformers' ViTConfig default
  double initializer_range = 0.02;
};

/// What a model's outputs mean, and so how it is trained and scored.
enum class Objective {
  classify,   ///< logits [N, classes] against labels [N]; accuracy per example
  causal_lm,  ///< logits [N, T, vocab]; token t predicts labels[t + 1] (kIgnoreLabel: not
              ///< scored, e.g. padding or the prompt); accuracy per predicted token
};

/// A label a causal LM does not score (padding, the prompt): as Hugging Face's -100.
inline constexpr std::int64_t kIgnoreLabel = -100;

struct ModelSpec {
  std::string name = "cnn";  ///< "mlp", "cnn", "vit" or "llama"
  std::int64_t hidden = 128; ///< width of the hidden layer(s)
  std::int64_t input_channels = 1;
  std::int64_t input_size = 28;  ///< square inputs
  std::int64_t num_classes = 10;
  LoraSpec lora;  ///< set from the config's [lora] (federation.hpp build_model), not [model]
  LmSpec lm;      ///< "llama"'s sizes
  VitSpec vit;    ///< "vit"'s sizes
  /// Weights to start from instead of the seeded initialisation: a safetensors file, or a
  /// directory of them (a Hugging Face checkpoint), matched to the model's tensors by name.
  std::string checkpoint;
  /// Without LoRA: the linear layers whose weight and bias are trained, named as lora.targets
  /// are (full name, last components, glob); every other parameter is frozen and not sent.
  /// Empty: every parameter is trained (the study's "full fine-tuning of the target modules"
  /// sets it to the LoRA methods' targets).
  std::vector<std::string> trainable;

  [[nodiscard]] Objective objective() const {
    return name == "llama" ? Objective::causal_lm : Objective::classify;
  }
};

/// Resolves "cpu", "cuda", "cuda:N" or "auto" (cuda:0 when a GPU is present, else cpu).
/// Asking for CUDA where none is available is Errc::invalid_config naming the device.
[[nodiscard]] Expected<c10::Device> resolve_device(const std::string& name);

class Model {
 public:
  /// Builds the model with weights initialised from `seed` (same seed, same weights).
  [[nodiscard]] static Expected<std::unique_ptr<Model>> create(const ModelSpec& spec,
                                                               c10::Device device,
                                                               std::uint64_t seed);
  virtual ~Model() = default;

  /// Parameters and buffers, by name, as contiguous CPU tensors (copies when on a GPU).
  [[nodiscard]] virtual TensorList state() const = 0;
  /// What training changes, as state() gives it: every tensor of state() without LoRA (what
  /// FedAvg sends), the adapters (A and B of each target) with LoRA, only the B matrices with
  /// freeze_a, only the named layers' parameters with `trainable`. What a client sends back.
  [[nodiscard]] virtual TensorList trainable_state() const = 0;
  /// Loads a state; names, count and shapes must match (Errc::rejected names the first
  /// mismatch), nothing is changed if they do not. A model with LoRA at rank r takes a state
  /// whose adapters have rank r.
  [[nodiscard]] virtual Expected<void> load_state(const TensorList& state) = 0;
  /// Loads some of the model's tensors, by name, in any order (what a task carries: the rest
  /// keep their value). Errc::rejected names the first that is not a tensor of the model or has
  /// another shape; nothing is changed then.
  [[nodiscard]] virtual Expected<void> load_tensors(const TensorList& tensors) = 0;
  /// Forward pass (inputs on any device; moved to the model's): images [N, C, H, W] to logits
  /// [N, classes], or token ids [N, T] (int64) to logits [N, T, vocab].
  [[nodiscard]] virtual at::Tensor forward(const at::Tensor& inputs) = 0;
  [[nodiscard]] virtual c10::Device device() const = 0;
  [[nodiscard]] virtual std::int64_t num_parameters() const = 0;
  [[nodiscard]] virtual const ModelSpec& spec() const = 0;
  /// Folds (alpha/r)·B·A into each adapted layer's W, and stops applying the adapters (for
  /// inference: one matmul per layer). No-op without LoRA or when already merged. While merged,
  /// state() holds the merged W: unmerge() before training or sending it.
  virtual void merge() = 0;
  /// Takes (alpha/r)·B·A back out of W (up to float rounding) and applies the adapters again.
  virtual void unmerge() = 0;
  [[nodiscard]] virtual bool merged() const = 0;
  /// The underlying torch::nn::Module (a torch::nn::Module*), for trainers.
  [[nodiscard]] virtual void* module() = 0;
};

/// Loads a checkpoint's weights into `model` by name: a safetensors file, or a directory of
/// them (a Hugging Face model's). Every tensor of the model but its LoRA adapters must be in it,
/// with its shape (floating dtypes convert: bf16 and f16 load into a float32 model). Errc::
/// invalid_config names the file and the first missing, unknown or misshapen tensor; nothing is
/// loaded then.
[[nodiscard]] Expected<void> load_checkpoint_weights(Model& model, const std::filesystem::path& where);

}  // namespace flotilla

#pragma once
/// The LLaMA-layout language model's configuration: Hugging Face's config.json for a
/// LlamaForCausalLM read into an LmSpec, and the bounds every LmSpec is checked against.
#include "runtime/base/error.hpp"
#include "runtime/ml/model.hpp"

#include <filesystem>
#include <string>

namespace flotilla {

/// Reads the text of a transformers config.json ("model_type": "llama"): vocab_size,
/// hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
/// num_key_value_heads (default: num_attention_heads), max_position_embeddings, rope_theta
/// (10000), rms_norm_eps (1e-6), tie_word_embeddings (false), initializer_range (0.02).
/// Errc::invalid_config naming `where` and the key for a missing or wrong value, and for what
/// this model does not implement (another hidden_act than "silu", rope_scaling,
/// attention_bias, mlp_bias).
[[nodiscard]] Expected<LmSpec> parse_llama_config(const std::string& json, const std::string& where);
/// The same, from a file (at most 1 MiB).
[[nodiscard]] Expected<LmSpec> read_llama_config(const std::filesystem::path& path);

/// Errc::invalid_config unless every size is positive and bounded, num_heads divides
/// hidden_size into an even head size, and num_kv_heads divides num_heads.
[[nodiscard]] Expected<void> check_lm_spec(const LmSpec& spec);

}  // namespace flotilla

#pragma once
/// The LLaMA-layout model and batch shape the language-model benchmarks take from their flags
/// (--vocab --hidden --intermediate --layers --heads --kv-heads --seq --batch).
#include "runtime/ml/model.hpp"

#include <cstdint>
#include <string>

namespace flotilla::bench {

struct LmShape {
  std::int64_t vocab, hidden, intermediate, layers, heads, kv_heads, seq, batch;

  /// Sets the value `flag` names; false for a flag that is not a shape's.
  bool take(const std::string& flag, std::int64_t v) {
    if (flag == "--vocab") vocab = v;
    else if (flag == "--hidden") hidden = v;
    else if (flag == "--intermediate") intermediate = v;
    else if (flag == "--layers") layers = v;
    else if (flag == "--heads") heads = v;
    else if (flag == "--kv-heads") kv_heads = v;
    else if (flag == "--seq") seq = v;
    else if (flag == "--batch") batch = v;
    else return false;
    return true;
  }

  [[nodiscard]] ModelSpec spec() const {
    ModelSpec s;
    s.name = "llama";
    s.lm.vocab_size = vocab;
    s.lm.hidden_size = hidden;
    s.lm.intermediate_size = intermediate;
    s.lm.num_layers = layers;
    s.lm.num_heads = heads;
    s.lm.num_kv_heads = kv_heads;
    s.lm.max_positions = seq;
    return s;
  }
};

}  // namespace flotilla::bench

#pragma once
/// SentencePiece `tokenizer.model` files (what LLaMA-family checkpoints ship) read and applied
/// without the SentencePiece library: Debian's libsentencepiece0 carries its own copy of
/// protobuf-lite, whose symbols clash with the libprotobuf LibTorch loads (every binary linking
/// both crashed at load, docs/experiments.md). The file is a protobuf ModelProto, decoded here
/// with bounds on every length; encoding is SentencePiece's BPE (merge the adjacent pair whose
/// merged piece scores highest, leftmost first) with byte fallback, as LLaMA's tokenizer is
/// configured, user-defined pieces kept whole. Checked token for token against the `spm_encode`
/// tool in the tests (LLaMA's settings, the defaults on ASCII text, user-defined pieces). Not
/// applied: pieces of type UNUSED (never merged here), treat_whitespace_as_suffix, and a
/// normalizer's character map (see load()).
#include "runtime/base/error.hpp"
#include "runtime/ml/text.hpp"

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace flotilla {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  /// A tokenizer.model file (at most 64 MiB). Errc::invalid_config naming the file for what is
  /// not a SentencePiece model, or one this reader does not apply: a model type other than BPE
  /// (unigram, word, char). A normalizer other than "identity" (LLaMA's) is applied as identity
  /// with a warning: text it would change (outside ASCII; tabs and newlines under nmt_nfkc) may
  /// then tokenize differently.
  [[nodiscard]] static Expected<SentencePieceTokenizer> load(const std::filesystem::path& path);
  [[nodiscard]] static Expected<SentencePieceTokenizer> parse(std::span<const std::byte> bytes, const std::string& where);

  [[nodiscard]] std::vector<std::int64_t> encode(std::string_view text) const override;
  [[nodiscard]] std::string decode(const std::vector<std::int64_t>& ids) const override;
  [[nodiscard]] std::int64_t vocab_size() const override { return static_cast<std::int64_t>(pieces_.size()); }
  [[nodiscard]] std::int64_t bos() const override { return bos_; }
  [[nodiscard]] std::int64_t eos() const override { return eos_; }
  /// The model's pad id, or (LLaMA has none) its eos: padding is never scored nor attended to.
  [[nodiscard]] std::int64_t pad() const override { return pad_ >= 0 ? pad_ : eos_; }
  [[nodiscard]] std::int64_t unk() const { return unk_; }
  [[nodiscard]] const std::string& normalizer() const { return normalizer_; }

  enum class Type : std::uint8_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };
  struct Piece {
    std::string text;
    float score = 0;
    Type type = Type::normal;
  };
  [[nodiscard]] const std::vector<Piece>& pieces() const { return pieces_; }

 private:
  std::vector<Piece> pieces_;
  std::unordered_map<std::string, std::int64_t> merge_ids_;  ///< normal and user-defined pieces
  std::vector<std::int64_t> byte_ids_;                        ///< <0xNN> piece of each byte, or -1
  std::vector<std::string> user_defined_;                     ///< matched whole, longest first
  std::int64_t unk_ = 0, bos_ = 1, eos_ = 2, pad_ = -1;
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true, remove_extra_whitespaces_ = true, escape_whitespaces_ = true;
  std::string normalizer_ = "identity";
};

/// The tokenizer data.tokenizer names: "bytes", or "sentencepiece" with `model_path`.
[[nodiscard]] Expected<std::unique_ptr<Tokenizer>> make_tokenizer(const std::string& kind,
                                                                  const std::string& model_path);

}  // namespace flotilla

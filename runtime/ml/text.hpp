#pragma once
/// Text for the language model: tokenizers, instruction data in the JSON-lines shape of
/// Databricks' Dolly (`instruction`, `context`, `response`, `category`), the causal-LM dataset
/// built from it (the prompt not scored, the response scored), greedy generation, and ROUGE-L.
#include "runtime/base/error.hpp"
#include "runtime/ml/data.hpp"
#include "runtime/ml/model.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla {

/// Text to token ids and back. Ids are in [0, vocab_size()).
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  [[nodiscard]] virtual std::vector<std::int64_t> encode(std::string_view text) const = 0;
  /// The text of `ids`, special tokens left out.
  [[nodiscard]] virtual std::string decode(const std::vector<std::int64_t>& ids) const = 0;
  [[nodiscard]] virtual std::int64_t vocab_size() const = 0;
  [[nodiscard]] virtual std::int64_t bos() const = 0;  ///< begins every sequence
  [[nodiscard]] virtual std::int64_t eos() const = 0;  ///< ends a response: generation stops
  [[nodiscard]] virtual std::int64_t pad() const = 0;  ///< fills a batch's shorter sequences
};

/// Every byte its own token, offset by three specials: pad 0, bos 1, eos 2, byte b = b + 3
/// (vocabulary 259). Needs no file: the offline demo's tokenizer.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::int64_t kOffset = 3;
  [[nodiscard]] std::vector<std::int64_t> encode(std::string_view text) const override;
  [[nodiscard]] std::string decode(const std::vector<std::int64_t>& ids) const override;
  [[nodiscard]] std::int64_t vocab_size() const override { return 256 + kOffset; }
  [[nodiscard]] std::int64_t bos() const override { return 1; }
  [[nodiscard]] std::int64_t eos() const override { return 2; }
  [[nodiscard]] std::int64_t pad() const override { return 0; }
};

/// One example of instruction data (Dolly's fields; `context` may be empty).
struct InstructionRecord {
  std::string instruction, context, response, category;
};

struct InstructionLimits {
  std::uint64_t max_file_bytes = 1ull << 30;  ///< a larger file is refused before it is read
  std::size_t max_records = 10'000'000;
};

/// Reads a JSON-lines file of records with "instruction", "response" (required, strings),
/// "context" and "category" (optional; a missing category is "general"). Blank lines are
/// skipped. Errc::malformed names the file and line of the first bad record (not JSON, a
/// missing or non-string field); Errc::io a file that cannot be read or is too large.
[[nodiscard]] Expected<std::vector<InstructionRecord>> read_instructions(
    const std::filesystem::path& path, const InstructionLimits& limits = {});

/// The prompt a record is shown as (what the model conditions on, never scored):
/// "### Instruction:\n{instruction}\n\n[### Context:\n{context}\n\n]### Response:\n".
[[nodiscard]] std::string prompt_of(const InstructionRecord& record);

/// A record's prompt as tokens, in the three parts it is cut by: "### Instruction:\n...\n\n",
/// "### Context:\n...\n\n" (empty without a context) and the "### Response:\n" cue, each
/// encoded on its own (what training and generation both see).
struct PromptParts {
  std::vector<std::int64_t> head, context, cue;
  [[nodiscard]] std::int64_t size() const {
    return static_cast<std::int64_t>(head.size() + context.size() + cue.size());
  }
};
[[nodiscard]] PromptParts prompt_parts(const InstructionRecord& record, const Tokenizer& tokenizer);
/// The prompt in at most `budget` tokens: the context loses its end first, then the instruction
/// its start; the cue always stays (only its own end, if even it does not fit).
[[nodiscard]] std::vector<std::int64_t> fit_prompt(PromptParts parts, std::int64_t budget);

/// Causal-LM examples of `records`: inputs [N, max_length] = bos, the prompt, the response, eos,
/// right-padded with pad; labels the same ids where the response and eos are (what is
/// scored) and kIgnoreLabel elsewhere (bos, the prompt, padding). A record longer than
/// max_length gives its prompt up to half the length (more when the response is short): the
/// context loses its end first, then the instruction its start, the "### Response:" cue always
/// stays; the response is cut from its end (its eos then lost). `groups` holds each record's category index into `categories`
/// (sorted names), the labels partitions split by.
struct LmDataset {
  Dataset data;
  std::vector<std::string> categories;
};
[[nodiscard]] Expected<LmDataset> build_lm_dataset(const std::vector<InstructionRecord>& records,
                                                   const Tokenizer& tokenizer, std::int64_t max_length);

/// Greedy decoding: the most likely next token, appended, until `eos` or `max_new_tokens`
/// (or the model's longest sequence). Returns only the new tokens (eos not included). Recomputes
/// the whole sequence per token: meant for short answers from small models.
[[nodiscard]] std::vector<std::int64_t> generate_greedy(Model& model, std::vector<std::int64_t> prompt,
                                                        std::int64_t max_new_tokens, std::int64_t eos);

/// ROUGE-L (Lin 2004) of `candidate` against `reference`: the longest common subsequence of
/// their words (lowercased, split on anything but ASCII letters and digits, as Google's
/// rouge_score does), as precision (of the
/// candidate), recall (of the reference) and F1. Both empty: all 1; one empty: all 0.
struct RougeL {
  double precision = 0, recall = 0, f1 = 0;
};
[[nodiscard]] RougeL rouge_l(std::string_view candidate, std::string_view reference);

}  // namespace flotilla

// SentencePiece tokenizer.model files, read and applied without the library: token for token the
// same ids as the `spm_encode` tool (Debian's sentencepiece package) with models `spm_train`
// trains here, LLaMA's settings (BPE, byte fallback, identity normalization) and the defaults;
// text round-trips; broken and unsupported files are refused by name.
#include "runtime/ml/sentencepiece.hpp"
#include "runtime/storage/durable.hpp"

#include "temp_dir.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace flotilla {
namespace {

/// A corpus of plain English sentences from a few hundred words.
void write_corpus(const std::filesystem::path& path) {
  const std::vector<std::string> words = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "federated",
                                          "learning", "runs", "on", "many", "devices", "and", "every", "model",
                                          "learns", "from", "data", "it", "never", "sees", "proverbs", "of", "wisdom",
                                          "instruction", "response", "define", "word", "sentence", "saying"};
  std::ofstream out(path);
  std::uint64_t x = 12345;
  for (int line = 0; line < 3000; ++line) {
    for (int w = 0; w < 8; ++w) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      out << (w ? " " : "") << words[(x >> 33) % words.size()];
    }
    out << (line % 7 == 0 ? ", Éric said." : ".") << "\n";
  }
}

struct Trained {
  std::filesystem::path model;
};

Trained train(const std::filesystem::path& dir, const std::string& name, const std::string& flags, int vocab = 400) {
  const auto corpus = dir / "corpus.txt";
  if (!std::filesystem::exists(corpus)) write_corpus(corpus);
  const auto prefix = dir / name;
  const std::string command = "spm_train --input='" + corpus.string() + "' --model_prefix='" + prefix.string() +
                              "' --model_type=bpe --vocab_size=" + std::to_string(vocab) + " " + flags + " > '" + prefix.string() + ".log' 2>&1";
  if (std::system(command.c_str()) != 0) {
    throw std::runtime_error("spm_train failed (is Debian's sentencepiece package installed? scripts/install-deps.sh "
                             "installs it): " + command);
  }
  return {prefix.string() + ".model"};
}

/// spm_encode's ids for each line of `texts`.
std::vector<std::vector<std::int64_t>> reference_ids(const std::filesystem::path& dir, const std::filesystem::path& model,
                                                     const std::vector<std::string>& texts) {
  {
    std::ofstream in(dir / "in.txt");
    for (const auto& t : texts) in << t << "\n";
  }
  const std::string command = "spm_encode --model='" + model.string() + "' --output_format=id < '" +
                              (dir / "in.txt").string() + "' > '" + (dir / "ids.txt").string() + "'";
  if (std::system(command.c_str()) != 0) throw std::runtime_error("spm_encode failed: " + command);
  std::ifstream out(dir / "ids.txt");
  std::vector<std::vector<std::int64_t>> ids;
  std::string line;
  while (std::getline(out, line)) {
    std::istringstream s(line);
    std::vector<std::int64_t> row;
    for (std::int64_t id = 0; s >> id;) row.push_back(id);
    ids.push_back(row);
  }
  return ids;
}

const std::vector<std::string> kTexts = {
    "the quick brown fox jumps over the lazy dog",
    "Federated learning runs on many devices.",
    "a word never seen: zyzzyva, qoph & 42!",
    "  two leading spaces and  a double one ",
    "Éric said: naïve café — ünïcödé ☃ 日本語",
    "x",
    "defineword sentencesaying"};

TEST(SentencePiece, EncodesAsSpmEncodeWithLlamasSettings) {
  TestDir dir("flotilla-spm");
  // LLaMA's tokenizer: BPE, byte fallback, no normalization, spaces kept as they are.
  const auto m = train(dir.path, "llama", "--byte_fallback=true --normalization_rule_name=identity "
                                           "--remove_extra_whitespaces=false --character_coverage=0.99 "
                                           "--bos_id=1 --eos_id=2 --unk_id=0 --pad_id=-1");
  auto t = SentencePieceTokenizer::load(m.model);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->vocab_size(), 400);
  EXPECT_EQ(t->bos(), 1);
  EXPECT_EQ(t->eos(), 2);
  EXPECT_EQ(t->pad(), 2) << "no pad piece: eos pads";
  const auto expected = reference_ids(dir.path, m.model, kTexts);
  ASSERT_EQ(expected.size(), kTexts.size());
  for (std::size_t i = 0; i < kTexts.size(); ++i) {
    EXPECT_EQ(t->encode(kTexts[i]), expected[i]) << "'" << kTexts[i] << "'";
    EXPECT_EQ(t->decode(t->encode(kTexts[i])), kTexts[i]) << "round trip";
  }
  bool bytes_used = false;
  for (const auto id : t->encode("☃")) bytes_used |= t->pieces()[static_cast<std::size_t>(id)].type == SentencePieceTokenizer::Type::byte;
  EXPECT_TRUE(bytes_used) << "a character outside the vocabulary falls back to its bytes";
  EXPECT_TRUE(t->encode("").empty());
}

TEST(SentencePiece, EncodesAsSpmEncodeWithTheDefaultsOnAsciiText) {
  TestDir dir("flotilla-spm");
  const auto m = train(dir.path, "defaults", "", 250);  // nmt_nfkc, extra whitespace removed, no byte fallback
  auto t = SentencePieceTokenizer::load(m.model);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->normalizer(), "nmt_nfkc");
  const std::vector<std::string> ascii(kTexts.begin(), kTexts.begin() + 4);
  const auto expected = reference_ids(dir.path, m.model, ascii);
  for (std::size_t i = 0; i < ascii.size(); ++i) EXPECT_EQ(t->encode(ascii[i]), expected[i]) << "'" << ascii[i] << "'";
  EXPECT_EQ(t->decode(t->encode("  two leading spaces and  a double one ")), "two leading spaces and a double one");
}

TEST(SentencePiece, UserDefinedPiecesStayWhole) {
  TestDir dir("flotilla-spm");
  const auto m = train(dir.path, "user", "--byte_fallback=true --normalization_rule_name=identity "
                                         "--user_defined_symbols='<sep>,thefox'");
  auto t = SentencePieceTokenizer::load(m.model);
  ASSERT_TRUE(t) << t.error().message;
  const std::vector<std::string> texts = {"the quick<sep>brown fox", "thefox jumps<sep><sep>", "over thefoxes"};
  const auto expected = reference_ids(dir.path, m.model, texts);
  for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(t->encode(texts[i]), expected[i]) << "'" << texts[i] << "'";
}

TEST(SentencePiece, BrokenAndUnsupportedFilesAreRefusedByName) {
  TestDir dir("flotilla-spm");
  const auto m = train(dir.path, "ok", "--byte_fallback=true");
  auto bytes = read_file(m.model, 1 << 24);
  ASSERT_TRUE(bytes);
  auto parse = [](const std::string& b) {
    return SentencePieceTokenizer::parse(std::as_bytes(std::span(b.data(), b.size())), "tokenizer.model");
  };
  auto cut = parse(bytes->substr(0, bytes->size() / 2));
  ASSERT_FALSE(cut);
  EXPECT_NE(cut.error().message.find("tokenizer.model: not a SentencePiece model"), std::string::npos) << cut.error().message;
  auto garbage = parse(std::string(64, '\xff'));
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error().message.find("not a SentencePiece model"), std::string::npos) << garbage.error().message;
  // A length that claims more bytes than there are: refused before anything is allocated for it.
  auto lying = parse(std::string("\x0a\xff\xff\xff\xff\x0f", 6));
  ASSERT_FALSE(lying);
  EXPECT_NE(lying.error().message.find("a field of 4294967295 bytes where 0 are left"), std::string::npos)
      << lying.error().message;
  const auto unigram = dir.path / "uni";
  const std::string command = "spm_train --input='" + (dir.path / "corpus.txt").string() + "' --model_prefix='" +
                              unigram.string() + "' --vocab_size=80 > /dev/null 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0);
  auto refused = SentencePieceTokenizer::load(unigram.string() + ".model");
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("a SentencePiece unigram model; Flotilla applies BPE models"), std::string::npos)
      << refused.error().message;
  auto kind = make_tokenizer("wordpiece", "");
  ASSERT_FALSE(kind);
  EXPECT_NE(kind.error().message.find("unknown data.tokenizer \"wordpiece\""), std::string::npos);
}

}  // namespace
}  // namespace flotilla

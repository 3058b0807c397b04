// Text for the language model: the byte tokenizer, Dolly-shaped JSON lines, the causal-LM
// dataset (only the response scored), ROUGE-L against values computed by hand (and Lin's own
// examples), and greedy generation from a model that learnt an answer.
#include "runtime/ml/text.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/plugin_host/plugin_host.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

namespace flotilla {
namespace {

struct TextFile {
  std::filesystem::path path;
  explicit TextFile(const std::string& content) {
    path = std::filesystem::temp_directory_path() /
           ("flotilla-text-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".jsonl");
    std::ofstream(path) << content;
  }
  ~TextFile() { std::filesystem::remove(path); }
};

TEST(ByteTokenizer, RoundTripsAnyTextAndKeepsSpecialsApart) {
  const ByteTokenizer tok;
  const std::string text = "Größe: 3×4 = 12\n\tok";
  const auto ids = tok.encode(text);
  EXPECT_EQ(ids.size(), text.size()) << "one token per byte";
  for (const auto id : ids) EXPECT_GE(id, ByteTokenizer::kOffset);
  EXPECT_EQ(tok.decode(ids), text);
  auto with_specials = ids;
  with_specials.insert(with_specials.begin(), tok.bos());
  with_specials.push_back(tok.eos());
  with_specials.push_back(tok.pad());
  EXPECT_EQ(tok.decode(with_specials), text) << "specials decode to nothing";
  EXPECT_EQ(tok.vocab_size(), 259);
}

TEST(Instructions, ReadsDollyShapedLines) {
  const TextFile f(
      R"({"instruction": "Define cat.", "context": "", "response": "A small feline.", "category": "open_qa"})"
      "\n\n"
      R"({"instruction": "Sum up.", "context": "Long text.", "response": "Short.", "category": "summarization"})"
      "\n"
      R"({"instruction": "No category.", "response": "Fine."})");
  auto r = read_instructions(f.path);
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->size(), 3U);
  EXPECT_EQ((*r)[1].context, "Long text.");
  EXPECT_EQ((*r)[1].category, "summarization");
  EXPECT_EQ((*r)[2].category, "general");
  EXPECT_EQ(prompt_of((*r)[0]), "### Instruction:\nDefine cat.\n\n### Response:\n");
  EXPECT_EQ(prompt_of((*r)[1]), "### Instruction:\nSum up.\n\n### Context:\nLong text.\n\n### Response:\n");
}

TEST(Instructions, NameTheLineOfABadRecord) {
  auto problem = [](const std::string& content) {
    const TextFile f(content);
    auto r = read_instructions(f.path);
    return r ? std::string("read") : r.error().message.substr(r.error().message.find(".jsonl") + 6);
  };
  const std::string good = R"({"instruction": "a", "response": "b"})";
  EXPECT_EQ(problem(good + "\n{oops\n").substr(0, 12), ":2: not JSON");
  EXPECT_EQ(problem(good + "\n" + R"({"instruction": "a"})"), ":2: lacks \"response\"");
  EXPECT_EQ(problem(R"({"instruction": 7, "response": "b"})"), ":1: \"instruction\" is 7, expected a string");
  EXPECT_EQ(problem("[1]"), ":1: expected a JSON object per line");
  EXPECT_EQ(problem("\n\n"), ": no records");
  const TextFile big(good + "\n" + good + "\n");
  InstructionLimits limits;
  limits.max_file_bytes = 10;
  auto r = read_instructions(big.path, limits);
  ASSERT_FALSE(r) << "a file larger than the limit is refused before it is read";
  limits = {};
  limits.max_records = 1;
  r = read_instructions(big.path, limits);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("more than 1 records"), std::string::npos) << r.error().message;
}

TEST(LmDataset, ScoresOnlyTheResponseAndItsEnd) {
  const ByteTokenizer tok;
  const std::vector<InstructionRecord> records = {{"Hi?", "", "Yo.", "chat"}, {"Q", "C", "A", "qa"}};
  auto d = build_lm_dataset(records, tok, 64);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->categories, (std::vector<std::string>{"chat", "qa"}));
  EXPECT_EQ(d->data.groups[0].item<std::int64_t>(), 0);
  EXPECT_EQ(d->data.groups[1].item<std::int64_t>(), 1);
  const auto prompt = tok.encode(prompt_of(records[0]));
  const auto in = d->data.inputs[0], lab = d->data.labels[0];
  const auto p = static_cast<std::int64_t>(prompt.size());
  EXPECT_EQ(in[0].item<std::int64_t>(), tok.bos());
  for (std::int64_t t = 0; t <= p; ++t) EXPECT_EQ(lab[t].item<std::int64_t>(), kIgnoreLabel) << "prompt, t = " << t;
  const auto response = tok.encode("Yo.");
  for (std::size_t i = 0; i < response.size(); ++i) {
    EXPECT_EQ(lab[p + 1 + static_cast<std::int64_t>(i)].item<std::int64_t>(), response[i]);
  }
  EXPECT_EQ(lab[p + 4].item<std::int64_t>(), tok.eos()) << "the end of the response is learnt";
  EXPECT_EQ(in[p + 5].item<std::int64_t>(), tok.pad());
  EXPECT_EQ(lab[p + 5].item<std::int64_t>(), kIgnoreLabel) << "padding is not scored";
  // Too long: the prompt loses its start, keeping "### Response:\n" and the response.
  const std::vector<InstructionRecord> long_one = {{std::string(200, 'x'), "", "ok", "c"}};
  auto cut = build_lm_dataset(long_one, tok, 32);
  ASSERT_TRUE(cut);
  const auto ids = cut->data.inputs[0];
  std::vector<std::int64_t> kept(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + 32);
  EXPECT_EQ(tok.decode(kept).substr(32 - 1 - 3 - 14), "### Response:\nok");
  EXPECT_EQ((cut->data.labels[0] != kIgnoreLabel).sum().item<std::int64_t>(), 3) << "'o', 'k', eos";
}

TEST(LmDataset, ALongContextIsCutBeforeTheInstruction) {
  const ByteTokenizer tok;
  const std::vector<InstructionRecord> records = {{"Summarize.", std::string(300, 'c'), "ok", "s"}};
  auto d = build_lm_dataset(records, tok, 64);
  ASSERT_TRUE(d) << d.error().message;
  const auto row = d->data.inputs[0];
  const std::string text = tok.decode(std::vector<std::int64_t>(row.data_ptr<std::int64_t>(), row.data_ptr<std::int64_t>() + 64));
  EXPECT_EQ(text.rfind("### Instruction:\nSummarize.\n\n### Context:\nccc", 0), 0U) << text;
  EXPECT_NE(text.find("c### Response:\nok"), std::string::npos) << "the cue and the response stay: " << text;
}

TEST(RougeL, MatchesValuesComputedByHand) {
  // LCS "the cat on the mat": 5 of 6 words each way.
  auto r = rouge_l("the cat sat on the mat", "the cat is on the mat");
  EXPECT_DOUBLE_EQ(r.precision, 5.0 / 6);
  EXPECT_DOUBLE_EQ(r.recall, 5.0 / 6);
  EXPECT_DOUBLE_EQ(r.f1, 5.0 / 6);
  // Lin (2004)'s examples against "police killed the gunman": ROUGE-L 3/4 and 1/2.
  EXPECT_DOUBLE_EQ(rouge_l("police kill the gunman", "police killed the gunman").f1, 0.75);
  EXPECT_DOUBLE_EQ(rouge_l("the gunman kill police", "police killed the gunman").f1, 0.5);
  // Unequal lengths: LCS 2 ("a c"), P = 2/2, R = 2/4, F1 = 2PR/(P+R) = 2/3.
  r = rouge_l("A, c!", "a b c d");
  EXPECT_DOUBLE_EQ(r.precision, 1.0);
  EXPECT_DOUBLE_EQ(r.recall, 0.5);
  EXPECT_DOUBLE_EQ(r.f1, 2.0 / 3);
  EXPECT_DOUBLE_EQ(rouge_l("", "").f1, 1.0);
  EXPECT_DOUBLE_EQ(rouge_l("words", "").f1, 0.0);
  EXPECT_DOUBLE_EQ(rouge_l("x y", "z").f1, 0.0);
  // Typographic punctuation separates words, as in rouge_score: “don’t” has "don", "t".
  EXPECT_DOUBLE_EQ(rouge_l("\u201cdon\u2019t\u201d", "don't").f1, 1.0);
}

TEST(Generation, AModelThatLearntAnAnswerGivesItGreedily) {
  at::set_num_threads(1);
  const ByteTokenizer tok;
  const std::vector<InstructionRecord> records = {{"Say hi.", "", "hello there", "chat"}};
  auto d = build_lm_dataset(records, tok, 64);  // bos, the 40-byte prompt, 12 to learn
  ASSERT_TRUE(d) << d.error().message;
  ModelSpec spec;
  spec.name = "llama";
  spec.lm.vocab_size = tok.vocab_size();
  spec.lm.hidden_size = 32;
  spec.lm.intermediate_size = 64;
  spec.lm.num_layers = 2;
  spec.lm.num_heads = 4;
  spec.lm.num_kv_heads = 2;
  spec.lm.max_positions = 64;
  auto model = Model::create(spec, c10::Device(c10::kCPU), 5).value();
  PluginRegistry registry({}, c10::Device(c10::kCPU));
  auto adamw = registry.load("adamw", FLOTILLA_KIND_OPTIMIZER);
  ASSERT_TRUE(adamw) << adamw.error().message;
  TrainingConfig config;
  config.local_steps = 200;
  config.batch_size = 1;
  config.learning_rate = 0.01F;
  auto opt = make_optimizer(*adamw, {}, config, *model).value();
  const auto before = evaluate(*model, d->data);
  (void)train_local(*model, d->data, config, *opt);
  const auto after = evaluate(*model, d->data);
  EXPECT_LT(after.loss, 0.01 * before.loss) << "the response (and only it) was learnt by heart";
  EXPECT_DOUBLE_EQ(after.accuracy, 1.0) << "loss " << after.loss;
  auto prompt = tok.encode(prompt_of(records[0]));
  prompt.insert(prompt.begin(), tok.bos());
  const auto answer = tok.decode(generate_greedy(*model, prompt, 20, tok.eos()));
  EXPECT_EQ(answer, "hello there");
  EXPECT_DOUBLE_EQ(rouge_l(answer, records[0].response).f1, 1.0);
}

}  // namespace
}  // namespace flotilla

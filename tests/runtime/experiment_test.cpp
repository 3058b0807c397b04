// Study files, the runner (with a stand-in for the federation), its table, curves and resume,
// and pretraining a base model and ROUGE-L of a model on real (tiny) data.
#include "runtime/experiment/experiment.hpp"
#include "runtime/experiment/pretrain.hpp"
#include "runtime/setup/federation.hpp"
#include "runtime/storage/durable.hpp"
#include "runtime/storage/safetensors.hpp"

#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

namespace flotilla {
namespace {

const std::string kStudy = R"(
[experiment]
name = "toy"
seeds = [1, 2]
methods = ["full", "lora"]
metric = "accuracy"

[run]
rounds = 3
[data]
clients = 2
[model]
name = "mlp"
hidden = 16
[training]
learning-rate = 0.01
[aggregator]
listen = "inproc://toy"
strategy = "fedavg"

[experiment.method.lora]
lora = { rank = 4 }
training = { momentum = 0.9 }
aggregator = { strategy = "fedit" }
)";

std::string error_of(const std::string& text) {
  auto e = parse_experiment(text, "study.toml");
  return e ? std::string("(parsed)") : e.error().message;
}

TEST(Experiment, MethodsMergeTheirTablesOverTheBaseConfig) {
  auto e = parse_experiment(kStudy, "study.toml");
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->name, "toy");
  EXPECT_EQ(e->seeds, (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(e->methods, (std::vector<std::string>{"full", "lora"}));
  auto text = run_config_text(*e, "lora", 2, "/base.safetensors");
  ASSERT_TRUE(text) << text.error().message;
  auto c = parse_config(*text, "lora.toml");
  ASSERT_TRUE(c) << c.error().message << "\n" << *text;
  EXPECT_EQ(c->lora.rank, 4);
  EXPECT_EQ(c->aggregator.strategy, "fedit") << "the method's key replaces the base's";
  EXPECT_EQ(c->aggregator.listen, "inproc://toy") << "the base's other keys of that table stay";
  EXPECT_FLOAT_EQ(static_cast<float>(c->training.momentum), 0.9F);
  EXPECT_FLOAT_EQ(static_cast<float>(c->training.learning_rate), 0.01F);
  EXPECT_EQ(c->run.seed, 2U);
  EXPECT_EQ(c->run.name, "toy-lora-s2");
  EXPECT_EQ(c->model.checkpoint, "/base.safetensors");
  auto full = parse_config(*run_config_text(*e, "full", 1), "full.toml");
  ASSERT_TRUE(full);
  EXPECT_EQ(full->lora.rank, 0) << "a method without a table runs the base config";
  EXPECT_EQ(full->aggregator.strategy, "fedavg");
  EXPECT_TRUE(full->model.checkpoint.empty());
}

TEST(Experiment, MistakesAreNamedBeforeAnythingRuns) {
  EXPECT_NE(error_of("[run]\nrounds = 3\n").find("has no [experiment] table"), std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\nmetrik = \"loss\"\n").find("unknown key 'experiment.metrik'"),
            std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = []\n").find("experiment.methods must list"), std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\", \"a\"]\n").find("lists \"a\" twice"), std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\nmetric = \"f1\"\n").find("experiment.metric must be"),
            std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\nseeds = [1, -2]\n").find("every seed must be an integer >= 0"),
            std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\n[experiment.method.b]\nlora = { rank = 2 }\n")
                .find("[experiment.method.b] is not in experiment.methods"),
            std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\n[experiment.pretrain]\nbatch-size = 4\n")
                .find("experiment.pretrain.steps must be set"),
            std::string::npos);
  // A method's config is checked as a run config, naming the method.
  const auto bad = error_of("[experiment]\nmethods = [\"a\"]\n[experiment.method.a]\nlora = { rank = -1 }\n");
  EXPECT_NE(bad.find("[experiment.method.a]"), std::string::npos) << bad;
  EXPECT_NE(bad.find("lora.rank"), std::string::npos) << bad;
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\n[run]\nrounds = \n").find("study.toml: line 4"), std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a,b\"]\n").find("a name of letters, digits"), std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\nrouge-samples = 4\n").find("experiment.rouge-samples is for text"),
            std::string::npos);
  EXPECT_NE(error_of("[experiment]\nmethods = [\"a\"]\n[checkpoint]\ndir = \"ck\"\n").find("checkpoint.dir is set"),
            std::string::npos);
}

/// A stand-in for a federation: the accuracy climbs to a value set by the method and the seed;
/// "lora" sends a tenth of the bytes.
struct FakeFederation {
  int calls = 0;
  std::string fail_method;
  Expected<RunOutput> operator()(const Config& c, const std::filesystem::path& dir) {
    ++calls;
    EXPECT_TRUE(std::filesystem::exists(dir / "config.toml")) << "the run's config is kept beside it";
    const bool lora = c.lora.rank > 0;
    if ((lora ? "lora" : "full") == fail_method) return Error{Errc::internal, "the aggregator died"};
    RunOutput out;
    for (std::uint64_t r = 0; r <= c.run.rounds; ++r) {
      RoundRecord rec;
      rec.round = r;
      rec.model_version = r;
      const double top = (lora ? 0.70 : 0.80) + 0.02 * static_cast<double>(c.run.seed);
      rec.eval_accuracy = top * static_cast<double>(r) / c.run.rounds;
      rec.eval_loss = 1.0 - *rec.eval_accuracy;
      if (r > 0) {
        rec.updates = 2;
        rec.bytes_received = lora ? 2000 : 20000;
        rec.tasks = 2;
        rec.bytes_sent = lora ? 4000 : 40000;
        rec.optimizer_state_bytes = lora ? 512 : 8192;
      }
      out.rounds.push_back(rec);
    }
    return out;
  }
};

TEST(Experiment, RunsEveryMethodAndSeedThenTabulatesAndResumes) {
  TestDir dir("flotilla-experiment");
  auto e = parse_experiment(kStudy, "study.toml");
  ASSERT_TRUE(e) << e.error().message;
  FakeFederation fake;
  fake.fail_method = "lora";
  std::vector<std::string> seen;
  ExperimentOptions options;
  options.on_progress = [&](const ExperimentProgress& p) {
    if (p.finished != nullptr) seen.push_back(p.method + "-s" + std::to_string(p.seed) + (p.finished->ok ? "" : " failed"));
  };
  auto results = run_experiment(*e, dir.path, std::ref(fake), options);
  ASSERT_TRUE(results) << results.error().message;
  EXPECT_EQ(fake.calls, 4);
  EXPECT_EQ(seen, (std::vector<std::string>{"full-s1", "full-s2", "lora-s1 failed", "lora-s2 failed"}))
      << "a failed run does not stop the others";
  const auto& full1 = (*results)[0];
  ASSERT_TRUE(full1.final_metric);
  EXPECT_DOUBLE_EQ(*full1.final_metric, 0.82);
  EXPECT_DOUBLE_EQ(full1.upload_per_round, 10000);
  EXPECT_DOUBLE_EQ(full1.download_per_round, 20000);
  EXPECT_EQ(full1.optimizer_state_bytes, 8192U);
  EXPECT_EQ(full1.rounds, 3U);
  ASSERT_EQ(full1.curve.size(), 4U);
  EXPECT_DOUBLE_EQ(full1.curve.back().uploaded, 30000) << "cumulative bytes a client sent";
  auto md = read_file(dir.path / "summary.md", 1 << 20);
  ASSERT_TRUE(md);
  // Mean of 0.82 and 0.84, sample std 0.0141.
  EXPECT_NE(md->find("| full | 83.00 ± 1.41 % | 84.00 % | 9.8 KiB | 19.5 KiB | 8.0 KiB |"), std::string::npos) << *md;
  EXPECT_NE(md->find("| lora | – | – |"), std::string::npos) << *md;
  EXPECT_NE(md->find("lora-s1 failed**: the aggregator died"), std::string::npos) << *md;
  auto csv = read_file(dir.path / "runs.csv", 1 << 20);
  ASSERT_TRUE(csv);
  EXPECT_NE(csv->find("full,2,1,0.840000,0.840000,,10000,20000,8192,3,"), std::string::npos) << *csv;
  auto curve = read_file(dir.path / "curves" / "full.dat", 1 << 20);
  ASSERT_TRUE(curve);
  EXPECT_NE(curve->find("\n3 83.000000 1.414214 30000 60000 2\n"), std::string::npos) << *curve;
  EXPECT_FALSE(std::filesystem::exists(dir.path / "curves" / "lora.dat"));
  auto gp = read_file(dir.path / "plots.gp", 1 << 20);
  ASSERT_TRUE(gp);
  EXPECT_NE(gp->find("'curves/full.dat' using 1:2"), std::string::npos);

  // Again: the finished runs are not run again; the failed ones are.
  fake.fail_method.clear();
  fake.calls = 0;
  seen.clear();
  results = run_experiment(*e, dir.path, std::ref(fake), options);
  ASSERT_TRUE(results) << results.error().message;
  EXPECT_EQ(fake.calls, 2) << "only lora's two runs";
  EXPECT_DOUBLE_EQ(*(*results)[0].final_metric, 0.82) << "full-s1 read back from its result.json";
  md = read_file(dir.path / "summary.md", 1 << 20);
  EXPECT_NE(md->find("| lora | 73.00 ± 1.41 % |"), std::string::npos) << *md;

  // Only some methods or seeds: those run (here: none, all are done), the others still count.
  options.only_seeds = {2};
  options.only_methods = {"lora"};
  fake.calls = 0;
  results = run_experiment(*e, dir.path, std::ref(fake), options);
  ASSERT_TRUE(results);
  EXPECT_EQ(fake.calls, 0);
  EXPECT_EQ(results->size(), 4U) << "the table keeps the runs finished earlier";
  md = read_file(dir.path / "summary.md", 1 << 20);
  EXPECT_NE(md->find("| full | 83.00 ± 1.41 %"), std::string::npos) << *md;

  // A changed config (or another base model) is a new run: its old result is not reused.
  auto changed = parse_experiment(kStudy + "[experiment.method.full]\ntraining = { learning-rate = 0.02 }\n", "study.toml");
  ASSERT_TRUE(changed) << changed.error().message;
  options.only_seeds.clear();
  options.only_methods.clear();
  fake.calls = 0;
  results = run_experiment(*changed, dir.path, std::ref(fake), options);
  ASSERT_TRUE(results);
  EXPECT_EQ(fake.calls, 2) << "full's two runs, whose learning rate changed";
  options.base_fingerprint = "another base";
  fake.calls = 0;
  results = run_experiment(*changed, dir.path, std::ref(fake), options);
  EXPECT_EQ(fake.calls, 4) << "every run starts from the new base";
  options.only_methods = {"lorra"};
  auto refused = run_experiment(*e, dir.path, std::ref(fake), options);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("--methods: \"lorra\" is not one of"), std::string::npos);
}

TEST(Experiment, PretrainsOnSomeClassesOnceAndRunsStartFromIt) {
  TestDir dir("flotilla-experiment");
  auto c = parse_config("[model]\nname = \"mlp\"\nhidden = 16\n[run]\nthreads = 1\n", "base.toml");
  ASSERT_TRUE(c) << c.error().message;
  PretrainSpec spec;
  spec.steps = 40;
  spec.batch_size = 32;
  spec.learning_rate = 0.003;
  spec.classes = {0, 1};
  const auto out = dir.path / "base.safetensors";
  std::int64_t last_step = 0;
  auto report = pretrain_base(*c, spec, out, [&](std::int64_t step, std::int64_t steps, double) {
    EXPECT_EQ(steps, 40);
    last_step = step;
  });
  ASSERT_TRUE(report) << report.error().message;
  EXPECT_EQ(last_step, 40);
  EXPECT_FALSE(report->reused);
  EXPECT_EQ(report->examples, 12000) << "Fashion-MNIST's training images of classes 0 and 1";
  EXPECT_LT(report->loss_after, report->loss_before * 0.5) << report->loss_before << " -> " << report->loss_after;
  // The runs' model starts from it.
  auto from_base = *c;
  from_base.model.checkpoint = out.string();
  auto model = build_model(from_base);
  ASSERT_TRUE(model) << model.error().message;
  auto saved = read_safetensors(out);
  ASSERT_TRUE(saved);
  EXPECT_TRUE(at::equal((*model)->state()[0].tensor, saved->tensors[0].tensor));
  // The same pretraining again is the same file; another one is trained again.
  auto again = pretrain_base(*c, spec, out);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->reused);
  spec.steps = 41;
  again = pretrain_base(*c, spec, out);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->reused);
  spec.classes = {42};
  auto none = pretrain_base(*c, spec, out);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message.find("no training example has those labels"), std::string::npos);
}

TEST(Experiment, RougeOfATextModelIsOfItsGreedyAnswers) {
  TestDir dir("flotilla-experiment");
  {
    std::ofstream f(dir.path / "data.jsonl");
    for (int i = 0; i < 20; ++i) {
      f << R"({"instruction": "say hi", "response": "hi there", "category": "greeting"})" << "\n";
    }
  }
  auto c = parse_config("[model]\nname = \"llama\"\nlayers = 1\n[data]\ndataset = \"instructions\"\npath = \"" +
                            (dir.path / "data.jsonl").string() + "\"\nmax-length = 64\nheld-out = 0.2\n",
                        "text.toml");
  ASSERT_TRUE(c) << c.error().message;
  auto model = build_model(*c);
  ASSERT_TRUE(model);
  auto rouge = rouge_of_model(*c, (*model)->state(), 2, 8);
  ASSERT_TRUE(rouge) << rouge.error().message;
  EXPECT_GE(*rouge, 0.0);
  EXPECT_LE(*rouge, 1.0);
  auto image = parse_config("[model]\nname = \"mlp\"\n", "image.toml");
  auto refused = rouge_of_model(*image, {}, 2, 8);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("ROUGE-L is for text runs"), std::string::npos);
}

}  // namespace
}  // namespace flotilla

#include "runtime/setup/config.hpp"
#include "runtime/setup/federation.hpp"
#include "runtime/plugin_host/plugin_aggregation.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <fstream>

using namespace flotilla;

namespace {

Error config_error(const std::string& text) {
  auto c = parse_config(text, "test.toml");
  EXPECT_FALSE(c.has_value()) << "accepted:\n" << text;
  return c.has_value() ? Error{} : c.error();
}

}  // namespace

TEST(Config, EmptyFileGivesDocumentedDefaults) {
  auto c = parse_config("", "empty.toml");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->run.rounds, 10U);
  EXPECT_EQ(c->data.clients, 8);
  EXPECT_EQ(c->data.partition, PartitionKind::dirichlet);
  EXPECT_EQ(c->aggregator.listen, "tcp://127.0.0.1:5555");
  EXPECT_EQ(c->aggregator.round_deadline, Duration(60'000));
  EXPECT_EQ(c->model.name, "cnn");
}

TEST(Config, ReadsEveryExampleConfig) {
  for (const char* name : {"quickstart.toml", "fedit.toml", "ffa-lora.toml", "flexlora.toml",
                           "async_stragglers.toml", "scale_10k.toml", "stragglers_1000.toml"}) {
    auto c = load_config(std::string(FLOTILLA_SOURCE_DIR) + "/examples/" + name);
    EXPECT_TRUE(c.has_value()) << name << ": " << c.error().message;
    if (!c) continue;
    // Its model builds (LoRA targets exist), for the aggregator and for every client.
    auto global = build_model(*c);
    EXPECT_TRUE(global.has_value()) << name << ": " << global.error().message;
    for (int id = 0; id < std::min(c->data.clients, 16); ++id) {
      auto m = build_client_model(*c, static_cast<std::uint32_t>(id));
      EXPECT_TRUE(m.has_value()) << name << " client " << id;
    }
  }
}

TEST(Config, ReadsValuesWithUnits) {
  auto c = parse_config(R"(
[run]
rounds = 3
seed = 7
[aggregator]
round-deadline = "1.5s"
registration-timeout = "2m"
max-message-size = "64MiB"
clients-per-round = 4
min-updates = 2
[training]
local-steps = 25
learning-rate = 0.1
)", "t.toml");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->run.rounds, 3U);
  EXPECT_EQ(c->aggregator.round_deadline, Duration(1500));
  EXPECT_EQ(c->aggregator.registration_timeout, Duration(120'000));
  EXPECT_EQ(c->aggregator.max_message_bytes, 64ULL << 20);
  EXPECT_EQ(c->training.local_steps, 25U);
  EXPECT_FLOAT_EQ(c->training.learning_rate, 0.1F);
}

TEST(Config, UnknownKeyIsNamed) {
  auto e = config_error("[aggregator]\nclients-per-rnd = 4\n");
  EXPECT_EQ(e.code, Errc::invalid_config);
  EXPECT_NE(e.message.find("unknown key 'aggregator.clients-per-rnd'"), std::string::npos) << e.message;
}

TEST(Config, AdminCommandsNeverShareTheClientsEndpoint) {
  auto e = config_error("[aggregator]\nlisten = \"tcp://0.0.0.0:5555\"\nadmin-listen = \"tcp://0.0.0.0:5555\"\n");
  EXPECT_NE(e.message.find("is the clients' endpoint (aggregator.listen)"), std::string::npos) << e.message;
  e = config_error("[aggregator]\nadmin-listen = \"ipc://@flotilla-admin\"\n");
  EXPECT_NE(e.message.find("abstract ipc socket"), std::string::npos) << e.message;
}

TEST(Config, UnknownSectionIsNamed) {
  auto e = config_error("[trainig]\nlocal-steps = 4\n");
  EXPECT_NE(e.message.find("unknown section [trainig]"), std::string::npos) << e.message;
}

TEST(Config, WrongTypeNamesKeyValueAndExpectation) {
  auto e = config_error("[run]\nrounds = \"ten\"\n");
  EXPECT_NE(e.message.find("'run.rounds'"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("\"ten\""), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("expected an integer"), std::string::npos) << e.message;
}

TEST(Config, OutOfRangeValuesAreRefused) {
  EXPECT_NE(config_error("[run]\nrounds = 0\n").message.find("run.rounds"), std::string::npos);
  EXPECT_NE(config_error("[data]\nalpha = -1.0\n").message.find("data.alpha"), std::string::npos);
  EXPECT_NE(config_error("[training]\nlearning-rate = 0\n").message.find("training.learning-rate"),
            std::string::npos);
  EXPECT_NE(config_error("[data]\npartition = \"zipf\"\n").message.find("\"dirichlet\""),
            std::string::npos);
}

TEST(Config, DurationWithoutUnitIsRefused) {
  auto e = config_error("[aggregator]\nround-deadline = \"30\"\n");
  EXPECT_NE(e.message.find("aggregator.round-deadline"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("unit"), std::string::npos) << e.message;
  config_error("[aggregator]\nround-deadline = 30\n");
}

TEST(Config, InconsistentKeysAreRefused) {
  auto e = config_error("[data]\nclients = 4\n[aggregator]\nclients-per-round = 8\n");
  EXPECT_NE(e.message.find("clients-per-round"), std::string::npos) << e.message;
  e = config_error("[aggregator]\nclients-per-round = 2\nmin-updates = 3\n");
  EXPECT_NE(e.message.find("min-updates"), std::string::npos) << e.message;
  e = config_error("[training]\nlocal-steps = 0\nlocal-epochs = 0\n");
  EXPECT_NE(e.message.find("local-steps"), std::string::npos) << e.message;
}

TEST(Config, OptimizerOptionsThatDuplicateTrainingKeysAreRefused) {
  auto ok = parse_config("[training]\noptimizer = \"galore-adamw\"\n[training.options]\nrank = 8\n", "t.toml");
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->optimizer.name, "galore-adamw");
  EXPECT_EQ(ok->optimizer.options.at("rank"), "8");
  for (const std::string key : {"learning-rate", "momentum", "weight-decay"}) {
    auto e = config_error("[training.options]\n" + key + " = 0.1\n");
    EXPECT_NE(e.message.find("training.options." + key + " duplicates training." + key),
              std::string::npos)
        << e.message;
  }
}

TEST(Config, SyntaxErrorHasLineAndColumn) {
  auto e = config_error("[run]\nrounds = = 3\n");
  EXPECT_NE(e.message.find("test.toml:2:"), std::string::npos) << e.message;
}

TEST(Config, UnavailableDeviceIsRefusedAtLoad) {
  auto e = config_error("[run]\ndevice = \"tpu\"\n");
  EXPECT_NE(e.message.find("run.device"), std::string::npos) << e.message;
}

TEST(Config, MissingFileIsNamed) {
  auto c = load_config("/nonexistent/flotilla.toml");
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message.find("/nonexistent/flotilla.toml"), std::string::npos);
}

TEST(Config, ParsesDurationsAndSizes) {
  EXPECT_EQ(*parse_duration("250ms"), Duration(250));
  EXPECT_EQ(*parse_duration("2h"), Duration(7'200'000));
  EXPECT_FALSE(parse_duration("fast").has_value());
  EXPECT_FALSE(parse_duration("10 parsecs").has_value());
  EXPECT_EQ(*parse_bytes("8GiB"), 8ULL << 30);
  EXPECT_EQ(*parse_bytes("1GB"), 1'000'000'000ULL);
  EXPECT_FALSE(parse_bytes("lots").has_value());
}

TEST(Config, ATokenizerMustBeTheCheckpointsOwn) {
  const std::string text = "[data]\ndataset = \"instructions\"\n[model]\nname = \"llama\"\n";
  auto missing = parse_config("[data]\ndataset = \"instructions\"\ntokenizer = \"sentencepiece\"\n[model]\nname = \"llama\"\n", "spm.toml");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("data.tokenizer \"sentencepiece\" needs data.tokenizer-model"), std::string::npos)
      << missing.error().message;
  auto bytes = parse_config(text + "vocab-size = 32000\ncheckpoint = \"tinyllama\"\n", "bytes.toml");
  ASSERT_FALSE(bytes);
  EXPECT_NE(bytes.error().message.find("model.checkpoint has 32000 tokens, but data.tokenizer is \"bytes\""), std::string::npos)
      << bytes.error().message;
  EXPECT_TRUE(parse_config(text + "checkpoint = \"pretrained.safetensors\"\n", "own.toml"))
      << "a byte-level checkpoint of the byte tokenizer's 259 tokens (the study's pretrained base)";
}

TEST(Config, AClientsSliceIsTheSameWhetherTheSetWasLoadedAsBytesOrFloats) {
  // `flotilla client` and `run` load the images as bytes and normalize only the clients'
  // slices; the slice must be the one (and the values those) every other role computes.
  auto c = parse_config("[data]\nclients = 20\n", "slices.toml");
  ASSERT_TRUE(c) << c.error().message;
  auto floats = load_dataset(*c, true);
  auto bytes = load_dataset(*c, true, ImageForm::bytes);
  ASSERT_TRUE(floats && bytes);
  for (const std::uint32_t id : {0U, 13U, 19U}) {
    auto want = client_train_data(*c, *floats, id);
    auto got = client_train_data(*c, *bytes, id);
    ASSERT_TRUE(want && got);
    EXPECT_GT(got->size(), 0);
    EXPECT_EQ(got->inputs.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(got->inputs, want->inputs)) << "client " << id;
    EXPECT_TRUE(torch::equal(got->labels, want->labels)) << "client " << id;
  }
}

TEST(Config, ClientModelsAndTemplatesFollowLoraRanks) {
  auto c = parse_config(R"(
[data]
clients = 3
[model]
name = "mlp"
hidden = 16
[lora]
rank = 4
ranks = [2, 4, 8]
alpha = 32.0
)", "lora.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(client_lora_rank(*c, 0), 2);
  EXPECT_EQ(client_lora_rank(*c, 2), 8);
  auto global = build_model(*c);
  ASSERT_TRUE(global);
  EXPECT_EQ((*global)->spec().lora.rank, 4);
  const auto templates = client_templates(*c);
  for (std::uint32_t id = 0; id < 3; ++id) {
    auto model = build_client_model(*c, id);
    ASSERT_TRUE(model);
    const auto trained = (*model)->trainable_state();
    const auto tmpl = templates(id);
    ASSERT_EQ(tmpl.size(), trained.size());
    for (std::size_t i = 0; i < tmpl.size(); ++i) {
      EXPECT_EQ(tmpl[i].name, trained[i].name);
      EXPECT_EQ(tmpl[i].tensor.sizes(), trained[i].tensor.sizes());
      EXPECT_TRUE(tmpl[i].tensor.is_meta());
    }
    EXPECT_EQ(tmpl[0].tensor.size(0), client_lora_rank(*c, id)) << "fc1.lora_A.weight";
  }
}

TEST(Config, TrainableLayersAreWhatTasksCarryAndNeedNoLora) {
  auto c = parse_config("[model]\nname = \"mlp\"\nhidden = 16\ntrainable = [\"fc2\"]\n", "part.toml");
  ASSERT_TRUE(c) << c.error().message;
  const auto o = schedule_options(*c);
  ASSERT_TRUE(o.client_template) << "tasks carry what clients train: fc2 only";
  std::vector<std::string> names;
  for (const auto& t : o.client_template(0)) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"fc2.weight", "fc2.bias"}));
  EXPECT_FALSE(schedule_options(*parse_config("[model]\nname = \"mlp\"\n", "all.toml")).client_template)
      << "everything is trained: the whole model is sent";
  auto both = parse_config("[model]\ntrainable = [\"fc2\"]\n[lora]\nrank = 4\n", "both.toml");
  ASSERT_FALSE(both);
  EXPECT_NE(both.error().message.find("model.trainable is for training full weights (lora.rank = 0)"), std::string::npos)
      << both.error().message;
}

TEST(Config, LoraAlphaReachesPluginsThroughTheHost) {
  auto c = parse_config("[lora]\nrank = 8\nalpha = 32.0\n", "lora.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_DOUBLE_EQ(plugin_host_facts(*c).lora_alpha, 32.0);
  auto plain = parse_config("[lora]\nalpha = 32.0\n", "plain.toml");
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_DOUBLE_EQ(plugin_host_facts(*plain).lora_alpha, 0.0) << "no adapters, no alpha";
  PluginRegistry registry({}, c10::Device(c10::kCPU));
  auto flex = registry.load("flexlora", FLOTILLA_KIND_AGGREGATOR);
  if (!flex) GTEST_SKIP() << "the built-in plugins are not built";
  EXPECT_TRUE(lora_plugin_options(*c, **flex).empty()) << "an ABI 1.2 plugin gets no injected option";
}

namespace {
AggregationTraits declared(std::uint32_t flags, bool per_client = false) {
  PluginInfo info;
  info.aggregator_flags = flags;
  info.per_client = per_client;
  return traits_of(info);
}
std::string needs_problem(const std::string& toml, const AggregationTraits& t) {
  auto c = parse_config(toml, "run.toml");
  if (!c) return "config: " + c.error().message;
  auto ok = check_method_needs(*c, t, "my-method");
  return ok ? "" : ok.error().message;
}
}  // namespace

TEST(Config, AMethodGetsWhatItDeclaresItNeedsWhateverItsName) {
  const std::string lora = "[lora]\nrank = 8\ntargets = [\"fc1\"]\n";
  // Adapters: refused without them, with the fix.
  auto m = needs_problem("", declared(FLOTILLA_AGG_LORA_ADAPTERS));
  EXPECT_NE(m.find("run.toml: aggregator.strategy \"my-method\" aggregates LoRA adapters, but "
                   "lora.rank is 0"), std::string::npos) << m;
  EXPECT_EQ(needs_problem(lora, declared(FLOTILLA_AGG_LORA_ADAPTERS)), "");
  // A frozen A needs freeze-a; a local B needs A to train.
  m = needs_problem(lora, declared(FLOTILLA_AGG_LORA_FROZEN_A));
  EXPECT_NE(m.find("set lora.freeze-a = true"), std::string::npos) << m;
  EXPECT_EQ(needs_problem(lora + "freeze-a = true\n", declared(FLOTILLA_AGG_LORA_FROZEN_A)), "");
  m = needs_problem(lora + "freeze-a = true\n", declared(FLOTILLA_AGG_LORA_LOCAL_B));
  EXPECT_NE(m.find("set lora.freeze-a = false"), std::string::npos) << m;
  m = needs_problem(lora + "freeze-a = true\n", declared(FLOTILLA_AGG_LORA_TRAINS_A));
  EXPECT_NE(m.find("needs each client's A and B"), std::string::npos) << m;
  m = needs_problem("", declared(FLOTILLA_AGG_LORA_LOCAL_B));
  EXPECT_NE(m.find("lora.rank is 0"), std::string::npos) << "a local B implies adapters: " << m;
  // Per-client ranks need a method that serves them.
  const std::string ranks = "[data]\nclients = 3\n" + lora + "ranks = [4, 8, 16]\n";
  m = needs_problem(ranks, declared(FLOTILLA_AGG_LORA_ADAPTERS));
  EXPECT_NE(m.find("serves every client the same model"), std::string::npos) << m;
  EXPECT_EQ(needs_problem(ranks, declared(FLOTILLA_AGG_LORA_ADAPTERS, /*per_client=*/true)), "");
  // The built-in fold needs full models.
  AggregationTraits full;
  full.full_model = true;
  m = needs_problem(lora, full);
  EXPECT_NE(m.find("averages full models"), std::string::npos) << m;
  // A method that declares nothing takes what it gets.
  EXPECT_EQ(needs_problem(ranks, declared(0, true)), "");
}

TEST(Config, ScheduleKeysAndTheirDerivedDefaults) {
  auto c = parse_config(R"(
[run]
rounds = 5
[data]
clients = 10
[aggregator]
schedule = "buffered"
buffer-size = 4
staleness = "hinge"
max-staleness = 3
)", "t.toml");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  const auto o = schedule_options(*c);
  EXPECT_EQ(o.kind, ScheduleKind::buffered);
  EXPECT_EQ(o.versions, 5U * 10U / 4U) << "the client work of 5 sync rounds, K deltas a version";
  EXPECT_EQ(o.staleness.kind, Staleness::Kind::hinge);
  EXPECT_DOUBLE_EQ(o.staleness.a, 10.0) << "the hinge's own default a";
  EXPECT_EQ(o.max_staleness, 3U);
  c->aggregator.schedule = ScheduleKind::async;
  EXPECT_EQ(schedule_options(*c).versions, 50U);
  EXPECT_EQ(schedule_options(*c).evaluate_every, 10U) << "every max-concurrency (all) versions";
}

TEST(Config, SimulationKeys) {
  auto c = parse_config(R"(
[run]
mode = "simulate"
[data]
partition = "classes"
classes-per-client = 3
examples-per-client = 40
clients = 1000000
[simulation]
tick = "500ms"
example-seconds = 0.02
progress = "1m"
[[fleet.profile]]
device-trace = "devices.csv"
)", "sim.toml");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->run.mode, RunMode::simulate);
  EXPECT_EQ(c->data.partition, PartitionKind::classes);
  EXPECT_EQ(c->data.classes_per_client, 3);
  EXPECT_EQ(c->data.examples_per_client, 40);
  EXPECT_EQ(c->data.clients, 1'000'000);
  EXPECT_EQ(c->simulation.tick, Duration(500));
  EXPECT_DOUBLE_EQ(c->simulation.example_seconds, 0.02);
  EXPECT_EQ(c->simulation.progress, Duration(60'000));
  EXPECT_EQ(c->fleet.at(0).device_trace, "devices.csv");
  EXPECT_EQ(parse_config("", "e.toml")->run.mode, RunMode::real);
  EXPECT_NE(config_error("[run]\nmode = \"virtual\"\n").message.find("run.mode"), std::string::npos);
  EXPECT_NE(config_error("[run]\nmode = \"simulate\"\n[simulation]\ntick = \"0s\"\n").message.find(
                "simulation.tick"),
            std::string::npos);
  EXPECT_NE(config_error("[data]\nclients = 20000000\n").message.find("data.clients"), std::string::npos);
  EXPECT_NE(config_error("[run]\nmode = \"simulate\"\nthreads = 2\n[lora]\nrank = 4\ndropout = 0.1\n")
                .message.find("run.threads = 1"),
            std::string::npos);
}

TEST(Config, BadScheduleAndFleetValuesNameTheKey) {
  EXPECT_NE(config_error("[aggregator]\nschedule = \"fedasync\"\n").message.find("aggregator.schedule"),
            std::string::npos);
  EXPECT_NE(config_error("[aggregator]\nalpha = 1.5\n").message.find("aggregator.alpha"),
            std::string::npos);
  EXPECT_NE(config_error("[aggregator]\nover-selection = 0.5\n").message.find("clients-per-round"),
            std::string::npos);
  EXPECT_NE(config_error("[[fleet.profile]]\ncompute-speeed = 2\n").message.find("compute-speeed"),
            std::string::npos);
  EXPECT_NE(config_error("[[fleet.profile]]\ndropout = 1.0\n").message.find("dropout"),
            std::string::npos);
  EXPECT_NE(config_error("[data]\nclients = 4\n[[fleet.profile]]\nclients = [7]\n").message.find(
                "names client 7"),
            std::string::npos);
  EXPECT_NE(config_error("[[fleet.profile]]\ntask-time = \"trace\"\n").message.find("task-trace"),
            std::string::npos);
}

TEST(Config, TheLanguageModelTrainsOnInstructionsAndTheImageModelsOnImages) {
  auto c = parse_config("[model]\nname = \"llama\"\nhidden-size = 32\nlayers = 1\n", "lm.toml");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("do not go together"), std::string::npos) << c.error().message;
  c = parse_config("[data]\ndataset = \"instructions\"\n", "lm.toml");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("do not go together"), std::string::npos) << c.error().message;
  const std::string lm = "[data]\ndataset = \"instructions\"\npath = \"x.jsonl\"\nmax-length = 32\n"
                         "[model]\nname = \"llama\"\nvocab-size = 259\nmax-positions = 64\n";
  c = parse_config(lm, "lm.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->data.max_length, 32);
  auto small = parse_config(lm + "hidden-size = 64\n[lora]\n", "lm.toml");
  ASSERT_TRUE(small) << small.error().message;
  auto bad = parse_config("[data]\ndataset = \"instructions\"\n[model]\nname = \"llama\"\nvocab-size = 100\n", "lm.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("has 259 tokens"), std::string::npos) << bad.error().message;
  bad = parse_config("[data]\ndataset = \"instructions\"\nmax-length = 512\n[model]\nname = \"llama\"\nvocab-size = 300\n", "lm.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("longer than model.max-positions"), std::string::npos) << bad.error().message;
  bad = parse_config("[model]\nname = \"llama\"\nconfig-json = \"/nonexistent/config.json\"\n", "lm.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("model.config-json"), std::string::npos) << bad.error().message;
}

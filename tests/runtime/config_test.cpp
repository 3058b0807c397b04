#include "runtime/config.hpp"

#include <gtest/gtest.h>

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
  for (const char* name : {"quickstart.toml"}) {
    auto c = load_config(std::string(FLOTILLA_SOURCE_DIR) + "/examples/" + name);
    EXPECT_TRUE(c.has_value()) << name << ": " << c.error().message;
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

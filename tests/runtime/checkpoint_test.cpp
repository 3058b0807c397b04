#include "runtime/server/checkpoint.hpp"

#include "runtime/plugin_host/plugin_aggregation.hpp"
#include "runtime/storage/safetensors.hpp"

#include "schedule_testing.hpp"

#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

using namespace flotilla;
using namespace std::chrono_literals;
using flotilla::testing::Fleet;
using flotilla::testing::sent;
namespace fs = std::filesystem;

namespace {

TensorList model_of(float value) { return {{"w", torch::full({3}, value)}, {"b", torch::full({2}, value)}}; }

/// What client `i` sends: a fixed change (buffered: the delta; else the weights it reached).
TensorList change(int i, const TensorList& base, bool delta) {
  TensorList out;
  for (const auto& t : base) {
    const auto d = torch::full_like(t.tensor, 0.25F * static_cast<float>(i + 1)) *
                   (t.name == "b" ? -1 : 1);
    out.push_back({t.name, delta ? d : t.tensor + d});
  }
  return out;
}

struct TempDir : TestDir {
  TempDir() : TestDir("flotilla-checkpoint", /*create=*/false) {}
};

ScheduleOptions options(ScheduleKind kind, std::uint32_t clients) {
  ScheduleOptions o;
  o.kind = kind;
  o.min_clients = clients;
  o.rounds = 5;
  o.versions = 50;
  o.registration_timeout = 60s;
  o.peer_timeout = 1h;
  o.task_deadline = 30s;
  o.round_deadline = 30s;
  o.seed = 11;
  o.staleness.kind = Staleness::Kind::polynomial;
  o.alpha = 0.5;
  o.buffer_size = 4;
  return o;
}

/// Keeps checkpoints of the schedule it prepares in `dir` (resuming from it when `resume`).
struct Checkpointed {
  CheckpointOptions opts;
  std::shared_ptr<CheckpointStore> store;
  std::optional<Resumption> resumed;

  Checkpointed(const fs::path& dir, std::uint64_t every) { opts.dir = dir; opts.every = every; }

  std::function<void(Schedule&)> fresh() {
    return [this](Schedule& s) {
      store = CheckpointStore::open(opts).value();
      ASSERT_TRUE(keep_checkpoints(s, store, false));
    };
  }
  std::function<void(Schedule&)> resume() {
    return [this](Schedule& s) {
      auto r = load_checkpoint(opts.dir, 1 << 20);
      ASSERT_TRUE(r) << r.error().message;
      resumed = std::move(r).value();
      auto ok = s.resume(*resumed);
      ASSERT_TRUE(ok) << ok.error().message;
      store = CheckpointStore::open(opts, &*resumed).value();
      ASSERT_TRUE(keep_checkpoints(s, store, true));
    };
  }
};

/// Every client holding a task now answers it (at most `limit` of them), in client order.
void answer_all(Fleet& f, bool delta, int limit = 1 << 30) {
  std::vector<int> holders;
  for (int i = 0; i < 64; ++i) {
    if (f.tasks.contains(Fleet::peer(i))) holders.push_back(i);
  }
  for (const int i : holders) {
    if (limit-- <= 0) break;
    const auto p = Fleet::peer(i);
    f.answer(p, change(i, f.tasks.at(p).tensors, delta));
  }
}

void expect_same_model(const TensorList& a, const TensorList& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_TRUE(torch::equal(a[i].tensor, b[i].tensor)) << a[i].name << ": " << a[i].tensor << " vs " << b[i].tensor;
  }
}

}  // namespace

TEST(Checkpoint, BufferedKilledMidBufferLosesNoAcceptedUpdate) {
  const TempDir dir;
  const auto o = options(ScheduleKind::buffered, 4);
  // The uninterrupted run: two buffers of four deltas.
  Fleet reference(o, model_of(1), 4);
  answer_all(reference, true);
  answer_all(reference, true);
  ASSERT_EQ(reference.schedule->model_version(), 2u);

  {
    Checkpointed c(dir.path, 1);
    Fleet killed(o, model_of(1), 4, nullptr, c.fresh());
    answer_all(killed, true);                 // version 1
    answer_all(killed, true, 2);              // two deltas in the buffer, then kill -9
    ASSERT_EQ(killed.schedule->model_version(), 1u);
    ASSERT_EQ(killed.schedule->counters().updates_accepted, 6u);
  }  // destroyed without a word: what a crash leaves is on the disk
  EXPECT_TRUE(fs::exists(dir.path / "checkpoint-000000000001" / "model.safetensors"));

  Checkpointed c(dir.path, 1);
  Fleet resumed(o, model_of(1), 0, nullptr, c.resume());
  EXPECT_EQ(c.resumed->journal.size(), 2u) << c.resumed->report;
  EXPECT_EQ(resumed.schedule->model_version(), 1u);
  EXPECT_EQ(resumed.schedule->counters().updates_accepted, 6u);
  EXPECT_EQ(resumed.schedule->counters().rounds_completed, 1u);
  EXPECT_EQ(resumed.schedule->aggregation().accepted(), 2u);  // the buffer, as it was
  // The clients come back (a heartbeat brings a peer of the checkpoint back); the two that had
  // not answered train again (the same change) and complete the buffer.
  for (int i = 0; i < 4; ++i) resumed.take(resumed.schedule->on_heartbeat(Fleet::peer(i), Heartbeat{}));
  ASSERT_TRUE(resumed.tasks.contains("client-2") && resumed.tasks.contains("client-3"));
  resumed.answer("client-2", change(2, resumed.tasks.at("client-2").tensors, true));
  resumed.answer("client-3", change(3, resumed.tasks.at("client-3").tensors, true));
  ASSERT_EQ(resumed.schedule->model_version(), 2u);
  EXPECT_EQ(resumed.schedule->counters().updates_accepted, 8u);
  expect_same_model(resumed.schedule->model(), reference.schedule->model());
}

TEST(Checkpoint, AsyncReplaysTheJournalAfterTheLastCheckpointIntoTheSameVersions) {
  const TempDir dir;
  const auto o = options(ScheduleKind::async, 3);
  TensorList at_kill;
  ScheduleCounters counters_at_kill;
  {
    Checkpointed c(dir.path, 5);  // checkpoints at versions 0 and 5 only
    Fleet killed(o, model_of(1), 3, nullptr, c.fresh());
    for (int n = 0; n < 3; ++n) answer_all(killed, false);  // 9 versions, stale ones among them
    ASSERT_EQ(killed.schedule->model_version(), 9u);
    at_kill = killed.schedule->model();
    counters_at_kill = killed.schedule->counters();
  }
  Checkpointed c(dir.path, 5);
  Fleet resumed(options(ScheduleKind::async, 3), model_of(1), 0, nullptr, c.resume());
  EXPECT_EQ(c.resumed->snapshot.step, 5u);
  EXPECT_EQ(c.resumed->journal.size(), 4u);
  EXPECT_EQ(resumed.schedule->model_version(), 9u);
  expect_same_model(resumed.schedule->model(), at_kill);
  const auto& k = resumed.schedule->counters();
  EXPECT_EQ(k.updates_accepted, counters_at_kill.updates_accepted);
  EXPECT_EQ(k.rounds_completed, counters_at_kill.rounds_completed);
  // Resumed again later, the journal goes on from where the first resumption left it.
  resumed.take(resumed.schedule->on_hello("client-0", Hello{Role::client, 0, {}, 100}));
  resumed.take(resumed.schedule->on_hello("client-1", Hello{Role::client, 1, {}, 100}));
  resumed.take(resumed.schedule->on_hello("client-2", Hello{Role::client, 2, {}, 100}));
  answer_all(resumed, false, 1);  // version 10: a checkpoint
  answer_all(resumed, false, 1);  // version 11: journaled after it
  const auto model = resumed.schedule->model();
  Checkpointed again(dir.path, 5);
  Fleet twice(options(ScheduleKind::async, 3), model_of(1), 0, nullptr, again.resume());
  EXPECT_EQ(again.resumed->snapshot.step, 10u);
  EXPECT_EQ(twice.schedule->model_version(), 11u);
  expect_same_model(twice.schedule->model(), model);
}

TEST(Checkpoint, SyncResumedBetweenRoundsDrawsTheSameClientsAndEndsWithTheSameModel) {
  const TempDir dir;
  auto o = options(ScheduleKind::sync, 5);
  o.clients_per_round = 2;
  o.rounds = 4;
  const auto play = [](Fleet& f, int rounds) {
    std::vector<std::set<std::string>> drawn;
    for (int r = 0; r < rounds; ++r) {
      std::set<std::string> peers;
      for (const auto& [p, t] : f.tasks) peers.insert(p);
      drawn.push_back(peers);
      answer_all(f, false);
    }
    return drawn;
  };
  Fleet reference(o, model_of(1), 5);
  const auto drawn = play(reference, 4);
  ASSERT_TRUE(reference.schedule->done());

  {
    Checkpointed c(dir.path, 1);
    Fleet killed(o, model_of(1), 5, nullptr, c.fresh());
    (void)play(killed, 2);
    answer_all(killed, false, 1);  // round 3 half answered, then kill -9
    ASSERT_EQ(killed.schedule->round(), 3u);
  }
  Checkpointed c(dir.path, 1);
  Fleet resumed(o, model_of(1), 5, nullptr, c.resume());
  EXPECT_EQ(c.resumed->snapshot.step, 2u);
  EXPECT_EQ(resumed.schedule->round(), 3u);  // round 3 again, with the clients it drew before
  const auto after = play(resumed, 2);
  EXPECT_EQ(after[0], drawn[2]);
  EXPECT_EQ(after[1], drawn[3]);
  ASSERT_TRUE(resumed.schedule->done());
  expect_same_model(resumed.schedule->model(), reference.schedule->model());
  EXPECT_EQ(resumed.schedule->counters().rounds_completed, 4u);
  // The last round was checkpointed: resuming a finished run ends it at once.
  Checkpointed late(dir.path, 1);
  Fleet over(o, model_of(1), 0, nullptr, late.resume());
  EXPECT_TRUE(over.schedule->done());
}

TEST(Checkpoint, AServerOptimizersMomentsSurviveTheRestart) {
  const std::string plugin = std::string(FLOTILLA_BINARY_DIR) + "/plugins/flotilla-fedadam.so";
  auto library = PluginLibrary::open(plugin, c10::Device(c10::kCPU));
  ASSERT_TRUE(library) << library.error().message;
  const auto method = [&](const TensorList& global) {
    return std::unique_ptr<Aggregation>(PluginAggregation::create(*library, {}, global).value());
  };
  const TempDir dir;
  auto o = options(ScheduleKind::sync, 2);
  o.rounds = 3;
  Fleet reference(o, model_of(1), 2, method(model_of(1)));
  for (int r = 0; r < 3; ++r) answer_all(reference, false);
  {
    Checkpointed c(dir.path, 1);
    Fleet killed(o, model_of(1), 2, method(model_of(1)), c.fresh());
    answer_all(killed, false);
    answer_all(killed, false);
  }
  auto saved = load_checkpoint(dir.path, 1 << 20);
  ASSERT_TRUE(saved);
  EXPECT_FALSE(saved->snapshot.method_state.empty());  // FedAdam's moments
  Checkpointed c(dir.path, 1);
  // As the aggregator does: the method starts from the checkpoint's model.
  Fleet resumed(o, saved->snapshot.model, 2, method(saved->snapshot.model), c.resume());
  answer_all(resumed, false);
  ASSERT_TRUE(resumed.schedule->done());
  expect_same_model(resumed.schedule->model(), reference.schedule->model());
}

TEST(Checkpoint, ATornJournalTailIsCutAndAnUnreadableCheckpointFallsBackToTheOneBefore) {
  const TempDir dir;
  const auto o = options(ScheduleKind::async, 2);
  TensorList at_kill;
  {
    Checkpointed c(dir.path, 2);
    Fleet killed(o, model_of(1), 2, nullptr, c.fresh());
    for (int n = 0; n < 3; ++n) answer_all(killed, false);  // 6 versions: checkpoints 0, 2, 4, 6
    answer_all(killed, false, 1);                            // version 7, journaled
    at_kill = killed.schedule->model();
  }
  // A crash mid-append leaves half a record; the newest checkpoint's model file is damaged.
  {
    std::ofstream torn(dir.path / "journal-000000000006.log", std::ios::app | std::ios::binary);
    torn << "FLRC\x01\x02";
  }
  fs::resize_file(dir.path / "checkpoint-000000000006" / "model.safetensors", 20);
  Checkpointed c(dir.path, 2);
  Fleet resumed(o, model_of(1), 0, nullptr, c.resume());
  EXPECT_EQ(c.resumed->snapshot.step, 4u);
  ASSERT_EQ(c.resumed->warnings.size(), 2u);
  EXPECT_NE(c.resumed->warnings[0].find("checkpoint-000000000006"), std::string::npos);
  EXPECT_NE(c.resumed->warnings[1].find("torn"), std::string::npos) << c.resumed->warnings[1];
  EXPECT_EQ(resumed.schedule->model_version(), 7u);  // 4, then the journals after 4 and 6
  expect_same_model(resumed.schedule->model(), at_kill);
  // Appends continue after the cut: read again, nothing is torn.
  resumed.take(resumed.schedule->on_hello("client-0", Hello{Role::client, 0, {}, 100}));
  resumed.take(resumed.schedule->on_hello("client-1", Hello{Role::client, 1, {}, 100}));
  answer_all(resumed, false, 1);  // version 8: a checkpoint again
  answer_all(resumed, false, 1);  // version 9
  auto again = load_checkpoint(dir.path, 1 << 20);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->snapshot.step, 8u);
  EXPECT_EQ(again->journal.size(), 1u);
  EXPECT_TRUE(again->warnings.empty()) << again->warnings.front();
}

TEST(Checkpoint, OnlyTheLatestAreKept) {
  const TempDir dir;
  Checkpointed c(dir.path, 1);
  c.opts.keep = 2;
  Fleet f(options(ScheduleKind::async, 2), model_of(1), 2, nullptr, c.fresh());
  for (int n = 0; n < 3; ++n) answer_all(f, false);
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"checkpoint-000000000005", "checkpoint-000000000006",
                                          "journal-000000000005.log", "journal-000000000006.log"}));
  EXPECT_EQ(fs::status(dir.path).permissions() & fs::perms::all, fs::perms::owner_all);
}

TEST(Checkpoint, ACheckpointOfAnotherScheduleOrModelIsRefusedNamingWhy) {
  const TempDir dir;
  {
    Checkpointed c(dir.path, 1);
    Fleet f(options(ScheduleKind::async, 2), model_of(1), 2, nullptr, c.fresh());
  }
  auto r = load_checkpoint(dir.path, 1 << 20);
  ASSERT_TRUE(r);
  ManualClock clock;
  SyncRounds sync(options(ScheduleKind::sync, 2), model_of(1), std::make_unique<FedAvg>(model_of(1)),
                  clock, "run");
  auto wrong_kind = sync.resume(*r);
  ASSERT_FALSE(wrong_kind);
  EXPECT_NE(wrong_kind.error().message.find("\"async\""), std::string::npos) << wrong_kind.error().message;
  const TensorList other = {{"w", torch::zeros({4})}, {"b", torch::zeros({2})}};
  AsyncSchedule async(options(ScheduleKind::async, 2), other, std::make_unique<FedAvg>(other), clock, "run");
  auto wrong_model = async.resume(*r);
  ASSERT_FALSE(wrong_model);
  EXPECT_NE(wrong_model.error().message.find("'w'"), std::string::npos) << wrong_model.error().message;
  auto none = load_checkpoint(dir.path / "nope", 1 << 20);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message.find("no such checkpoint directory"), std::string::npos);
  fs::create_directories(dir.path / "empty");
  auto empty = load_checkpoint(dir.path / "empty", 1 << 20);
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("no readable checkpoint"), std::string::npos);
}

TEST(Checkpoint, AJournalEntryRoundTripsWithAnyPeerId) {
  JournalEntry e;
  e.accepted = UpdateAccepted{std::string("\x00\xffpeer", 6), 7, 12, 3, 2, 0.1 + 0.2, 4096, 1.5, 0.25, true, false};
  e.tensors = model_of(2);
  auto back = decode_entry(encode_entry(e), "entry");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->accepted.peer, e.accepted.peer);
  EXPECT_EQ(back->accepted.client_id, 7u);
  EXPECT_EQ(back->accepted.round, 12u);
  EXPECT_EQ(back->accepted.weight, 0.1 + 0.2);  // exactly: the shortest form that reads back
  EXPECT_TRUE(back->accepted.weight_capped);
  expect_same_model(back->tensors, e.tensors);
}

TEST(Checkpoint, ANewRunIntoADirectoryOfCheckpointsIsRefusedPointingToResume) {
  const TempDir dir;
  {
    Checkpointed c(dir.path, 1);
    Fleet f(options(ScheduleKind::async, 2), model_of(1), 2, nullptr, c.fresh());
    answer_all(f, false);
  }
  CheckpointOptions o;
  o.dir = dir.path;
  auto again = CheckpointStore::open(o);
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("--resume " + dir.path.string()), std::string::npos)
      << again.error().message;
  // What the first run left is untouched.
  EXPECT_TRUE(load_checkpoint(dir.path, 1 << 20));
}

TEST(Checkpoint, ARunStoppedEarlyIsCheckpointedAsOverAndEndsAtOnceWhenResumed) {
  const TempDir dir;
  auto o = options(ScheduleKind::sync, 2);
  o.rounds = 5;
  o.max_time = 10s;
  {
    Checkpointed c(dir.path, 1);
    Fleet f(o, model_of(1), 2, nullptr, c.fresh());
    answer_all(f, false);
    f.clock.advance(11s);
    answer_all(f, false);  // round 2 closes past run.max-time: the run is over
    ASSERT_TRUE(f.schedule->done());
    ASSERT_EQ(f.schedule->round(), 2u);
    checkpoint_at_end(*c.store, *f.schedule);  // as the aggregator does when it stops
  }
  Checkpointed c(dir.path, 1);
  Fleet resumed(o, model_of(1), 2, nullptr, c.resume());
  EXPECT_TRUE(resumed.schedule->done());
  EXPECT_TRUE(resumed.tasks.empty());
}

namespace {

/// A method whose clients train "w" only, and which also writes "b" (as FedEx-LoRA writes into
/// base weights): each version is the clients' mean w, and b + 1.
class WritesB final : public Aggregation {
 public:
  explicit WritesB(TensorList global) : global_(std::move(global)) {}
  Expected<void> check(const WeightedUpdate&) const override { return {}; }
  Expected<void> accept(const WeightedUpdate& u) override {
    sum_ = sum_.defined() ? sum_ + u.tensors->at(0).tensor : u.tensors->at(0).tensor.clone();
    ++accepted_;
    return {};
  }
  Expected<void> accept_batch(std::span<const WeightedUpdate> us) override {
    for (const auto& u : us) (void)accept(u);
    return {};
  }
  std::size_t accepted() const override { return accepted_; }
  TensorList finalize() override {
    TensorList next = global_;
    next[0].tensor = sum_ / static_cast<double>(accepted_);
    next[1].tensor = global_[1].tensor + 1;
    global_ = next;
    discard();
    return next;
  }
  void discard() override {
    sum_ = at::Tensor();
    accepted_ = 0;
  }
  void set_global(const TensorList& g) override { global_ = g; }
  std::string describe() const override { return "writes-b"; }

 private:
  TensorList global_;
  at::Tensor sum_;
  std::size_t accepted_ = 0;
};

}  // namespace

TEST(Checkpoint, AResumedRunStillSendsWhatChangedBeforeTheCrash) {
  // Clients train w; the method also wrote b. After a restart, tasks must still carry b: the
  // clients (a restarted one holds the initial b) cannot know it changed.
  const TempDir dir;
  auto o = options(ScheduleKind::sync, 2);
  o.rounds = 3;
  o.client_template = [](std::uint32_t) {
    return TensorList{{"w", torch::empty({3}, torch::TensorOptions().device(torch::kMeta))}};
  };
  auto names = [](const Task& t) {
    std::vector<std::string> n;
    for (const auto& x : t.tensors) n.push_back(x.name);
    return n;
  };
  const auto only_w = [](Fleet& f) {
    for (int i = 0; i < 2; ++i) {
      const auto p = Fleet::peer(i);
      f.answer(p, {{"w", f.tasks.at(p).tensors.at(0).tensor + 1}});
    }
  };
  {
    Checkpointed c(dir.path, 1);
    Fleet first(o, model_of(1), 2, std::make_unique<WritesB>(model_of(1)), c.fresh());
    EXPECT_EQ(names(first.tasks.at(Fleet::peer(0))), std::vector<std::string>{"w"}) << "b has not changed yet";
    only_w(first);
    EXPECT_EQ(names(first.tasks.at(Fleet::peer(0))), (std::vector<std::string>{"w", "b"}));
  }
  // The aggregator restarts from the checkpoint after round 1; its schedule is built from the
  // config's initial model, as `flotilla aggregator --resume` does.
  Checkpointed c(dir.path, 1);
  Fleet resumed(o, model_of(1), 2, std::make_unique<WritesB>(model_of(1)), c.resume());
  const auto& task = resumed.tasks.at(Fleet::peer(0));
  ASSERT_EQ(names(task), (std::vector<std::string>{"w", "b"})) << "b changed before the crash";
  EXPECT_TRUE(torch::equal(task.tensors[1].tensor, torch::full({2}, 2.0F)));
}

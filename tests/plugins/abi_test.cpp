// The host against deliberately broken plugins: each is refused or contained with a message
// naming the problem, and the host keeps working (a good plugin loads right after).
#include "plugin_testing.hpp"

#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>

using namespace flotilla;
using namespace flotilla::testing;
using ::testing::HasSubstr;

namespace {

std::string open_error(const std::string& path) {
  auto lib = PluginLibrary::open(path, c10::Device(c10::kCPU));
  EXPECT_FALSE(lib) << path << " loaded";
  return lib ? std::string() : lib.error().message;
}

TensorList small_model() { return {{"w", at::ones({2, 3})}, {"b", at::zeros({3})}}; }

void expect_good_plugin_still_loads() {
  auto agg = aggregation("fedavg", small_model());
  auto out = aggregate(*agg, {small_model()}, {1.0});
  EXPECT_TRUE(at::allclose(find(out, "w"), at::ones({2, 3})));
}

TEST(PluginAbi, LoadedCodeIsAPrivateSealedCopyNotAFileInTheTempDirectory) {
  // Another local user must not be able to plant or swap the code the aggregator runs: no
  // mapping of a plugin may come from a named file in the shared temp directory.
  auto lib = PluginLibrary::open(fixture("scaled-mean-v1"), c10::Device(c10::kCPU));
  ASSERT_TRUE(lib) << lib.error().message;
  const std::string tmp = std::filesystem::temp_directory_path().string();
  std::ifstream maps("/proc/self/maps");
  bool private_copy = false;
  for (std::string line; std::getline(maps, line);) {
    EXPECT_EQ(std::string::npos, line.find(tmp + "/flotilla-plugin-")) << line;
    if (line.find("/memfd:flotilla-plugin-") != std::string::npos) private_copy = true;
  }
  EXPECT_TRUE(private_copy) << "the plugin is mapped from a sealed in-memory copy";
}

TEST(PluginAbi, MissingFileIsRefused) {
  EXPECT_THAT(open_error("/nonexistent/flotilla-nothing.so"), HasSubstr("no such file"));
}

TEST(PluginAbi, NotALibraryIsRefused) {
  const auto path = std::filesystem::temp_directory_path() / "flotilla-not-a-library.so";
  std::ofstream(path) << "not an ELF file";
  EXPECT_THAT(open_error(path), HasSubstr("not a loadable library"));
  std::filesystem::remove(path);
  expect_good_plugin_still_loads();
}

TEST(PluginAbi, MissingEntryPointIsRefused) {
  EXPECT_THAT(open_error(fixture("no-entry")), HasSubstr("no entry point flotilla_plugin_v1"));
  expect_good_plugin_still_loads();
}

TEST(PluginAbi, AnotherAbiMajorIsRefusedByEntryPoint) {
  EXPECT_THAT(open_error(fixture("entry-v2")), HasSubstr("built for plugin ABI 2"));
}

TEST(PluginAbi, WrongAbiVersionInDescriptionIsRefused) {
  const auto msg = open_error(fixture("wrong-abi"));
  EXPECT_THAT(msg, HasSubstr("built for plugin ABI 99.0"));
  EXPECT_THAT(msg, HasSubstr("this host speaks ABI " + std::to_string(FLOTILLA_PLUGIN_ABI_MAJOR) + "." +
                                  std::to_string(FLOTILLA_PLUGIN_ABI_MINOR)));
  expect_good_plugin_still_loads();
}

TEST(PluginAbi, FailingInitIsRefusedWithItsMessage) {
  const auto msg = open_error(fixture("failing-init"));
  EXPECT_THAT(msg, HasSubstr("initialisation failed"));
  EXPECT_THAT(msg, HasSubstr("licence file /etc/broken.lic not found"));
  expect_good_plugin_still_loads();
}

TEST(PluginAbi, ThrowingInsideACallIsContained) {
  auto lib = PluginLibrary::open(fixture("throwing"), c10::Device(c10::kCPU));
  ASSERT_TRUE(lib) << lib.error().message;
  auto agg = PluginAggregation::create(*lib, {}, small_model());
  ASSERT_TRUE(agg) << agg.error().message;
  const auto update = small_model();
  auto ok = (*agg)->accept(WeightedUpdate{&update, 1.0, 0, 0});
  ASSERT_FALSE(ok);
  EXPECT_THAT(ok.error().message, HasSubstr("plugin 'broken' accept failed"));
  EXPECT_THAT(ok.error().message, HasSubstr("threw an exception: bug in accept"));
  EXPECT_EQ((*agg)->accepted(), 0U);
  expect_good_plugin_still_loads();
}

TEST(PluginAbi, NameCollisionIsRefused) {
  auto registry = builtin_registry();
  ASSERT_TRUE(registry.load("fedavg", FLOTILLA_KIND_AGGREGATOR));
  auto impostor = registry.load_file(fixture("fedavg-impostor"), FLOTILLA_KIND_AGGREGATOR);
  ASSERT_FALSE(impostor);
  EXPECT_THAT(impostor.error().message, HasSubstr("is named 'fedavg', which is already loaded from"));
}

TEST(PluginAbi, WrongKindIsRefused) {
  auto registry = builtin_registry();
  auto lib = registry.load("fedavg", FLOTILLA_KIND_OPTIMIZER);
  ASSERT_FALSE(lib);
  EXPECT_THAT(lib.error().message, HasSubstr("is an aggregator plugin, expected an optimizer plugin"));
}

TEST(PluginAbi, UnknownNameListsTheSearchPath) {
  auto registry = builtin_registry();
  auto lib = registry.load("no-such-method", FLOTILLA_KIND_AGGREGATOR);
  ASSERT_FALSE(lib);
  EXPECT_THAT(lib.error().message, HasSubstr("plugin 'no-such-method' not found"));
  EXPECT_THAT(lib.error().message, HasSubstr(FLOTILLA_PLUGIN_DIR));
}

TEST(PluginAbi, OptionsAreCheckedAgainstTheSpecs) {
  auto lib = PluginLibrary::open(fixture("scaled-mean-v1"), c10::Device(c10::kCPU));
  ASSERT_TRUE(lib) << lib.error().message;
  auto unknown = PluginAggregation::create(*lib, {{"unsued", "1"}}, small_model());
  ASSERT_FALSE(unknown);
  EXPECT_THAT(unknown.error().message, HasSubstr("unknown option 'unsued'"));
  EXPECT_THAT(unknown.error().message, HasSubstr("its options: unused"));
  auto typed = PluginAggregation::create(*lib, {{"unused", "lots"}}, small_model());
  ASSERT_FALSE(typed);
  EXPECT_THAT(typed.error().message, HasSubstr("is \"lots\", expected a number"));
  EXPECT_TRUE(PluginAggregation::create(*lib, {{"unused", "0.5"}}, small_model()));
}

TEST(PluginAbi, RejectedUpdateNamesTheProblemAndChangesNothing) {
  auto agg = aggregation("fedavg", small_model());
  TensorList bad = {{"w", at::ones({3, 2})}, {"b", at::zeros({3})}};
  auto ok = agg->accept(WeightedUpdate{&bad, 1.0, 0, 0});
  ASSERT_FALSE(ok);
  EXPECT_EQ(ok.error().code, Errc::rejected);
  EXPECT_THAT(ok.error().message, HasSubstr("tensor 'w': expected Float [2, 3], got Float [3, 2]"));
  EXPECT_EQ(agg->accepted(), 0U);
}

TEST(PluginAbi, ScanListsGoodAndBrokenPlugins) {
  const auto found = scan_plugins(FLOTILLA_FIXTURE_DIR);
  bool saw_good = false, saw_broken = false;
  for (const auto& f : found) {
    if (f.path.filename() == "scaled-mean-v2.so") {
      ASSERT_TRUE(f.info) << f.info.error().message;
      EXPECT_EQ(f.info->name, "scaled-mean");
      EXPECT_EQ(f.info->version, "2.0.0");
      saw_good = true;
    }
    if (f.path.filename() == "wrong-abi.so") {
      EXPECT_FALSE(f.info);
      saw_broken = true;
    }
  }
  EXPECT_TRUE(saw_good && saw_broken);
}

TEST(PluginAbi, ReloadSwitchesBuildsAndKeepsState) {
  const auto dir = std::filesystem::temp_directory_path() / "flotilla-reload-test";
  std::filesystem::create_directories(dir);
  const auto file = dir / "flotilla-scaled-mean.so";
  std::filesystem::copy_file(fixture("scaled-mean-v1"), file,
                             std::filesystem::copy_options::overwrite_existing);
  PluginRegistry registry({dir}, c10::Device(c10::kCPU));
  auto lib = registry.load("scaled-mean", FLOTILLA_KIND_AGGREGATOR);
  ASSERT_TRUE(lib) << lib.error().message;
  auto agg = PluginAggregation::create(*lib, {}, small_model());
  ASSERT_TRUE(agg);
  auto first = aggregate(**agg, {small_model()}, {1.0});
  EXPECT_TRUE(at::allclose(find(first, "w"), at::ones({2, 3})));  // scale 1

  // Replace the file in place (as `cp` or a build does) while v1 is loaded and running.
  std::filesystem::copy_file(fixture("scaled-mean-v2"), file,
                             std::filesystem::copy_options::overwrite_existing);
  auto next = registry.reload("scaled-mean");
  ASSERT_TRUE(next) << next.error().message;
  EXPECT_EQ((*next)->info().version, "2.0.0");
  std::vector<std::string> lines;
  set_plugin_log_sink([&](flotilla_log_level, const std::string& plugin, const std::string& msg) {
    lines.push_back(plugin + ": " + msg);
  });
  ASSERT_TRUE((*agg)->reload(*next));
  EXPECT_EQ((*agg)->library().info().version, "2.0.0");
  auto second = aggregate(**agg, {small_model()}, {1.0});
  EXPECT_TRUE(at::allclose(find(second, "w"), 2 * at::ones({2, 3})));  // scale 2
  // The state between versions moved across: v2 counts v1's version too.
  set_plugin_log_sink(nullptr);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back(), "scaled-mean: scale 2, version 2");
  std::filesystem::remove_all(dir);
}

TEST(PluginAbi, FailedReloadKeepsTheOldVersion) {
  auto agg = PluginAggregation::create(
      *PluginLibrary::open(fixture("scaled-mean-v1"), c10::Device(c10::kCPU)), {}, small_model());
  ASSERT_TRUE(agg);
  auto broken = PluginLibrary::open(fixture("throwing"), c10::Device(c10::kCPU));
  ASSERT_TRUE(broken);
  auto ok = (*agg)->reload(*broken);
  ASSERT_FALSE(ok);  // scaled-mean exports state the broken build cannot import
  EXPECT_EQ((*agg)->library().info().version, "1.0.0");
  auto out = aggregate(**agg, {small_model()}, {1.0});
  EXPECT_TRUE(at::allclose(find(out, "w"), at::ones({2, 3})));
}

TEST(PluginAbi, WatchedPluginFollowsItsFile) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / "flotilla-watch-test";
  fs::create_directories(dir);
  const auto file = dir / "flotilla-scaled-mean.so";
  auto t = fs::file_time_type::clock::now();
  auto put = [&](const fs::path& from) {  // a new file version, with a later mtime
    fs::copy_file(from, file, fs::copy_options::overwrite_existing);
    t += std::chrono::seconds(1);
    fs::last_write_time(file, t);
  };
  put(fixture("scaled-mean-v1"));
  auto registry = std::make_shared<PluginRegistry>(std::vector<fs::path>{dir}, c10::Device(c10::kCPU));
  auto lib = registry->load("scaled-mean", FLOTILLA_KIND_AGGREGATOR);
  ASSERT_TRUE(lib) << lib.error().message;
  WatchedPlugin watched(registry, *lib);

  auto now = watched.current();  // unchanged: the same library, nothing to say
  EXPECT_EQ(now.library, *lib);
  EXPECT_TRUE(now.event.empty());

  put(fixture("scaled-mean-v2"));
  now = watched.current();
  EXPECT_FALSE(now.failed);
  EXPECT_EQ(now.library->info().version, "2.0.0");
  EXPECT_THAT(now.event, HasSubstr("reloaded plugin 'scaled-mean'"));
  EXPECT_THAT(now.event, HasSubstr("1.0.0 -> 2.0.0"));
  EXPECT_TRUE(watched.current().event.empty());

  // A broken file: said once, the loaded version kept until the file changes again.
  {
    std::ofstream(file, std::ios::trunc) << "not a library";
  }
  t += std::chrono::seconds(1);
  fs::last_write_time(file, t);
  now = watched.current();
  EXPECT_TRUE(now.failed);
  EXPECT_THAT(now.event, HasSubstr("cannot be reloaded, keeping version 2.0.0"));
  EXPECT_EQ(now.library->info().version, "2.0.0");
  now = watched.current();
  EXPECT_TRUE(now.event.empty());
  EXPECT_EQ(now.library->info().version, "2.0.0");

  put(fixture("scaled-mean-v1"));
  now = watched.current();
  EXPECT_FALSE(now.failed);
  EXPECT_EQ(now.library->info().version, "1.0.0");
  fs::remove_all(dir);
}

}  // namespace

TEST(PluginAbi, WritingATensorNoUpdateCarriedNeedsTheDeclaration) {
  // The model's first tensor is what clients send; its second, what they do not (a base weight).
  const auto model = small_model();
  const TensorList update = {model[0]};
  for (const bool declared : {false, true}) {
    auto lib = PluginLibrary::open(fixture(declared ? "base-writer" : "base-writer-undeclared"),
                                   c10::Device(c10::kCPU));
    ASSERT_TRUE(lib) << lib.error().message;
    auto agg = PluginAggregation::create(*lib, {}, model);
    ASSERT_TRUE(agg) << agg.error().message;
    EXPECT_EQ((*agg)->traits().writes_base, declared);
    ASSERT_TRUE((*agg)->accept(WeightedUpdate{&update, 1.0, 0, 0}));
    if (declared) {
      const auto next = (*agg)->finalize();
      EXPECT_TRUE(at::equal(next[1].tensor, model[1].tensor + 1)) << "the written tensor is taken";
    } else {
      try {
        (void)(*agg)->finalize();
        ADD_FAILURE() << "an undeclared write into '" << model[1].name << "' was taken";
      } catch (const Failure& f) {
        EXPECT_THAT(f.what(), HasSubstr("which no update carried"));
        EXPECT_THAT(f.what(), HasSubstr("FLOTILLA_AGG_WRITES_BASE"));
      }
    }
  }
}

TEST(PluginAbi, AReloadThatDeclaresOtherNeedsIsRefused) {
  // The run was set up for what the running build declares (what clients send and keep, which
  // schedules fit): a build declaring otherwise needs a new run.
  const auto model = small_model();
  auto old_lib = PluginLibrary::open(fixture("base-writer-undeclared"), c10::Device(c10::kCPU));
  auto new_lib = PluginLibrary::open(fixture("base-writer"), c10::Device(c10::kCPU));
  ASSERT_TRUE(old_lib && new_lib);
  auto agg = PluginAggregation::create(*old_lib, {}, model);
  ASSERT_TRUE(agg) << agg.error().message;
  auto ok = (*agg)->reload(*new_lib);
  ASSERT_FALSE(ok);
  EXPECT_THAT(ok.error().message, HasSubstr("declares other needs"));
  EXPECT_FALSE((*agg)->traits().writes_base) << "the old build keeps running";
}

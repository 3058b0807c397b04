#include "runtime/ml/data.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

namespace flotilla {
namespace {

namespace fs = std::filesystem;
const std::string kDataDir = "/usr/share/datasets/fashion-mnist";

/// A fresh directory for one test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("flotilla_data_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }
  [[nodiscard]] std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::vector<std::uint8_t> be32(std::uint32_t v) {
  return {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
          static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
}

/// An IDX file's bytes: magic, dimensions, data.
std::vector<std::uint8_t> idx_bytes(std::uint32_t magic, const std::vector<std::uint32_t>& dims,
                                    const std::vector<std::uint8_t>& data) {
  auto out = be32(magic);
  for (auto d : dims) {
    auto b = be32(d);
    out.insert(out.end(), b.begin(), b.end());
  }
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_plain(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

void write_gz(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  gzclose(f);
}

/// Three 28x28 images (all 0, all 255, all 51) and labels 0, 9, 4.
void write_tiny_dataset(const TempDir& dir, bool gz) {
  std::vector<std::uint8_t> pixels(3 * 28 * 28, 0);
  std::fill(pixels.begin() + 784, pixels.begin() + 2 * 784, 255);
  std::fill(pixels.begin() + 2 * 784, pixels.end(), 51);
  const auto images = idx_bytes(0x803, {3, 28, 28}, pixels);
  const auto labels = idx_bytes(0x801, {3}, {0, 9, 4});
  if (gz) {
    write_gz(dir.file("t10k-images-idx3-ubyte.gz"), images);
    write_gz(dir.file("t10k-labels-idx1-ubyte.gz"), labels);
  } else {
    write_plain(dir.file("t10k-images-idx3-ubyte"), images);
    write_plain(dir.file("t10k-labels-idx1-ubyte"), labels);
  }
}

class FashionMnist : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto train = load_fashion_mnist(kDataDir, true);
    ASSERT_TRUE(train) << train.error().message;
    train_ = new Dataset(std::move(train.value()));
  }
  static void TearDownTestSuite() {
    delete train_;
    train_ = nullptr;
  }
  static Dataset* train_;
};
Dataset* FashionMnist::train_ = nullptr;

std::vector<std::int64_t> label_vector(const Dataset& d) {
  const auto l = d.labels.contiguous();
  return {l.data_ptr<std::int64_t>(), l.data_ptr<std::int64_t>() + l.numel()};
}

/// Per-client class histograms (as fractions) for a partition.
std::vector<std::vector<double>> class_shares(const std::vector<std::int64_t>& labels,
                                              const std::vector<std::vector<std::int64_t>>& parts) {
  std::vector<std::vector<double>> shares;
  for (const auto& p : parts) {
    std::vector<double> h(10, 0.0);
    for (auto i : p) h[static_cast<std::size_t>(labels[static_cast<std::size_t>(i)])] += 1.0;
    for (auto& x : h) x /= static_cast<double>(std::max<std::size_t>(p.size(), 1));
    shares.push_back(h);
  }
  return shares;
}

/// Mean over clients of the total-variation distance between the client's label
/// distribution and the global one (0 = identical, 1 = disjoint).
double mean_label_skew(const std::vector<std::int64_t>& labels,
                       const std::vector<std::vector<std::int64_t>>& parts) {
  const auto shares = class_shares(labels, parts);
  const auto global = class_shares(labels, {[&] {
                                     std::vector<std::int64_t> all(labels.size());
                                     std::iota(all.begin(), all.end(), 0);
                                     return all;
                                   }()})[0];
  double total = 0;
  for (const auto& s : shares) {
    double tv = 0;
    for (std::size_t c = 0; c < 10; ++c) tv += std::abs(s[c] - global[c]);
    total += tv / 2;
  }
  return total / static_cast<double>(shares.size());
}

void expect_exact_cover(const std::vector<std::vector<std::int64_t>>& parts, std::int64_t n) {
  std::vector<int> seen(static_cast<std::size_t>(n), 0);
  for (const auto& p : parts) {
    for (auto i : p) {
      ASSERT_GE(i, 0);
      ASSERT_LT(i, n);
      ++seen[static_cast<std::size_t>(i)];
    }
  }
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }))
      << "some example is missing or assigned twice";
}

TEST_F(FashionMnist, LoadsTrainAndTestSets) {
  const auto& train = *train_;
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(train.num_classes, 10);
  EXPECT_EQ(train.inputs.sizes(), (std::vector<std::int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(train.inputs.scalar_type(), torch::kFloat32);
  EXPECT_EQ(train.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(train.labels.min().item<std::int64_t>(), 0);
  EXPECT_EQ(train.labels.max().item<std::int64_t>(), 9);
  // Fashion-MNIST is balanced: 6,000 of each class.
  EXPECT_TRUE(torch::bincount(train.labels).eq(6000).all().item<bool>());
  // Normalized with the dataset's own mean and std: about zero mean, unit variance.
  EXPECT_NEAR(train.inputs.mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(train.inputs.std().item<double>(), 1.0, 0.02);
  EXPECT_NEAR(train.inputs.min().item<double>(), -0.2860 / 0.3530, 1e-4);
  EXPECT_NEAR(train.inputs.max().item<double>(), (1 - 0.2860) / 0.3530, 1e-4);

  auto test = load_fashion_mnist(kDataDir, false);
  ASSERT_TRUE(test) << test.error().message;
  EXPECT_EQ(test->size(), 10000);
  EXPECT_EQ(test->inputs.sizes(), (std::vector<std::int64_t>{10000, 1, 28, 28}));
}

TEST(Data, ReadsPlainAndGzippedIdxAndNormalizes) {
  for (const bool gz : {true, false}) {
    TempDir dir;
    write_tiny_dataset(dir, gz);
    auto data = load_fashion_mnist(dir.path().string(), false);
    ASSERT_TRUE(data) << data.error().message;
    ASSERT_EQ(data->size(), 3);
    EXPECT_EQ(label_vector(*data), (std::vector<std::int64_t>{0, 9, 4}));
    const auto& x = data->inputs;
    EXPECT_NEAR(x[0].max().item<float>(), (0.0 - 0.2860) / 0.3530, 1e-5);
    EXPECT_NEAR(x[1].min().item<float>(), (1.0 - 0.2860) / 0.3530, 1e-5);
    EXPECT_NEAR(x[2][0][13][5].item<float>(), (0.2 - 0.2860) / 0.3530, 1e-5);
  }
}

TEST(Data, ImagesKeptAsBytesNormalizeSliceBySliceToTheSameValues) {
  // What a client process does (load as bytes, keep a slice, normalize it) must give the very
  // floats the normalized load has, bit for bit: the same model trains on the same inputs.
  auto floats = load_fashion_mnist(kDataDir, true);
  auto bytes = load_fashion_mnist(kDataDir, true, ImageForm::bytes);
  ASSERT_TRUE(floats && bytes) << (floats ? bytes.error().message : floats.error().message);
  EXPECT_EQ(bytes->inputs.scalar_type(), torch::kUInt8);
  EXPECT_EQ(bytes->inputs.sizes(), floats->inputs.sizes());
  EXPECT_TRUE(torch::equal(bytes->labels, floats->labels));
  const std::vector<std::int64_t> slice = {0, 7, 999, 31337, 59999};
  const auto mine = normalized(subset(*bytes, slice));
  EXPECT_EQ(mine.inputs.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(mine.inputs, subset(*floats, slice).inputs));
  EXPECT_TRUE(torch::equal(mine.labels, subset(*floats, slice).labels));
  EXPECT_TRUE(torch::equal(normalized(*bytes).inputs, floats->inputs));
  // The values are the dataset's bytes normalized by its own mean and std, as ever.
  EXPECT_TRUE(torch::equal(mine.inputs,
                           ((subset(*bytes, slice).inputs.to(torch::kFloat32) / 255.0F) - 0.2860F) / 0.3530F));
  // Data already normalized (or token ids) passes through unchanged.
  EXPECT_TRUE(torch::equal(normalized(mine).inputs, mine.inputs));
}

TEST(Data, MissingDirectoryNamesTheFile) {
  auto data = load_fashion_mnist("/nonexistent/flotilla", true);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().code, Errc::io);
  EXPECT_EQ(data.error().message,
            "cannot read /nonexistent/flotilla/train-images-idx3-ubyte.gz: no such file");
}

TEST(Data, MissingLabelsFileNamesIt) {
  TempDir dir;
  write_tiny_dataset(dir, true);
  fs::remove(dir.file("t10k-labels-idx1-ubyte.gz"));
  auto data = load_fashion_mnist(dir.path().string(), false);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().code, Errc::io);
  EXPECT_NE(data.error().message.find(dir.file("t10k-labels-idx1-ubyte.gz")), std::string::npos)
      << data.error().message;
}

TEST(Data, CorruptGzipIsAnIoErrorNamingTheFile) {
  TempDir dir;
  write_tiny_dataset(dir, true);
  // A gzip header followed by bytes that are not a deflate stream.
  write_plain(dir.file("t10k-images-idx3-ubyte.gz"),
              {0x1f, 0x8b, 0x08, 0x00, 0,    0,    0,    0,    0x00, 0x03, 0xff,
               0xff, 0xff, 0xff, 0x13, 0x37, 0x42, 0x42, 0x00, 0x01, 0x02});
  auto data = load_fashion_mnist(dir.path().string(), false);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().code, Errc::io);
  EXPECT_NE(data.error().message.find("cannot read " + dir.file("t10k-images-idx3-ubyte.gz")),
            std::string::npos)
      << data.error().message;
}

TEST(Data, TruncatedFileIsAnIoError) {
  TempDir dir;
  write_tiny_dataset(dir, true);
  // The header promises 3 images; only one is there.
  write_gz(dir.file("t10k-images-idx3-ubyte.gz"),
           idx_bytes(0x803, {3, 28, 28}, std::vector<std::uint8_t>(784, 7)));
  auto data = load_fashion_mnist(dir.path().string(), false);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().code, Errc::io);
  EXPECT_NE(data.error().message.find("truncated"), std::string::npos) << data.error().message;
  EXPECT_NE(data.error().message.find(dir.file("t10k-images-idx3-ubyte.gz")), std::string::npos);
}

TEST(Data, WrongMagicAndMismatchedCountsAreIoErrors) {
  {
    TempDir dir;
    write_tiny_dataset(dir, true);
    // A labels file where the images file should be.
    write_gz(dir.file("t10k-images-idx3-ubyte.gz"), idx_bytes(0x801, {3}, {0, 1, 2}));
    auto data = load_fashion_mnist(dir.path().string(), false);
    ASSERT_FALSE(data);
    EXPECT_EQ(data.error().code, Errc::io);
    EXPECT_NE(data.error().message.find("magic"), std::string::npos) << data.error().message;
  }
  {
    TempDir dir;
    write_tiny_dataset(dir, true);
    write_gz(dir.file("t10k-labels-idx1-ubyte.gz"), idx_bytes(0x801, {2}, {0, 1}));
    auto data = load_fashion_mnist(dir.path().string(), false);
    ASSERT_FALSE(data);
    EXPECT_EQ(data.error().code, Errc::io);
    EXPECT_NE(data.error().message.find("2 labels for 3 images"), std::string::npos)
        << data.error().message;
  }
}

TEST_F(FashionMnist, IidPartitionCoversEveryExampleEvenly) {
  PartitionSpec spec;
  spec.num_clients = 7;
  spec.seed = 3;
  const auto parts = partition(train_->labels, spec);
  ASSERT_EQ(parts.size(), 7U);
  expect_exact_cover(parts, 60000);
  std::size_t lo = parts[0].size();
  std::size_t hi = lo;
  for (const auto& p : parts) {
    lo = std::min(lo, p.size());
    hi = std::max(hi, p.size());
  }
  EXPECT_LE(hi - lo, 1U);
}

TEST_F(FashionMnist, PartitionsAreDeterministicInTheSeed) {
  for (const auto kind : {PartitionKind::iid, PartitionKind::dirichlet}) {
    PartitionSpec spec;
    spec.kind = kind;
    spec.num_clients = 8;
    spec.seed = 11;
    const auto a = partition(train_->labels, spec);
    const auto b = partition(train_->labels, spec);
    EXPECT_EQ(a, b);
    spec.seed = 12;
    const auto c = partition(train_->labels, spec);
    EXPECT_NE(a, c);
    expect_exact_cover(c, 60000);
  }
}

TEST_F(FashionMnist, ClassesPartitionGivesAnyNumberOfClientsSmallSkewedShares) {
  const auto labels = label_vector(*train_);
  PartitionSpec spec;
  spec.kind = PartitionKind::classes;
  spec.num_clients = 100'000;  // more clients than examples: shares overlap across clients
  spec.classes_per_client = 2;
  spec.examples_per_client = 20;
  spec.seed = 4;
  const auto parts = partition(train_->labels, spec);
  ASSERT_EQ(parts.size(), 100'000U);
  std::set<std::vector<std::int64_t>> distinct;
  for (std::size_t c = 0; c < parts.size(); c += 997) {
    const auto& p = parts[c];
    ASSERT_EQ(p.size(), 20U) << "client " << c;
    EXPECT_TRUE(std::is_sorted(p.begin(), p.end()));
    EXPECT_EQ(std::set<std::int64_t>(p.begin(), p.end()).size(), 20U) << "distinct within a client";
    std::set<std::int64_t> classes;
    for (auto i : p) classes.insert(labels[static_cast<std::size_t>(i)]);
    EXPECT_EQ(classes.size(), 2U) << "client " << c;
    distinct.insert(p);
  }
  EXPECT_GT(distinct.size(), 90U) << "clients draw their own shares";
  // A client's share depends on its id and the seed alone, not on the fleet's size.
  spec.num_clients = 10;
  EXPECT_EQ(partition(train_->labels, spec)[7], parts[7]);
}

TEST_F(FashionMnist, DirichletPartitionIsLabelSkewed) {
  const auto labels = label_vector(*train_);
  PartitionSpec spec;
  spec.num_clients = 10;
  spec.seed = 5;
  const double iid_skew = mean_label_skew(labels, partition(train_->labels, spec));
  spec.kind = PartitionKind::dirichlet;
  spec.alpha = 0.1;
  const auto parts = partition(train_->labels, spec);
  expect_exact_cover(parts, 60000);
  const double dir_skew = mean_label_skew(labels, parts);
  EXPECT_LT(iid_skew, 0.05);
  EXPECT_GT(dir_skew, 0.5) << "alpha=0.1 should leave most clients with a few classes";
  // Most clients are dominated by one class; with IID no class exceeds ~10%.
  const auto shares = class_shares(labels, parts);
  int dominated = 0;
  for (const auto& s : shares) dominated += *std::max_element(s.begin(), s.end()) > 0.4 ? 1 : 0;
  EXPECT_GE(dominated, 5);

  // Larger alpha: less skew.
  spec.alpha = 100;
  EXPECT_LT(mean_label_skew(labels, partition(train_->labels, spec)), 0.1);
}

TEST_F(FashionMnist, DirichletRespectsMinExamples) {
  PartitionSpec spec;
  spec.kind = PartitionKind::dirichlet;
  spec.num_clients = 20;
  spec.alpha = 0.05;
  spec.min_examples = 500;
  for (std::uint64_t seed = 0; seed < 3; ++seed) {
    spec.seed = seed;
    const auto parts = partition(train_->labels, spec);
    ASSERT_EQ(parts.size(), 20U);
    expect_exact_cover(parts, 60000);
    for (const auto& p : parts) EXPECT_GE(p.size(), 500U);
  }
}

TEST(Data, ImpossiblePartitionsAreConfigErrors) {
  const auto labels = torch::arange(100, torch::kInt64) % 10;
  PartitionSpec spec;
  spec.kind = PartitionKind::dirichlet;
  spec.num_clients = 20;
  spec.min_examples = 10;
  try {
    (void)partition(labels, spec);
    FAIL() << "expected a Failure";
  } catch (const Failure& f) {
    EXPECT_EQ(f.error().code, Errc::invalid_config);
    EXPECT_NE(std::string(f.what()).find("min-examples"), std::string::npos) << f.what();
  }
  spec.num_clients = 0;
  EXPECT_THROW((void)partition(labels, spec), Failure);
}

TEST(Data, SplitTrainTestIsDeterministicAndDisjoint) {
  std::vector<std::int64_t> indices(1000);
  std::iota(indices.begin(), indices.end(), 5000);
  const auto a = split_train_test(indices, 0.2, 9);
  EXPECT_EQ(a.test.size(), 200U);
  EXPECT_EQ(a.train.size(), 800U);
  std::set<std::int64_t> all(a.train.begin(), a.train.end());
  all.insert(a.test.begin(), a.test.end());
  EXPECT_EQ(all, std::set<std::int64_t>(indices.begin(), indices.end()));

  const auto b = split_train_test(indices, 0.2, 9);
  EXPECT_EQ(a.train, b.train);
  EXPECT_EQ(a.test, b.test);
  const auto c = split_train_test(indices, 0.2, 10);
  EXPECT_NE(a.test, c.test);
  // The held-out part is a random sample, not a prefix.
  EXPECT_NE(a.test, std::vector<std::int64_t>(indices.begin(), indices.begin() + 200));

  EXPECT_TRUE(split_train_test(indices, 0.0, 1).test.empty());
  EXPECT_THROW((void)split_train_test(indices, 1.5, 1), Failure);
}

TEST(Data, SubsetSelectsRows) {
  Dataset d;
  d.inputs = torch::arange(5 * 4, torch::kFloat32).reshape({5, 1, 2, 2});
  d.labels = torch::tensor({0, 1, 2, 3, 4}, torch::kInt64);
  d.num_classes = 5;
  const auto s = subset(d, {4, 1});
  ASSERT_EQ(s.size(), 2);
  EXPECT_EQ(s.num_classes, 5);
  EXPECT_EQ(label_vector(s), (std::vector<std::int64_t>{4, 1}));
  EXPECT_TRUE(torch::equal(s.inputs[0], d.inputs[4]));
  EXPECT_TRUE(torch::equal(s.inputs[1], d.inputs[1]));
  // A copy: writing to it leaves the source alone.
  s.inputs.zero_();
  EXPECT_EQ(d.inputs[4].sum().item<float>(), 16 + 17 + 18 + 19);
}

}  // namespace
}  // namespace flotilla

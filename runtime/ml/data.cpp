#include "runtime/ml/data.hpp"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string_view>

namespace flotilla {
namespace {

/// Fashion-MNIST's published channel statistics; every process normalizes identically.
constexpr float kMean = 0.2860F;
constexpr float kStd = 0.3530F;
constexpr std::int64_t kNumClasses = 10;
constexpr std::uint32_t kImagesMagic = 0x00000803;  ///< unsigned bytes, 3 dimensions
constexpr std::uint32_t kLabelsMagic = 0x00000801;  ///< unsigned bytes, 1 dimension
/// Redraws allowed before a Dirichlet partition that cannot meet min_examples is an error.
constexpr int kMaxDirichletDraws = 1000;

Error io_error(const std::string& path, const std::string& problem) {
  return Error{Errc::io, "cannot read " + path + ": " + problem};
}

struct IdxFile {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> bytes;
};

/// Closes a gzFile on every exit path.
struct GzCloser {
  void operator()(gzFile_s* f) const noexcept { gzclose(f); }
};
using GzHandle = std::unique_ptr<gzFile_s, GzCloser>;

/// The problem zlib reports for `f`, falling back to "truncated file" at a clean EOF.
std::string gz_problem(gzFile f, const char* fallback) {
  int errnum = Z_OK;
  const char* msg = gzerror(f, &errnum);
  if (errnum != Z_OK && msg != nullptr && *msg != '\0') {
    return std::string("corrupt data (") + msg + ")";
  }
  return fallback;
}

/// Reads exactly `n` bytes or reports why not.
Expected<void> read_exact(gzFile f, const std::string& path, void* out, std::size_t n) {
  auto* dst = static_cast<std::uint8_t*>(out);
  std::size_t done = 0;
  while (done < n) {
    // gzread takes an unsigned int length: read in chunks well below its limit.
    const auto chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, 1U << 24));
    const int got = gzread(f, dst + done, chunk);
    if (got < 0) return io_error(path, gz_problem(f, "read failed"));
    if (got == 0) {
      return io_error(path, gz_problem(f, "truncated file") + " (expected " + std::to_string(n) +
                                " bytes of data, got " + std::to_string(done) + ")");
    }
    done += static_cast<std::size_t>(got);
  }
  return {};
}

/// Reads an IDX file (gzipped or plain: gzread passes plain files through) and checks its
/// magic number, dimension count and that the data is complete.
Expected<IdxFile> read_idx(const std::string& path, std::uint32_t magic) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return io_error(path, "no such file");
  GzHandle f(gzopen(path.c_str(), "rb"));
  if (!f) return io_error(path, "cannot open");
  std::array<std::uint8_t, 4> word{};
  auto read_u32 = [&](std::uint32_t& out) -> Expected<void> {
    if (auto r = read_exact(f.get(), path, word.data(), word.size()); !r) return r;
    // IDX stores integers big-endian.
    out = (std::uint32_t{word[0]} << 24) | (std::uint32_t{word[1]} << 16) |
          (std::uint32_t{word[2]} << 8) | std::uint32_t{word[3]};
    return {};
  };
  std::uint32_t got_magic = 0;
  if (auto r = read_u32(got_magic); !r) return r.error();
  if (got_magic != magic) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "bad magic number 0x%08x (expected 0x%08x); not an IDX file?",
                  got_magic, magic);
    return io_error(path, buf);
  }
  IdxFile idx;
  idx.dims.resize(magic & 0xFFU);
  std::size_t count = 1;
  for (auto& d : idx.dims) {
    if (auto r = read_u32(d); !r) return r.error();
    count *= d;
  }
  // Guards against a corrupt header asking for an absurd allocation (Fashion-MNIST is 47 MB).
  if (count > (std::size_t{1} << 32)) return io_error(path, "implausible dimensions in header");
  idx.bytes.resize(count);
  if (auto r = read_exact(f.get(), path, idx.bytes.data(), count); !r) return r.error();
  return idx;
}

/// `dir/name.gz` when present, else the gunzipped `dir/name`; the .gz path for the error.
std::string find_file(const std::string& dir, const std::string& name) {
  const auto base = std::filesystem::path(dir) / name;
  std::error_code ec;
  const auto gz = base.string() + ".gz";
  if (std::filesystem::exists(gz, ec) || !std::filesystem::exists(base, ec)) return gz;
  return base.string();
}

std::vector<std::vector<std::int64_t>> partition_iid(std::int64_t n, const PartitionSpec& spec) {
  std::vector<std::int64_t> all(static_cast<std::size_t>(n));
  std::iota(all.begin(), all.end(), std::int64_t{0});
  std::mt19937_64 rng(spec.seed);
  shuffle(all, rng);
  const auto k = static_cast<std::int64_t>(spec.num_clients);
  std::vector<std::vector<std::int64_t>> parts(static_cast<std::size_t>(k));
  std::int64_t begin = 0;
  for (std::int64_t c = 0; c < k; ++c) {
    const std::int64_t len = n / k + (c < n % k ? 1 : 0);
    parts[c].assign(all.begin() + begin, all.begin() + begin + len);
    begin += len;
  }
  return parts;
}

/// One Dirichlet draw: each class's shuffled examples are cut into per-client runs whose
/// lengths follow proportions drawn from Dirichlet(alpha) (normalized Gamma(alpha, 1) draws).
/// std::gamma_distribution's algorithm is the standard library's own: the same everywhere one
/// libstdc++ runs (every Debian 12 machine of a run), not necessarily across libraries.
std::vector<std::vector<std::int64_t>> draw_dirichlet(
    const std::vector<std::vector<std::int64_t>>& by_class, const PartitionSpec& spec,
    std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> gamma(spec.alpha, 1.0);
  const auto k = static_cast<std::size_t>(spec.num_clients);
  std::vector<std::vector<std::int64_t>> parts(k);
  std::vector<double> share(k);
  for (auto members : by_class) {
    if (members.empty()) continue;
    shuffle(members, rng);
    double total = 0;
    for (auto& s : share) total += (s = gamma(rng));
    if (!(total > 0)) {
      // Every draw underflowed (tiny alpha): the class goes to one client, which is the
      // limit Dirichlet(alpha -> 0) tends to anyway.
      std::fill(share.begin(), share.end(), 0.0);
      share[rng() % k] = 1.0;
      total = 1.0;
    }
    const auto n = static_cast<double>(members.size());
    double cumulative = 0;
    std::size_t begin = 0;
    for (std::size_t c = 0; c < k; ++c) {
      cumulative += share[c];
      const auto end =
          c + 1 == k ? members.size()
                     : std::min(members.size(),
                                static_cast<std::size_t>(std::llround(n * cumulative / total)));
      if (end > begin) {
        parts[c].insert(parts[c].end(), members.begin() + begin, members.begin() + end);
      }
      begin = std::max(begin, end);
    }
  }
  return parts;
}

/// Client `c`'s share under PartitionKind::classes: classes_per_client distinct labels (those
/// with examples), examples_per_client examples split evenly over them, distinct within the
/// client, each drawn from its own stream so a client's share does not depend on the others.
std::vector<std::int64_t> draw_classes(const std::vector<std::vector<std::int64_t>>& by_class,
                                       const std::vector<std::size_t>& nonempty,
                                       const PartitionSpec& spec, std::uint64_t client) {
  std::mt19937_64 rng(spec.seed * 0x9E3779B97F4A7C15ULL + client * 0xD1B54A32D192ED03ULL + 7);
  std::vector<std::size_t> classes = nonempty;
  const auto k = std::min(classes.size(), static_cast<std::size_t>(spec.classes_per_client));
  for (std::size_t i = 0; i < k; ++i) std::swap(classes[i], classes[i + rng() % (classes.size() - i)]);
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(spec.examples_per_client));
  const auto total = static_cast<std::size_t>(spec.examples_per_client);
  for (std::size_t j = 0; j < k; ++j) {
    const auto& pool = by_class[classes[j]];
    auto want = std::min(total / k + (j < total % k ? 1 : 0), pool.size());
    // Floyd's sampling: `want` distinct positions of the pool in O(want^2) for small shares.
    const std::size_t first = out.size();
    for (std::size_t m = pool.size() - want; m < pool.size(); ++m) {
      const auto pick = pool[rng() % (m + 1)];
      const bool seen = std::find(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
                                  pick) != out.end();
      out.push_back(seen ? pool[m] : pick);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

void shuffle(std::vector<std::int64_t>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

Expected<Dataset> load_fashion_mnist(const std::string& dir, bool train, ImageForm form) {
  const std::string prefix = train ? "train" : "t10k";
  const auto images_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const auto labels_path = find_file(dir, prefix + "-labels-idx1-ubyte");
  auto images = read_idx(images_path, kImagesMagic);
  if (!images) return images.error();
  auto labels = read_idx(labels_path, kLabelsMagic);
  if (!labels) return labels.error();
  const auto& idims = images->dims;
  if (idims[1] != 28 || idims[2] != 28) {
    return io_error(images_path, "expected 28x28 images, got " + std::to_string(idims[1]) + "x" +
                                     std::to_string(idims[2]));
  }
  if (idims[0] != labels->dims[0]) {
    return io_error(labels_path, std::to_string(labels->dims[0]) + " labels for " +
                                     std::to_string(idims[0]) + " images in " + images_path);
  }
  for (const auto label : labels->bytes) {
    if (label >= kNumClasses) {
      return io_error(labels_path, "label " + std::to_string(label) + " outside 0..9");
    }
  }
  const auto n = static_cast<std::int64_t>(idims[0]);
  Dataset data;
  data.num_classes = kNumClasses;
  // The tensor takes the bytes over (no copy of the 47 MB).
  auto owned = std::make_unique<std::vector<std::uint8_t>>(std::move(images->bytes));
  data.inputs = torch::from_blob(
      owned->data(), {n, 1, 28, 28}, [kept = owned.get()](void*) { delete kept; }, torch::kUInt8);
  (void)owned.release();  // the tensor's storage deletes it
  data.labels = torch::from_blob(labels->bytes.data(), {n}, torch::kUInt8).to(torch::kInt64);
  return form == ImageForm::bytes ? data : normalized(std::move(data));
}

Dataset normalized(Dataset data) {
  if (data.inputs.scalar_type() != torch::kUInt8) return data;
  // In place after the one conversion: the float copy is the only one held (no temporaries of
  // its size), and each step rounds as ((x / 255) - mean) / std does.
  auto x = data.inputs.to(torch::kFloat32);
  data.inputs = x.div_(255.0F).sub_(kMean).div_(kStd);
  return data;
}

Dataset subset(const Dataset& data, const std::vector<std::int64_t>& indices) {
  const auto index =
      torch::tensor(at::ArrayRef<std::int64_t>(indices), torch::kInt64).to(data.labels.device());
  Dataset out;
  out.inputs = data.inputs.index_select(0, index);
  out.labels = data.labels.index_select(0, index);
  if (data.groups.defined()) out.groups = data.groups.index_select(0, index.to(data.groups.device()));
  out.num_classes = data.num_classes;
  return out;
}

std::vector<std::vector<std::int64_t>> partition(const at::Tensor& labels,
                                                 const PartitionSpec& spec) {
  if (spec.num_clients < 1) {
    throw Failure(Errc::invalid_config,
                  "num-clients must be >= 1, got " + std::to_string(spec.num_clients));
  }
  const auto cpu_labels = labels.to(torch::kCPU, torch::kInt64).contiguous();
  const std::int64_t n = cpu_labels.numel();
  if (spec.kind == PartitionKind::iid) return partition_iid(n, spec);
  if (spec.kind == PartitionKind::classes) {
    if (spec.classes_per_client < 1 || spec.examples_per_client < 1) {
      throw Failure(Errc::invalid_config, "classes-per-client and examples-per-client must be >= 1");
    }
    const auto* lp = cpu_labels.data_ptr<std::int64_t>();
    const std::int64_t num_classes = n == 0 ? 0 : *std::max_element(lp, lp + n) + 1;
    std::vector<std::vector<std::int64_t>> by_class(static_cast<std::size_t>(num_classes));
    for (std::int64_t i = 0; i < n; ++i) by_class[static_cast<std::size_t>(lp[i])].push_back(i);
    std::vector<std::size_t> nonempty;
    for (std::size_t c = 0; c < by_class.size(); ++c) {
      if (!by_class[c].empty()) nonempty.push_back(c);
    }
    if (nonempty.empty()) throw Failure(Errc::invalid_config, "the dataset has no examples to partition");
    std::vector<std::vector<std::int64_t>> parts(static_cast<std::size_t>(spec.num_clients));
    for (std::size_t c = 0; c < parts.size(); ++c) parts[c] = draw_classes(by_class, nonempty, spec, c);
    return parts;
  }

  if (!(spec.alpha > 0)) {
    throw Failure(Errc::invalid_config,
                  "dirichlet alpha must be > 0, got " + std::to_string(spec.alpha));
  }
  if (spec.min_examples * spec.num_clients > n) {
    throw Failure(Errc::invalid_config,
                  "cannot give " + std::to_string(spec.num_clients) + " clients at least " +
                      std::to_string(spec.min_examples) + " examples each from " +
                      std::to_string(n) + "; use fewer clients or a smaller min-examples");
  }
  const auto* lp = cpu_labels.data_ptr<std::int64_t>();
  const std::int64_t num_classes = n == 0 ? 0 : *std::max_element(lp, lp + n) + 1;
  std::vector<std::vector<std::int64_t>> by_class(static_cast<std::size_t>(num_classes));
  for (std::int64_t i = 0; i < n; ++i) by_class[static_cast<std::size_t>(lp[i])].push_back(i);

  for (int attempt = 0; attempt < kMaxDirichletDraws; ++attempt) {
    auto parts = draw_dirichlet(by_class, spec, spec.seed + static_cast<std::uint64_t>(attempt));
    const bool ok = std::all_of(parts.begin(), parts.end(), [&](const auto& p) {
      return static_cast<std::int64_t>(p.size()) >= spec.min_examples;
    });
    if (!ok) continue;
    // Sorted per client: a canonical order, and index_select walks memory forwards.
    for (auto& p : parts) std::sort(p.begin(), p.end());
    return parts;
  }
  throw Failure(Errc::invalid_config,
                "no Dirichlet(alpha=" + std::to_string(spec.alpha) + ") partition in " +
                    std::to_string(kMaxDirichletDraws) +
                    " draws gives every client >= " + std::to_string(spec.min_examples) +
                    " examples; raise alpha or lower min-examples");
}

TrainTestSplit split_train_test(const std::vector<std::int64_t>& indices, double test_fraction,
                                std::uint64_t seed) {
  if (!(test_fraction >= 0 && test_fraction < 1)) {
    throw Failure(Errc::invalid_config,
                  "test fraction must be in [0, 1), got " + std::to_string(test_fraction));
  }
  auto shuffled = indices;
  std::mt19937_64 rng(seed);
  shuffle(shuffled, rng);
  const auto num_test =
      static_cast<std::size_t>(std::llround(test_fraction * static_cast<double>(shuffled.size())));
  TrainTestSplit split;
  split.test.assign(shuffled.begin(), shuffled.begin() + static_cast<std::ptrdiff_t>(num_test));
  split.train.assign(shuffled.begin() + static_cast<std::ptrdiff_t>(num_test), shuffled.end());
  std::sort(split.test.begin(), split.test.end());
  std::sort(split.train.begin(), split.train.end());
  return split;
}

}  // namespace flotilla

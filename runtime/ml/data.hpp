#pragma once
/// Datasets and their partitioning into clients.
#include "runtime/base/error.hpp"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace flotilla {

/// Fisher-Yates with a plain modulo draw. Unlike std::shuffle, its output is fixed by
/// mt19937_64 alone (which the standard defines exactly), so every process, standard library
/// and LibTorch version orders the same indices the same way.
void shuffle(std::vector<std::int64_t>& v, std::mt19937_64& rng);

struct Dataset {
  /// N×C×H×W float32, normalized; or N×C×H×W uint8 as stored (ImageForm::bytes, before
  /// normalized()); or N×T token ids (int64)
  at::Tensor inputs;
  at::Tensor labels;  ///< N int64; or N×T token ids to predict (kIgnoreLabel: not scored)
  std::int64_t num_classes = 0;  ///< classes; or, for text, categories
  /// What partitions split clients by, per example (N int64): undefined = the labels (an image's
  /// class); a text example's category.
  at::Tensor groups;
  [[nodiscard]] std::int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  /// The per-example labels partitions use: `groups` where set, else `labels`.
  [[nodiscard]] const at::Tensor& partition_labels() const { return groups.defined() ? groups : labels; }
};

/// How a loader hands over images: `normalized` float32 (what models train on), or `bytes` as
/// stored (uint8, a quarter of the memory), for a process that keeps only a slice: take the
/// slice with subset(), then normalized() it. A client of 60,000 examples' Fashion-MNIST that
/// keeps 300 of them never holds the 188 MB of floats the whole set is.
enum class ImageForm { normalized, bytes };

/// Reads Fashion-MNIST's IDX files from `dir` (the Debian package's
/// /usr/share/datasets/fashion-mnist: `*-ubyte.gz`, or the same files gunzipped).
/// `train` picks train-* (60,000) or t10k-* (10,000). Errc::io names the missing or bad file.
[[nodiscard]] Expected<Dataset> load_fashion_mnist(const std::string& dir, bool train,
                                                   ImageForm form = ImageForm::normalized);

/// `data` with uint8 images (ImageForm::bytes) turned into normalized float32, exactly as
/// load_fashion_mnist's normalized form has them; any other data unchanged.
[[nodiscard]] Dataset normalized(Dataset data);

/// The rows `indices` of `data` (a copy).
[[nodiscard]] Dataset subset(const Dataset& data, const std::vector<std::int64_t>& indices);

/// iid: shuffled and cut evenly. dirichlet: label skew, every example to exactly one client.
/// classes: each client holds examples_per_client examples of classes_per_client labels,
/// drawn independently per client (so clients may share examples): a fleet of any size, a
/// million clients included, gets small non-IID shares of a fixed dataset.
enum class PartitionKind { iid, dirichlet, classes };

struct PartitionSpec {
  PartitionKind kind = PartitionKind::iid;
  int num_clients = 1;
  double alpha = 0.5;  ///< Dirichlet concentration: small = strong label skew
  std::uint64_t seed = 0;
  /// Smallest number of examples any client may get (dirichlet redraws until met).
  std::int64_t min_examples = 10;
  int classes_per_client = 2;               ///< classes
  std::int64_t examples_per_client = 64;    ///< classes
};

/// Assigns every example to exactly one client (iid, dirichlet), or draws each client's share
/// (classes). Deterministic in (labels, spec): every process of a run computes the same
/// partition from the shared config. Each client's indices are sorted.
[[nodiscard]] std::vector<std::vector<std::int64_t>> partition(const at::Tensor& labels,
                                                               const PartitionSpec& spec);

struct TrainTestSplit {
  std::vector<std::int64_t> train;
  std::vector<std::int64_t> test;
};

/// Splits one client's indices into a train and a held-out part, deterministically.
[[nodiscard]] TrainTestSplit split_train_test(const std::vector<std::int64_t>& indices,
                                              double test_fraction, std::uint64_t seed);

}  // namespace flotilla

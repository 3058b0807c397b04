#pragma once
/// `flotilla experiment`: one study file runs a set of methods over the same base config with
/// several seeds (the study's setting: few clients, synchronous, one process), optionally after
/// pretraining a base model once, and reports a table and curves. Plain C++: the CLI hands in
/// how one run is run (RunFunction), so the runner is tested without a federation.
#include "runtime/base/error.hpp"
#include "runtime/base/tensor.hpp"
#include "runtime/server/records.hpp"
#include "runtime/setup/config.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace flotilla {

/// What a run is judged by: the evaluator's last reading of the global model.
enum class StudyMetric { accuracy, loss, perplexity };

/// [experiment.pretrain]: a base model trained centrally once, before every run, on part of the
/// data (the study fine-tunes a pretrained model; none can be downloaded here). Each run starts
/// from it (model.checkpoint).
struct PretrainSpec {
  std::int64_t steps = 0;
  std::int64_t batch_size = 64;
  double learning_rate = 1e-3;
  std::string optimizer = "adamw";
  std::vector<std::int64_t> classes;  ///< images: only these labels; empty = all
  std::string data;                   ///< text: a JSON-lines file of its own; empty = data.path
};

struct Experiment {
  std::string source;  ///< the study file, in errors
  std::string name;
  std::vector<std::uint64_t> seeds{1, 2, 3};
  std::vector<std::string> methods;  ///< in the table's order
  StudyMetric metric = StudyMetric::accuracy;
  std::optional<PretrainSpec> pretrain;
  /// Text: ROUGE-L F1 of the final global model's greedy answers to this many held-out
  /// records (0 = none), answers cut at rouge_max_tokens.
  std::int64_t rouge_samples = 0;
  std::int64_t rouge_max_tokens = 64;
  std::string base_toml;                         ///< the run config every method shares
  std::vector<std::string> method_toml;          ///< per method: the tables merged over it
};

/// Reads a study file: [experiment] (name, seeds, methods, metric, rouge-samples,
/// rouge-max-tokens), [experiment.pretrain], [experiment.method.NAME] tables (each a partial run
/// config merged over the rest), and the rest of the file, the base run config. Errors name the
/// file and the key (Errc::invalid_config); every method's config is checked here, for the
/// first seed, so a typo fails before hours of runs.
[[nodiscard]] Expected<Experiment> parse_experiment(const std::string& text, const std::string& source);
[[nodiscard]] Expected<Experiment> load_experiment(const std::filesystem::path& path);

/// The run config of `method` with `seed`, as TOML: the base, the method's tables merged over
/// it (a key the method sets replaces the base's), run.seed, run.name "<name>-<method>-s<seed>",
/// and model.checkpoint when `checkpoint` is not empty.
[[nodiscard]] Expected<std::string> run_config_text(const Experiment& experiment, const std::string& method,
                                                    std::uint64_t seed, const std::string& checkpoint = "");

/// The experiment's metric from one evaluation (loss and accuracy as the evaluator reports them).
[[nodiscard]] double metric_value(StudyMetric metric, double loss, double accuracy);
[[nodiscard]] const char* metric_name(StudyMetric metric);
[[nodiscard]] bool higher_is_better(StudyMetric metric);

/// What one run gave.
struct RunOutput {
  std::vector<RoundRecord> rounds;
  TensorList final_model;          ///< the global model at the end (for ROUGE-L)
  std::optional<double> rouge_l;   ///< filled by the runner when asked for
};
/// Runs one federation of `config` (its directory for rounds.csv and the like is `dir`).
using RunFunction = std::function<Expected<RunOutput>(const Config& config, const std::filesystem::path& dir)>;

/// One run's figures, as runs.csv and the table use them.
struct RunSummary {
  std::string method;
  std::uint64_t seed = 0;
  bool ok = false;
  std::string failure;
  std::optional<double> final_metric, best_metric;
  std::optional<double> rouge_l;
  double upload_per_round = 0;    ///< tensor bytes a client sent per round, mean over rounds
  double download_per_round = 0;  ///< tensor bytes a task carried per round, mean over rounds
  std::uint64_t optimizer_state_bytes = 0;  ///< largest a client reported
  /// What decided the result (its config text and base model): a finished run is reused only
  /// while it matches.
  std::string config_key;
  double wall_seconds = 0;
  std::uint64_t rounds = 0;
  /// Per evaluated round: round, metric, cumulative bytes a client sent and received so far.
  struct Point {
    std::uint64_t round = 0;
    double metric = 0, uploaded = 0, downloaded = 0;
  };
  std::vector<Point> curve;
};
[[nodiscard]] RunSummary summarize_run(const Experiment& experiment, const std::string& method, std::uint64_t seed,
                                       const RunOutput& output, double wall_seconds);

/// Progress of a study, for a progress bar.
struct ExperimentProgress {
  std::size_t done = 0, total = 0;
  std::string method;
  std::uint64_t seed = 0;
  double elapsed_seconds = 0;
  const RunSummary* finished = nullptr;  ///< set once a run ends (reused or run)
  bool reused = false;                   ///< its result was on disk from an earlier invocation
};

struct ExperimentOptions {
  std::vector<std::string> only_methods;  ///< empty = all
  std::vector<std::uint64_t> only_seeds;  ///< empty = all
  std::string checkpoint;                 ///< the pretrained base every run starts from, if any
  std::string base_fingerprint;           ///< what made that base (a new one: every run again)
  std::function<void(const ExperimentProgress&)> on_progress;
};

/// Runs every (method, seed) not yet done under `dir` (each writes dir/runs/<method>-s<seed>/
/// config.toml, and result.json when it ends, so an interrupted study resumes where it stopped
/// and a finished run is never run again while its config and base model are the same; runs
/// `options` leaves out count when an earlier invocation finished them), then writes dir/runs.csv, dir/summary.md and the
/// curves (dir/curves/*.dat, dir/plots.gp). A run that fails is reported in the table, and the
/// others go on. Errc::invalid_argument for an unknown method or seed in `options`.
[[nodiscard]] Expected<std::vector<RunSummary>> run_experiment(const Experiment& experiment,
                                                               const std::filesystem::path& dir,
                                                               const RunFunction& run,
                                                               const ExperimentOptions& options = {});

/// The Markdown table: per method, mean ± std over seeds of the final metric (and ROUGE-L),
/// bytes sent and received per client per round, optimizer state per client, wall time.
[[nodiscard]] std::string markdown_table(const Experiment& experiment, const std::vector<RunSummary>& runs);

/// Renders dir/plots.gp with gnuplot into dir/metric_by_round.png and dir/metric_by_upload.png.
/// Errc::io (saying how to install it) when gnuplot is not on the PATH, or it fails.
[[nodiscard]] Expected<std::vector<std::filesystem::path>> render_plots(const std::filesystem::path& dir);

}  // namespace flotilla

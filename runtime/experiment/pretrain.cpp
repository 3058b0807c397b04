#include "runtime/experiment/pretrain.hpp"

#include "runtime/ml/text.hpp"
#include "runtime/ml/trainer.hpp"
#include "runtime/setup/federation.hpp"
#include "runtime/storage/safetensors.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <set>

namespace flotilla {
namespace {

/// The config a pretraining runs with: the base model without adapters, every parameter trained.
Config pretrain_config(const Config& base, const PretrainSpec& spec) {
  Config c = base;
  c.lora.rank = 0;
  c.lora.ranks.clear();
  c.model.trainable.clear();  // a model.checkpoint stays: pretraining continues from it
  if (!spec.data.empty()) {
    c.data.path = spec.data;
    c.data.held_out = 0;  // a file of its own: all of it is trained on
  }
  return c;
}

/// One job at a time: it takes run.threads cores, or every core.
void use_threads(const Config& c) { at::set_num_threads(run_cores(c)); }

/// What produced a pretrained file: the model's tensors (names and shapes), the seed, the data
/// and the spec. A file whose record differs is trained again.
std::string fingerprint(const Config& c, const PretrainSpec& spec, const TensorList& state) {
  nlohmann::json shapes = nlohmann::json::object();
  for (const auto& t : state) shapes[t.name] = t.tensor.sizes().vec();
  // A file is known by its size and time: a regenerated corpus or a new checkpoint trains again.
  auto file = [](const std::string& path) -> nlohmann::json {
    std::error_code ec;
    if (path.empty() || !std::filesystem::exists(path, ec)) return path;
    const auto size = std::filesystem::is_regular_file(path, ec) ? std::filesystem::file_size(path, ec) : 0;
    const auto time = std::filesystem::last_write_time(path, ec).time_since_epoch().count();
    return nlohmann::json{path, size, time};
  };
  return nlohmann::json{{"model", c.model.name},       {"tensors", shapes},
                        {"seed", c.run.seed},          {"dataset", c.data.dataset},
                        {"data", file(c.data.path)},   {"held_out", c.data.held_out},
                        {"tokenizer", c.data.tokenizer}, {"tokenizer_model", file(c.data.tokenizer_model)},
                        {"checkpoint", file(c.model.checkpoint)}, {"steps", spec.steps},
                        {"batch_size", spec.batch_size}, {"learning_rate", spec.learning_rate},
                        {"optimizer", spec.optimizer}, {"classes", spec.classes},
                        {"max_length", c.data.max_length}}
      .dump();
}

}  // namespace

Expected<PretrainReport> pretrain_base(const Config& base, const PretrainSpec& spec, const std::filesystem::path& out,
                                       const std::function<void(std::int64_t, std::int64_t, double)>& progress) {
  const auto started = std::chrono::steady_clock::now();
  const Config c = pretrain_config(base, spec);
  use_threads(c);
  auto model = build_model(c);
  if (!model) return model.error();
  const auto print = fingerprint(c, spec, (*model)->state());
  PretrainReport report;
  report.fingerprint = print;
  std::error_code ec;
  if (std::filesystem::exists(out, ec)) {
    if (auto earlier = read_safetensors(out); earlier && earlier->metadata.count("flotilla.pretrain") > 0 &&
                                              earlier->metadata.at("flotilla.pretrain") == print) {
      report.reused = true;
      return report;
    }
  }
  auto data = load_dataset(c, true);
  if (!data) return Error{data.error().code, "experiment.pretrain: " + data.error().message};
  if (!spec.classes.empty()) {
    if (c.data.dataset == "instructions") {
      return Error{Errc::invalid_config, "experiment.pretrain.classes is for images; text pretrains on "
                                         "experiment.pretrain.data"};
    }
    std::vector<std::int64_t> keep;
    const auto labels = data->labels.contiguous();
    const auto* l = labels.data_ptr<std::int64_t>();
    const std::set<std::int64_t> wanted(spec.classes.begin(), spec.classes.end());
    for (std::int64_t i = 0; i < data->size(); ++i) {
      if (wanted.count(l[i]) > 0) keep.push_back(i);
    }
    if (keep.empty()) return Error{Errc::invalid_config, "experiment.pretrain.classes: no training example has those labels"};
    *data = subset(*data, keep);
  }
  report.examples = data->size();
  auto registry = plugin_registry(c);
  if (!registry) return registry.error();
  auto library = (*registry)->load(spec.optimizer, FLOTILLA_KIND_OPTIMIZER);
  if (!library) return Error{Errc::invalid_config, "experiment.pretrain.optimizer: " + library.error().message};
  TrainingConfig tc;
  tc.batch_size = static_cast<std::uint32_t>(spec.batch_size);
  tc.learning_rate = static_cast<float>(spec.learning_rate);
  auto optimizer = make_optimizer(*library, {}, tc, **model, "experiment.pretrain");
  if (!optimizer) return optimizer.error();
  // What it is measured on: up to 2,000 of the examples it trains on.
  std::vector<std::int64_t> probe_rows(static_cast<std::size_t>(std::min<std::int64_t>(data->size(), 2000)));
  std::iota(probe_rows.begin(), probe_rows.end(), 0);
  const auto probe = subset(*data, probe_rows);
  const auto batch = c.model.objective() == Objective::causal_lm ? 16 : 500;  // sequences are heavier than images
  report.loss_before = evaluate(**model, probe, batch).loss;
  const std::int64_t chunk = std::max<std::int64_t>(1, spec.steps / 20);
  double last_loss = report.loss_before;
  for (std::int64_t done = 0; done < spec.steps;) {
    const auto steps = std::min(chunk, spec.steps - done);
    tc.local_steps = static_cast<std::uint32_t>(steps);
    tc.seed = c.run.seed * 1'000'003 + static_cast<std::uint64_t>(done);
    last_loss = train_local(**model, *data, tc, **optimizer).loss;
    done += steps;
    if (progress) progress(done, spec.steps, last_loss);
  }
  const auto after = evaluate(**model, probe, batch);
  report.loss_after = after.loss;
  report.accuracy_after = after.accuracy;
  if (auto ok = write_safetensors(out, (*model)->state(), {{"flotilla.pretrain", print}}); !ok) return ok.error();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return report;
}

Expected<double> rouge_of_model(const Config& config, const TensorList& tensors, std::int64_t samples,
                                std::int64_t max_tokens) {
  if (config.data.dataset != "instructions") {
    return Error{Errc::invalid_config, config.source + ": ROUGE-L is for text runs (data.dataset = \"instructions\")"};
  }
  auto records = instruction_records(config, false);
  if (!records) return records.error();
  use_threads(config);
  auto model = build_model(config);
  if (!model) return model.error();
  if (auto ok = (*model)->load_tensors(tensors); !ok) return ok.error();
  (*model)->merge();
  auto made = run_tokenizer(config);
  if (!made) return made.error();
  const Tokenizer& tokenizer = **made;
  const auto n = std::min<std::size_t>(records->size(), static_cast<std::size_t>(samples));
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& r = (*records)[i];
    // The prompt as training showed it, cut the same way to leave room for the answer.
    const auto budget = config.model.lm.max_positions - 1 - std::min<std::int64_t>(max_tokens, config.model.lm.max_positions / 2);
    std::vector<std::int64_t> prompt{tokenizer.bos()};
    for (const auto id : fit_prompt(prompt_parts(r, tokenizer), budget)) prompt.push_back(id);
    const auto answer = generate_greedy(**model, prompt, max_tokens, tokenizer.eos());
    sum += rouge_l(tokenizer.decode(answer), r.response).f1;
  }
  return n == 0 ? 0.0 : sum / static_cast<double>(n);
}

}  // namespace flotilla

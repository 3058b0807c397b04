#include "runtime/experiment/experiment.hpp"

#include "runtime/server/report.hpp"
#include "runtime/storage/durable.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace flotilla {
namespace {

Error bad(const std::string& source, const std::string& why) { return Error{Errc::invalid_config, source + ": " + why}; }

std::string toml_text(const toml::table& t) {
  std::ostringstream out;
  out << t;
  return out.str();
}

/// `over`'s keys into `base`: tables merge key by key, anything else replaces.
void merge_into(toml::table& base, const toml::table& over) {
  for (const auto& [key, value] : over) {
    auto* mine = base.get(key);
    if (value.is_table() && mine != nullptr && mine->is_table()) {
      merge_into(*mine->as_table(), *value.as_table());
    } else {
      base.insert_or_assign(key, value);
    }
  }
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (const double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
/// The sample standard deviation (0 for fewer than two values).
double std_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean_of(v);
  double s = 0;
  for (const double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

/// FNV-1a over what decides a run's result: its config text and the base model it starts from.
std::string config_key(const std::string& text, const std::string& base) {
  std::uint64_t h = 1469598103934665603ULL;
  for (const auto* part : {&text, &base}) {
    for (const char c : *part) {
      h ^= static_cast<unsigned char>(c);
      h *= 1099511628211ULL;
    }
    h ^= 0xFF;
    h *= 1099511628211ULL;
  }
  return fmt::format("{:016x}", h);
}

/// A quoted string for gnuplot: single quotes, a quote written twice.
std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string run_id(const std::string& method, std::uint64_t seed) { return method + "-s" + std::to_string(seed); }

nlohmann::json to_json(const RunSummary& r) {
  nlohmann::json curve = nlohmann::json::array();
  for (const auto& p : r.curve) curve.push_back({p.round, p.metric, p.uploaded, p.downloaded});
  nlohmann::json j = {{"method", r.method},
                      {"seed", r.seed},
                      {"upload_per_round", r.upload_per_round},
                      {"download_per_round", r.download_per_round},
                      {"optimizer_state_bytes", r.optimizer_state_bytes},
                      {"wall_seconds", r.wall_seconds},
                      {"rounds", r.rounds},
                      {"config", r.config_key},
                      {"curve", curve}};
  if (r.final_metric) j["final_metric"] = *r.final_metric;
  if (r.best_metric) j["best_metric"] = *r.best_metric;
  if (r.rouge_l) j["rouge_l"] = *r.rouge_l;
  return j;
}

std::optional<RunSummary> from_json(const std::filesystem::path& path) {
  auto text = read_file(path, 64u << 20);
  if (!text) return std::nullopt;
  try {
    const auto j = nlohmann::json::parse(*text);
    RunSummary r;
    r.ok = true;
    r.method = j.at("method").get<std::string>();
    r.seed = j.at("seed").get<std::uint64_t>();
    r.upload_per_round = j.at("upload_per_round").get<double>();
    r.download_per_round = j.at("download_per_round").get<double>();
    r.optimizer_state_bytes = j.at("optimizer_state_bytes").get<std::uint64_t>();
    r.wall_seconds = j.at("wall_seconds").get<double>();
    r.rounds = j.at("rounds").get<std::uint64_t>();
    r.config_key = j.at("config").get<std::string>();
    r.final_metric = j.at("final_metric").get<double>();
    r.best_metric = j.at("best_metric").get<double>();
    if (j.contains("rouge_l")) r.rouge_l = j["rouge_l"].get<double>();
    for (const auto& p : j.at("curve")) {
      r.curve.push_back({p.at(0).get<std::uint64_t>(), p.at(1).get<double>(), p.at(2).get<double>(), p.at(3).get<double>()});
    }
    return r;
  } catch (const std::exception&) {
    return std::nullopt;  // torn or foreign: the run is run again
  }
}

std::string format_metric(StudyMetric m, double v) {
  return m == StudyMetric::accuracy ? fmt::format("{:.2f} %", 100 * v) : fmt::format("{:.3f}", v);
}
std::string format_metric_pm(StudyMetric m, double mean, double sd) {
  return m == StudyMetric::accuracy ? fmt::format("{:.2f} ± {:.2f} %", 100 * mean, 100 * sd)
                                    : fmt::format("{:.3f} ± {:.3f}", mean, sd);
}

}  // namespace

const char* metric_name(StudyMetric metric) {
  switch (metric) {
    case StudyMetric::accuracy: return "accuracy";
    case StudyMetric::loss: return "loss";
    case StudyMetric::perplexity: return "perplexity";
  }
  return "?";
}
bool higher_is_better(StudyMetric metric) { return metric == StudyMetric::accuracy; }
double metric_value(StudyMetric metric, double loss, double accuracy) {
  switch (metric) {
    case StudyMetric::accuracy: return accuracy;
    case StudyMetric::loss: return loss;
    case StudyMetric::perplexity: return std::exp(std::min(loss, 700.0));
  }
  return 0;
}

Expected<Experiment> parse_experiment(const std::string& text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    return bad(source, fmt::format("line {}: {}", e.source().begin.line, e.description()));
  }
  const auto* exp = root["experiment"].as_table();
  if (exp == nullptr) {
    return bad(source, "has no [experiment] table (is it a run config? run one with `flotilla run`)");
  }
  Experiment e;
  e.source = source;
  e.name = std::filesystem::path(source).stem().string();
  static const std::set<std::string> known = {"name", "seeds", "methods", "metric", "rouge-samples",
                                              "rouge-max-tokens", "pretrain", "method"};
  for (const auto& [key, value] : *exp) {
    if (known.count(std::string(key.str())) == 0) {
      return bad(source, "unknown key 'experiment." + std::string(key.str()) +
                             "' (known: name, seeds, methods, metric, rouge-samples, rouge-max-tokens, "
                             "[experiment.pretrain], [experiment.method.NAME])");
    }
  }
  if (auto n = (*exp)["name"]; n) {
    if (!n.is_string()) return bad(source, "experiment.name must be a string");
    e.name = *n.value<std::string>();
  }
  if (auto s = (*exp)["seeds"]; s) {
    const auto* arr = s.as_array();
    if (arr == nullptr || arr->empty() || arr->size() > 100) return bad(source, "experiment.seeds must be a list of 1 to 100 seeds");
    e.seeds.clear();
    for (const auto& v : *arr) {
      const auto seed = v.value<std::int64_t>();
      if (!v.is_integer() || !seed || *seed < 0) return bad(source, "experiment.seeds: every seed must be an integer >= 0");
      if (std::find(e.seeds.begin(), e.seeds.end(), static_cast<std::uint64_t>(*seed)) != e.seeds.end()) {
        return bad(source, "experiment.seeds lists " + std::to_string(*seed) + " twice");
      }
      e.seeds.push_back(static_cast<std::uint64_t>(*seed));
    }
  }
  const auto* methods = (*exp)["methods"].as_array();
  if (methods == nullptr || methods->empty()) {
    return bad(source, "experiment.methods must list the methods to compare, e.g. [\"fedavg\", \"fedit\"]");
  }
  for (const auto& v : *methods) {
    const auto m = v.value<std::string>();
    if (!v.is_string() || m->empty() || m->size() > 64 ||
        m->find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != std::string::npos) {
      return bad(source, "experiment.methods: every method must be a name of letters, digits, '.', '_' or '-' "
                         "(it names files and CSV rows)");
    }
    if (std::find(e.methods.begin(), e.methods.end(), *m) != e.methods.end()) {
      return bad(source, "experiment.methods lists \"" + *m + "\" twice");
    }
    e.methods.push_back(*m);
  }
  if (auto m = (*exp)["metric"]; m) {
    const auto name = m.value<std::string>();
    if (!name || (*name != "accuracy" && *name != "loss" && *name != "perplexity")) {
      return bad(source, "experiment.metric must be \"accuracy\", \"loss\" or \"perplexity\"");
    }
    e.metric = *name == "accuracy" ? StudyMetric::accuracy : *name == "loss" ? StudyMetric::loss : StudyMetric::perplexity;
  }
  auto integer = [&](const toml::table& t, const std::string& where, const char* key, std::int64_t& out,
                     std::int64_t least, std::int64_t most) -> Expected<void> {
    if (auto v = t[key]; v) {
      const auto i = v.value<std::int64_t>();
      if (!v.is_integer() || *i < least || *i > most) {
        return bad(source, fmt::format("{}.{} must be an integer in [{}, {}]", where, key, least, most));
      }
      out = *i;
    }
    return {};
  };
  if (auto ok = integer(*exp, "experiment", "rouge-samples", e.rouge_samples, 0, 100'000); !ok) return ok.error();
  if (auto ok = integer(*exp, "experiment", "rouge-max-tokens", e.rouge_max_tokens, 1, 100'000); !ok) return ok.error();
  if (const auto* p = (*exp)["pretrain"].as_table()) {
    PretrainSpec spec;
    static const std::set<std::string> pk = {"steps", "batch-size", "learning-rate", "optimizer", "classes", "data"};
    for (const auto& [key, value] : *p) {
      if (pk.count(std::string(key.str())) == 0) {
        return bad(source, "unknown key 'experiment.pretrain." + std::string(key.str()) +
                               "' (known: steps, batch-size, learning-rate, optimizer, classes, data)");
      }
    }
    if (auto ok = integer(*p, "experiment.pretrain", "steps", spec.steps, 1, 100'000'000); !ok) return ok.error();
    if (spec.steps == 0) return bad(source, "experiment.pretrain.steps must be set (> 0)");
    if (auto ok = integer(*p, "experiment.pretrain", "batch-size", spec.batch_size, 1, 1 << 20); !ok) return ok.error();
    if (auto lr = (*p)["learning-rate"]; lr) {
      const auto v = lr.value<double>();
      if (!v || !(*v > 0) || !std::isfinite(*v)) return bad(source, "experiment.pretrain.learning-rate must be > 0");
      spec.learning_rate = *v;
    }
    if (auto o = (*p)["optimizer"]; o) {
      if (!o.is_string()) return bad(source, "experiment.pretrain.optimizer must be an optimizer plugin's name");
      spec.optimizer = *o.value<std::string>();
    }
    if (auto d = (*p)["data"]; d) {
      if (!d.is_string()) return bad(source, "experiment.pretrain.data must be a path");
      spec.data = *d.value<std::string>();
    }
    if (const auto* c = (*p)["classes"].as_array()) {
      for (const auto& v : *c) {
        const auto label = v.value<std::int64_t>();
        if (!v.is_integer() || *label < 0 || *label > 1'000'000) return bad(source, "experiment.pretrain.classes must be class labels (integers >= 0)");
        spec.classes.push_back(*label);
      }
    }
    e.pretrain = spec;
  }
  const auto* method_tables = (*exp)["method"].as_table();
  if ((*exp)["method"] && method_tables == nullptr) return bad(source, "experiment.method must be tables: [experiment.method.NAME]");
  if (method_tables != nullptr) {
    for (const auto& [key, value] : *method_tables) {
      const std::string m(key.str());
      if (std::find(e.methods.begin(), e.methods.end(), m) == e.methods.end()) {
        return bad(source, "[experiment.method." + m + "] is not in experiment.methods (a typo? or add it to the list)");
      }
      if (!value.is_table()) return bad(source, "experiment.method." + m + " must be a table of run-config sections");
      if (value.as_table()->contains("experiment")) return bad(source, "experiment.method." + m + " cannot hold an [experiment] table");
    }
  }
  for (const auto& m : e.methods) {
    const toml::node* t = method_tables != nullptr ? method_tables->get(m) : nullptr;
    e.method_toml.push_back(t != nullptr ? toml_text(*t->as_table()) : std::string());
  }
  toml::table base = root;
  base.erase("experiment");
  e.base_toml = toml_text(base);
  // Every method's config, checked now: a typo fails before hours of runs.
  for (const auto& m : e.methods) {
    auto text = run_config_text(e, m, e.seeds.front(), e.pretrain ? "pretrained.safetensors" : "");
    if (!text) return text.error();
    auto config = parse_config(*text, source + " [experiment.method." + m + "]");
    if (!config) return config.error();
    if (e.rouge_samples > 0 && config->data.dataset != "instructions") {
      return bad(source, "experiment.rouge-samples is for text (data.dataset = \"instructions\"); method \"" + m +
                             "\" trains on " + config->data.dataset);
    }
    if (!config->checkpoint.dir.empty()) {
      return bad(source, "checkpoint.dir is set (method \"" + m + "\"): a study's runs would all write and resume "
                         "there; leave it out of a study");
    }
  }
  return e;
}

Expected<Experiment> load_experiment(const std::filesystem::path& path) {
  auto text = read_file(path, 1u << 20);
  if (!text) return Error{Errc::invalid_config, text.error().message};
  return parse_experiment(*text, path.string());
}

Expected<std::string> run_config_text(const Experiment& e, const std::string& method, std::uint64_t seed,
                                      const std::string& checkpoint) {
  const auto at = std::find(e.methods.begin(), e.methods.end(), method);
  if (!method.empty() && at == e.methods.end()) {
    return Error{Errc::invalid_argument, e.source + ": no method \"" + method + "\" in experiment.methods"};
  }
  try {
    auto config = toml::parse(e.base_toml);
    if (!method.empty()) {
      const auto& over = e.method_toml[static_cast<std::size_t>(at - e.methods.begin())];
      if (!over.empty()) merge_into(config, toml::parse(over));
    }
    if (!config["run"]) config.insert("run", toml::table{});
    auto* run = config["run"].as_table();
    if (run == nullptr) return bad(e.source, "[run] must be a table");
    run->insert_or_assign("seed", static_cast<std::int64_t>(seed));
    run->insert_or_assign("name", e.name + "-" + (method.empty() ? std::string("base") : method) + "-s" + std::to_string(seed));
    if (!checkpoint.empty()) {
      if (!config["model"]) config.insert("model", toml::table{});
      auto* model = config["model"].as_table();
      if (model == nullptr) return bad(e.source, "[model] must be a table");
      model->insert_or_assign("checkpoint", checkpoint);
    }
    return toml_text(config);
  } catch (const toml::parse_error& err) {
    return bad(e.source, std::string("cannot merge the method's tables: ") + std::string(err.description()));
  }
}

RunSummary summarize_run(const Experiment& e, const std::string& method, std::uint64_t seed, const RunOutput& out,
                         double wall_seconds) {
  RunSummary r;
  r.method = method;
  r.seed = seed;
  r.ok = true;
  r.wall_seconds = wall_seconds;
  r.rouge_l = out.rouge_l;
  double up = 0, down = 0, uploaded = 0, downloaded = 0;
  std::uint64_t trained = 0;
  for (const auto& rec : out.rounds) {
    if (rec.round > 0 && !rec.failed) {
      ++trained;
      up += rec.bytes_per_client();
      down += rec.download_per_client();
      uploaded += rec.bytes_per_client();
      downloaded += rec.download_per_client();
    }
    r.optimizer_state_bytes = std::max(r.optimizer_state_bytes, rec.optimizer_state_bytes);
    if (rec.eval_loss && rec.eval_accuracy) {
      const double v = metric_value(e.metric, *rec.eval_loss, *rec.eval_accuracy);
      r.curve.push_back({rec.round, v, uploaded, downloaded});
      r.final_metric = v;
      if (!r.best_metric || (higher_is_better(e.metric) ? v > *r.best_metric : v < *r.best_metric)) r.best_metric = v;
    }
  }
  r.rounds = trained;
  if (trained > 0) {
    r.upload_per_round = up / static_cast<double>(trained);
    r.download_per_round = down / static_cast<double>(trained);
  }
  return r;
}

std::string markdown_table(const Experiment& e, const std::vector<RunSummary>& runs) {
  const bool rouge = std::any_of(runs.begin(), runs.end(), [](const RunSummary& r) { return r.rouge_l.has_value(); });
  std::string out = fmt::format("| method | final {} (mean ± std) | best {} |{} upload / client / round | download / client / "
                                "round | optimizer state / client | wall time / run | runs |\n",
                                metric_name(e.metric), metric_name(e.metric), rouge ? " ROUGE-L F1 |" : "");
  out += std::string("|---|---|---|") + (rouge ? "---|" : "") + "---|---|---|---|---|\n";
  for (const auto& m : e.methods) {
    std::vector<double> finals, bests, rouges, ups, downs, walls;
    std::uint64_t opt = 0;
    std::size_t total = 0, failed = 0;
    for (const auto& r : runs) {
      if (r.method != m) continue;
      ++total;
      if (!r.ok || !r.final_metric) {
        ++failed;
        continue;
      }
      finals.push_back(*r.final_metric);
      bests.push_back(*r.best_metric);
      if (r.rouge_l) rouges.push_back(*r.rouge_l);
      ups.push_back(r.upload_per_round);
      downs.push_back(r.download_per_round);
      walls.push_back(r.wall_seconds);
      opt = std::max(opt, r.optimizer_state_bytes);
    }
    if (total == 0) continue;
    const std::string runs_cell = failed == 0 ? std::to_string(total) : fmt::format("{} ({} failed)", total, failed);
    if (finals.empty()) {
      out += fmt::format("| {} | – | – |{} – | – | – | – | {} |\n", m, rouge ? " – |" : "", runs_cell);
      continue;
    }
    const auto best = higher_is_better(e.metric) ? *std::max_element(bests.begin(), bests.end())
                                                 : *std::min_element(bests.begin(), bests.end());
    out += fmt::format("| {} | {} | {} |{} {} | {} | {} | {:.1f} s | {} |\n", m,
                       format_metric_pm(e.metric, mean_of(finals), std_of(finals)), format_metric(e.metric, best),
                       rouge ? (rouges.empty() ? std::string(" – |")
                                               : fmt::format(" {:.3f} ± {:.3f} |", mean_of(rouges), std_of(rouges)))
                             : std::string(),
                       human_bytes(mean_of(ups)), human_bytes(mean_of(downs)), opt > 0 ? human_bytes(static_cast<double>(opt)) : "–",
                       mean_of(walls), runs_cell);
  }
  return out;
}

Expected<std::vector<RunSummary>> run_experiment(const Experiment& e, const std::filesystem::path& dir,
                                                 const RunFunction& run, const ExperimentOptions& options) {
  namespace fs = std::filesystem;
  for (const auto& m : options.only_methods) {
    if (std::find(e.methods.begin(), e.methods.end(), m) == e.methods.end()) {
      return Error{Errc::invalid_argument, "--methods: \"" + m + "\" is not one of " + e.source + "'s experiment.methods"};
    }
  }
  for (const auto s : options.only_seeds) {
    if (std::find(e.seeds.begin(), e.seeds.end(), s) == e.seeds.end()) {
      return Error{Errc::invalid_argument, "--seeds: " + std::to_string(s) + " is not one of " + e.source + "'s experiment.seeds"};
    }
  }
  auto wanted_method = [&](const std::string& m) {
    return options.only_methods.empty() || std::find(options.only_methods.begin(), options.only_methods.end(), m) != options.only_methods.end();
  };
  auto wanted_seed = [&](std::uint64_t s) {
    return options.only_seeds.empty() || std::find(options.only_seeds.begin(), options.only_seeds.end(), s) != options.only_seeds.end();
  };
  std::error_code ec;
  fs::create_directories(dir / "runs", ec);
  if (ec) return Error{Errc::io, "cannot create '" + (dir / "runs").string() + "': " + ec.message()};
  // Every (method, seed) of the study, each with the key of what decides its result: a run
  // finished with the same config and base is read back, never run again; one not asked for
  // this time still counts in the table if it was finished before.
  struct Planned {
    std::string method;
    std::uint64_t seed;
    Expected<std::string> text;
    std::string key;
    bool wanted;
  };
  std::vector<Planned> plan;
  std::size_t total = 0;
  for (const auto& m : e.methods) {
    for (const auto s : e.seeds) {
      auto text = run_config_text(e, m, s, options.checkpoint);
      const auto key = text ? config_key(*text, options.base_fingerprint) : std::string();
      const bool wanted = wanted_method(m) && wanted_seed(s);
      total += wanted ? 1 : 0;
      plan.push_back({m, s, std::move(text), key, wanted});
    }
  }
  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  std::vector<RunSummary> results;
  results.reserve(plan.size());
  std::size_t done = 0;
  for (auto& p : plan) {
    const auto run_dir = dir / "runs" / run_id(p.method, p.seed);
    auto earlier = from_json(run_dir / "result.json");
    const bool reusable = earlier && earlier->method == p.method && earlier->seed == p.seed && !p.key.empty() &&
                          earlier->config_key == p.key;
    if (!p.wanted) {
      if (reusable) results.push_back(std::move(*earlier));
      continue;
    }
    ExperimentProgress progress{done, total, p.method, p.seed, elapsed(), nullptr, false};
    if (reusable) {
      results.push_back(std::move(*earlier));
      progress.done = ++done;
      progress.finished = &results.back();
      progress.reused = true;
      if (options.on_progress) options.on_progress(progress);
      continue;
    }
    if (options.on_progress) options.on_progress(progress);
    RunSummary summary;
    summary.method = p.method;
    summary.seed = p.seed;
    Expected<Config> config = p.text ? parse_config(*p.text, (run_dir / "config.toml").string()) : Expected<Config>(p.text.error());
    fs::create_directories(run_dir, ec);
    fs::remove(run_dir / "result.json", ec);  // another config's result: gone before this run starts
    if (p.text) (void)write_file_durably(run_dir / "config.toml", *p.text);
    if (!config) {
      summary.failure = config.error().message;
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      auto out = run(*config, run_dir);
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!out) {
        summary.failure = out.error().message;
      } else {
        summary = summarize_run(e, p.method, p.seed, *out, wall);
        summary.config_key = p.key;
        if (!summary.final_metric) {
          summary.ok = false;
          summary.failure = "the evaluator reported nothing (evaluator.enabled = false?)";
        } else if (auto w = write_file_durably(run_dir / "result.json", to_json(summary).dump(1)); !w) {
          return w.error();
        }
      }
    }
    results.push_back(std::move(summary));
    progress.done = ++done;
    progress.elapsed_seconds = elapsed();
    progress.finished = &results.back();
    if (options.on_progress) options.on_progress(progress);
  }

  // runs.csv: one row per run.
  std::string csv = "method,seed,ok,final_" + std::string(metric_name(e.metric)) + ",best_" + metric_name(e.metric) +
                    ",rouge_l,upload_per_round,download_per_round,optimizer_state_bytes,rounds,wall_seconds,failure\n";
  for (const auto& r : results) {
    auto opt = [](const std::optional<double>& v) { return v ? fmt::format("{:.6f}", *v) : std::string(); };
    std::string failure = r.failure;
    std::replace(failure.begin(), failure.end(), '"', '\'');
    std::replace(failure.begin(), failure.end(), '\n', ' ');
    csv += fmt::format("{},{},{},{},{},{},{:.0f},{:.0f},{},{},{:.2f},\"{}\"\n", r.method, r.seed, r.ok ? 1 : 0,
                       opt(r.final_metric), opt(r.best_metric), opt(r.rouge_l), r.upload_per_round,
                       r.download_per_round, r.optimizer_state_bytes, r.rounds, r.wall_seconds, failure);
  }
  if (auto w = write_file_durably(dir / "runs.csv", csv); !w) return w.error();

  // summary.md: the table, then what each column means and which runs failed.
  std::string md = "# " + e.name + "\n\n" + markdown_table(e, results) + "\n";
  md += fmt::format("Final {0}: the evaluator's last reading of the global model, mean ± sample standard deviation "
                    "over seeds {1}. Upload and download: tensor bytes one client sent and received per round. "
                    "Optimizer state: the most a client reported holding. Config of each run: runs/<method>-s<seed>/config.toml.\n",
                    metric_name(e.metric), fmt::join(e.seeds, ", "));
  for (const auto& r : results) {
    if (!r.ok) md += "\n- **" + run_id(r.method, r.seed) + " failed**: " + r.failure;
  }
  if (auto w = write_file_durably(dir / "summary.md", md); !w) return w.error();

  // Curves: per method, the mean over its seeds at each evaluated round.
  fs::create_directories(dir / "curves", ec);
  std::vector<std::string> plotted;
  for (const auto& m : e.methods) {
    std::map<std::uint64_t, std::vector<RunSummary::Point>> by_round;
    for (const auto& r : results) {
      if (r.method != m || !r.ok) continue;
      for (const auto& p : r.curve) by_round[p.round].push_back(p);
    }
    if (by_round.empty()) continue;
    std::string dat = "# round mean_" + std::string(metric_name(e.metric)) + " std uploaded_bytes downloaded_bytes runs\n";
    for (const auto& [round, points] : by_round) {
      std::vector<double> v, up, down;
      for (const auto& p : points) {
        v.push_back(p.metric);
        up.push_back(p.uploaded);
        down.push_back(p.downloaded);
      }
      const double scale = e.metric == StudyMetric::accuracy ? 100 : 1;
      dat += fmt::format("{} {:.6f} {:.6f} {:.0f} {:.0f} {}\n", round, scale * mean_of(v), scale * std_of(v), mean_of(up),
                         mean_of(down), points.size());
    }
    if (auto w = write_file_durably(dir / "curves" / (m + ".dat"), dat); !w) return w.error();
    plotted.push_back(m);
  }
  const std::string ylabel = e.metric == StudyMetric::accuracy ? "test accuracy (%)"
                             : e.metric == StudyMetric::loss   ? "held-out loss"
                                                               : "held-out perplexity";
  auto plot_lines = [&](const std::string& using_) {
    std::string s;
    for (std::size_t k = 0; k < plotted.size(); ++k) {
      s += fmt::format("{}'curves/{}.dat' using {} with linespoints title {}", k == 0 ? "plot " : ", \\\n     ",
                       plotted[k], using_, gp_quote(plotted[k]));
    }
    return s + "\n";
  };
  std::string gp = "# gnuplot plots.gp (run in this directory): the metric against rounds and against bytes sent\n"
                   "set terminal pngcairo size 960,600 noenhanced\nset grid\nset key outside right\n"
                   "set ylabel '" + ylabel + "'\n";
  if (!plotted.empty()) {
    gp += "set output 'metric_by_round.png'\nset title " +
          gp_quote(e.name + ": " + ylabel + " by round (mean of " + std::to_string(e.seeds.size()) + " seeds)") +
          "\nset xlabel 'round'\n" + plot_lines("1:2");
    gp += "set output 'metric_by_upload.png'\nset title " + gp_quote(e.name + ": " + ylabel + " against what a client sent") +
          "\nset xlabel 'MiB sent per client (cumulative)'\nset logscale x\n" + plot_lines("($4/1048576):2");
  }
  if (auto w = write_file_durably(dir / "plots.gp", gp); !w) return w.error();
  return results;
}

Expected<std::vector<std::filesystem::path>> render_plots(const std::filesystem::path& dir) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    return Error{Errc::io, "gnuplot is not installed (sudo apt-get install gnuplot-nox); the curves are in " +
                               (dir / "curves").string() + ", and `gnuplot plots.gp` there draws them"};
  }
  const std::string command = "cd '" + dir.string() + "' && gnuplot plots.gp 2>&1";
  if (dir.string().find('\'') != std::string::npos) return Error{Errc::io, "an output directory with a quote in its name"};
  if (std::system(command.c_str()) != 0) return Error{Errc::io, "gnuplot failed on " + (dir / "plots.gp").string()};
  std::vector<std::filesystem::path> out;
  for (const char* png : {"metric_by_round.png", "metric_by_upload.png"}) {
    if (std::filesystem::exists(dir / png)) out.push_back(dir / png);
  }
  return out;
}

}  // namespace flotilla

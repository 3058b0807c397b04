/// `flotilla`: run a whole federation in one process, or one role of it per process.
#include "actors/roles.hpp"
#include "monitoring/server.hpp"
#include "runtime/net/admin.hpp"
#include "runtime/setup/config.hpp"
#include "runtime/setup/federation.hpp"
#include "runtime/plugin_host/plugin_host.hpp"
#include "runtime/base/log.hpp"
#include "runtime/experiment/experiment.hpp"
#include "runtime/experiment/pretrain.hpp"
#include "runtime/server/report.hpp"
#include "runtime/sim/simulator.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <thread>

using namespace flotilla;

namespace {

/// Prints progress lines and the final summary, and writes rounds.csv when asked to.
struct Reporter {
  std::uint64_t total_rounds = 0;
  ScheduleKind kind = ScheduleKind::sync;
  std::optional<RoundsCsv> csv;
  std::optional<double> best_accuracy, last_accuracy;
  double elapsed = 0;

  actors::AggregatorHooks hooks() {
    return {
        [this](const RoundRecord& r) {
          std::cout << progress_line(r, total_rounds, kind) << std::endl;
          if (csv) csv->append(r);
          if (r.eval_accuracy) {
            last_accuracy = r.eval_accuracy;
            if (!best_accuracy || *r.eval_accuracy > *best_accuracy) best_accuracy = r.eval_accuracy;
          }
          elapsed = std::max(elapsed, r.elapsed_seconds);
        },
        [this](const Schedule& rounds) {
          const auto& c = rounds.counters();
          std::cout << fmt::format(
                           "done: {} {} ({} failed), model version {}, {:.1f}s; updates: {} "
                           "accepted, {} late, {} rejected, {} malformed messages",
                           c.rounds_completed + c.rounds_failed,
                           kind == ScheduleKind::sync ? "rounds" : "versions", c.rounds_failed,
                           rounds.model_version(), elapsed, c.updates_accepted, c.updates_late,
                           c.updates_rejected, c.messages_malformed)
                    << std::endl;
          std::string reasons;
          for (std::size_t i = 0; i < kRejectReasons; ++i) {
            if (c.rejected_by_reason[i] == 0) continue;
            reasons += fmt::format("{}{} {}", reasons.empty() ? "" : ", ",
                                   to_string(static_cast<RejectReason>(i)), c.rejected_by_reason[i]);
          }
          if (!reasons.empty()) std::cout << "updates dropped by reason: " << reasons << std::endl;
          if (kind != ScheduleKind::sync) {
            std::cout << fmt::format("schedule {}: {} tasks sent, {} lost (no update by the "
                                     "deadline), {} updates dropped as stale",
                                     rounds.describe(), c.tasks_sent, c.tasks_lost,
                                     c.rejected(RejectReason::stale))
                      << std::endl;
          }
          if (c.plugin_reloads + c.plugin_reload_failures > 0) {
            std::cout << fmt::format("aggregation plugin: {} reload(s), {} failed; now {}",
                                     c.plugin_reloads, c.plugin_reload_failures,
                                     rounds.aggregation().describe())
                      << std::endl;
          }
          if (last_accuracy) {
            std::cout << fmt::format("final accuracy {:.2f}% (best {:.2f}%)", 100 * *last_accuracy,
                                     100 * *best_accuracy)
                      << std::endl;
          }
          if (csv) std::cout << "per-round metrics: " << csv->path() << std::endl;
        },
        /*on_events=*/{},
    };
  }
};

/// `flotilla plugins list DIR`: one line per library, or why it does not load.
int list_plugins(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    std::cerr << "flotilla: plugin directory '" << dir.string() << "' does not exist" << std::endl;
    return 2;
  }
  const auto found = scan_plugins(dir);
  std::cout << dir.string() << ": " << found.size() << " plugin file(s)" << std::endl;
  int broken = 0;
  for (const auto& f : found) {
    if (!f.info) {
      ++broken;
      std::cout << fmt::format("  {:<28} NOT LOADABLE: {}", f.path.filename().string(),
                               f.info.error().message)
                << std::endl;
      continue;
    }
    const auto& i = *f.info;
    std::cout << fmt::format("  {:<16} {:<10} {:<8} ABI {}.{}  {}", i.name, kind_name(i.kind),
                             i.version, i.abi_major, i.abi_minor, f.path.filename().string())
              << std::endl;
    if (!i.description.empty()) std::cout << "      " << i.description << std::endl;
    for (const auto& o : i.options) {
      std::cout << fmt::format("      option {} ({}, default {}): {}", o.key, o.type,
                               o.default_value, o.help)
                << std::endl;
    }
  }
  return broken == 0 ? 0 : 1;
}

/// The simulator's own account: virtual and wall time, what the compute went to, memory.
void print_simulation(const SimulationReport& r) {
  std::cout << fmt::format(
                   "simulated {:.1f} s of a {}-client fleet in {:.1f} s of wall time ({:.1f}x real "
                   "time, {} worker{}; setup {:.1f} s)",
                   r.virtual_seconds, r.clients, r.wall_seconds,
                   r.wall_seconds > 0 ? r.virtual_seconds / r.wall_seconds : 0.0, r.workers,
                   r.workers == 1 ? "" : "s", r.setup_seconds)
            << std::endl;
  std::cout << fmt::format(
                   "compute: local training {:.1f} s over {} tasks, evaluation {:.1f} s; overhead "
                   "{:.2f} (wall x workers / training; {:.2f} counting evaluation)",
                   r.training_seconds, r.tasks_trained, r.evaluation_seconds, r.overhead(),
                   r.overhead_with_evaluation())
            << std::endl;
  std::cout << fmt::format("devices: {} tasks dropped mid-way, {} sent to an offline device, {} "
                           "failed; {} events ({:.0f}/s), {} heartbeats",
                           r.tasks_dropped, r.tasks_unreached, r.tasks_failed, r.events,
                           r.wall_seconds > 0 ? static_cast<double>(r.events) / r.wall_seconds : 0.0,
                           r.heartbeats)
            << std::endl;
  std::cout << fmt::format("memory: {} per idle client, peak resident {}",
                           human_bytes(static_cast<double>(r.idle_bytes_per_client)),
                           human_bytes(static_cast<double>(r.peak_resident_bytes)))
            << std::endl;
}

/// This process's metrics endpoint (metrics.listen, or --metrics-listen), when one is asked for.
struct Monitoring {
  monitoring::MetricsPtr metrics;
  std::unique_ptr<monitoring::MetricsServer> server;
  Duration hold{0};

  [[nodiscard]] monitoring::Metrics* get() const { return metrics.get(); }
  /// Keeps serving for metrics.hold after the run, so that the last values are scraped.
  void linger() const {
    if (!server || hold.count() <= 0) return;
    std::cout << fmt::format("serving metrics at {} for {:.0f} s more (metrics.hold)", server->url(),
                             std::chrono::duration<double>(hold).count())
              << std::endl;
    std::this_thread::sleep_for(hold);
  }
};

std::optional<Monitoring> start_monitoring(const Config& config, const std::string& listen_flag) {
  Monitoring m;
  const std::string listen = listen_flag.empty() ? config.metrics.listen : listen_flag;
  if (listen.empty()) return m;
  m.metrics = std::make_shared<monitoring::Metrics>();
  auto server = monitoring::MetricsServer::start(listen, m.metrics);
  if (!server) {
    std::cerr << "flotilla: " << config.source << ": " << server.error().message << std::endl;
    return std::nullopt;
  }
  m.server = std::move(server).value();
  m.hold = config.metrics.hold;
  std::cout << "metrics: " << m.server->url() << std::endl;
  return m;
}

int finish(const actors::RoleResult& result) {
  if (result.code != 0) std::cerr << "flotilla: " << result.message << std::endl;
  return result.code;
}

std::optional<Config> load(const std::string& path) {
  auto config = load_config(path);
  if (!config) {
    std::cerr << "flotilla: " << config.error().message << std::endl;
    return std::nullopt;
  }
  return std::move(config).value();
}


/// "[████████░░░░░░░░]  8/24": where a study is.
std::string progress_bar(std::size_t done, std::size_t total) {
  const std::size_t width = 20;
  const std::size_t filled = total == 0 ? width : done * width / total;
  std::string bar = "[";
  for (std::size_t i = 0; i < width; ++i) bar += i < filled ? "#" : ".";
  return bar + fmt::format("] {:>{}}/{}", done, std::to_string(total).size(), total);
}

/// `flotilla experiment STUDY --output DIR`: pretrains a base if asked, runs every method with
/// every seed (resuming what an earlier invocation finished), writes the table and the plots.
int run_study(const std::string& path, const std::filesystem::path& dir, ExperimentOptions options) {
  auto study = load_experiment(path);
  if (!study) {
    std::cerr << "flotilla: " << study.error().message << std::endl;
    return 2;
  }
  const auto& e = *study;
  std::cout << fmt::format("experiment {}: {} method(s) x {} seed(s), metric {}; output {}", e.name,
                           options.only_methods.empty() ? e.methods.size() : options.only_methods.size(),
                           options.only_seeds.empty() ? e.seeds.size() : options.only_seeds.size(), metric_name(e.metric),
                           dir.string())
            << std::endl;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    std::cerr << "flotilla: cannot create '" << dir.string() << "': " << ec.message() << std::endl;
    return 1;
  }
  if (e.pretrain) {
    auto text = run_config_text(e, "", e.seeds.front());  // the base config, without any method's tables
    auto base = text ? parse_config(*text, e.source) : Expected<Config>(text.error());
    if (!base) {
      std::cerr << "flotilla: " << base.error().message << std::endl;
      return 2;
    }
    const auto out = dir / "pretrained.safetensors";
    const bool tty = ::isatty(STDOUT_FILENO) != 0;
    auto report = pretrain_base(*base, *e.pretrain, out, [&](std::int64_t step, std::int64_t steps, double loss) {
      const auto line = fmt::format("pretraining the base model: step {}/{}, loss {:.4f}", step, steps, loss);
      if (tty) {
        std::cout << "\r" << line << std::flush;
      } else if (step == steps || step % std::max<std::int64_t>(1, steps / 4) < std::max<std::int64_t>(1, steps / 20)) {
        std::cout << line << std::endl;
      }
    });
    if (tty) std::cout << std::endl;
    if (!report) {
      std::cerr << "flotilla: pretraining failed: " << report.error().message << std::endl;
      return 1;
    }
    if (report->reused) {
      std::cout << "pretrained base: " << out.string() << " (already made with these settings)" << std::endl;
    } else {
      std::cout << fmt::format("pretrained base: {} examples, loss {:.4f} -> {:.4f} (accuracy {:.2f}%), {:.1f} s; {}",
                               report->examples, report->loss_before, report->loss_after, 100 * report->accuracy_after,
                               report->seconds, out.string())
                << std::endl;
    }
    options.checkpoint = std::filesystem::absolute(out).string();
    options.base_fingerprint = report->fingerprint;
  }
  const RunFunction run = [&e](const Config& config, const std::filesystem::path& run_dir) -> Expected<RunOutput> {
    RunOutput out;
    auto csv = RoundsCsv::open(run_dir.string());
    if (!csv) return csv.error();
    ScheduleHooks hooks{[&](const RoundRecord& r) {
                          out.rounds.push_back(r);
                          csv->append(r);
                        },
                        [&](const Schedule& s) { out.final_model = s.model(); }, {}};
    actors::RoleResult result{0, {}};
    if (config.run.mode == RunMode::simulate) {
      auto report = simulate(config, SimulationHooks{std::move(hooks), {}});
      result = !report ? actors::RoleResult{1, report.error().message} : actors::RoleResult{report->failure.empty() ? 0 : 1, report->failure};
    } else {
      result = actors::run_all(config, std::move(hooks));
    }
    if (result.code != 0) return Error{Errc::internal, result.message};
    if (e.rouge_samples > 0) {
      auto rouge = rouge_of_model(config, out.final_model, e.rouge_samples, e.rouge_max_tokens);
      if (!rouge) return Error{rouge.error().code, "ROUGE-L: " + rouge.error().message};
      out.rouge_l = *rouge;
    }
    return out;
  };
  std::size_t ran = 0;
  options.on_progress = [&](const ExperimentProgress& p) {
    if (p.finished == nullptr) {
      std::cout << progress_bar(p.done, p.total) << "  " << p.method << " seed " << p.seed << " ..." << std::endl;
      return;
    }
    const auto& r = *p.finished;
    std::string what;
    if (!r.ok) {
      what = "FAILED: " + r.failure;
    } else {
      what = fmt::format("{} {}", metric_name(e.metric),
                         e.metric == StudyMetric::accuracy ? fmt::format("{:.2f}%", 100 * *r.final_metric)
                                                           : fmt::format("{:.4f}", *r.final_metric));
      if (r.rouge_l) what += fmt::format(", ROUGE-L {:.3f}", *r.rouge_l);
      what += fmt::format(", {:.1f} s", r.wall_seconds);
    }
    if (!p.reused) ++ran;
    std::string eta;
    if (!p.reused && ran > 0 && p.done < p.total) {
      const double left = p.elapsed_seconds / static_cast<double>(ran) * static_cast<double>(p.total - p.done);
      eta = left < 90 ? fmt::format("; about {:.0f} s left", left) : fmt::format("; about {:.0f} min left", left / 60);
    }
    std::cout << progress_bar(p.done, p.total) << "  " << r.method << " seed " << r.seed << ": "
              << (p.reused ? "done earlier, " : "") << what << eta << std::endl;
  };
  auto results = run_experiment(e, dir, run, options);
  if (!results) {
    std::cerr << "flotilla: " << results.error().message << std::endl;
    return 1;
  }
  std::cout << "\n" << markdown_table(e, *results) << "\n"
            << "table: " << (dir / "summary.md").string() << ", per run: " << (dir / "runs.csv").string() << std::endl;
  auto plots = render_plots(dir);
  if (!plots) {
    std::cout << "plots not drawn: " << plots.error().message << std::endl;
  } else {
    for (const auto& png : *plots) std::cout << "plot: " << png.string() << std::endl;
  }
  const auto failed = std::count_if(results->begin(), results->end(), [](const RunSummary& r) { return !r.ok; });
  if (failed > 0) std::cerr << "flotilla: " << failed << " run(s) failed; see " << (dir / "summary.md").string() << std::endl;
  return failed > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Flotilla: federated learning runtime.\n"
               "Every role of a run reads the same TOML config (see docs/config.md)."};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();

  std::string config_path, output, connect, listen, metrics_listen, admin_listen;
  std::uint32_t id = 0;

  auto* run = app.add_subcommand("run", "Run the whole federation (aggregator, evaluator, every "
                                        "client) in this process");
  run->add_option("CONFIG", config_path, "Run config (TOML)")->required()->check(CLI::ExistingFile);
  run->add_option("--output", output, "Directory for rounds.csv (default: run.output)");

  auto* experiment = app.add_subcommand(
      "experiment", "Run a study (e.g. examples/study/image.toml): each of its methods with each of its "
                    "seeds, then a table (summary.md) and plots; an interrupted study resumes");
  experiment->add_option("STUDY", config_path, "Study file (TOML with an [experiment] table)")
      ->required()
      ->check(CLI::ExistingFile);
  experiment->add_option("--output", output, "Directory for the runs, runs.csv, summary.md and the plots")->required();
  ExperimentOptions study_options;
  experiment->add_option("--methods", study_options.only_methods, "Only these methods (comma-separated)")->delimiter(',');
  experiment->add_option("--seeds", study_options.only_seeds, "Only these seeds (comma-separated)")->delimiter(',');

  auto* agg = app.add_subcommand("aggregator", "Run the aggregator");
  agg->add_option("CONFIG", config_path, "Run config (TOML)")->required()->check(CLI::ExistingFile);
  agg->add_option("--listen", listen, "Endpoint to bind (default: aggregator.listen)");
  agg->add_option("--output", output, "Directory for rounds.csv (default: run.output)");
  std::string resume_dir;
  agg->add_option("--resume", resume_dir,
                  "Continue the run checkpointed in DIR (its checkpoint.dir) after a crash or kill: "
                  "the latest good checkpoint, then every update journaled after it")
      ->check(CLI::ExistingDirectory);

  auto* client = app.add_subcommand("client", "Run one client");
  client->add_option("CONFIG", config_path, "Run config (TOML)")->required()->check(CLI::ExistingFile);
  client->add_option("--id", id, "Client id, 0 .. data.clients-1 (picks its data partition)")
      ->required();
  client->add_option("--connect", connect, "Aggregator endpoint, e.g. tcp://10.0.0.5:5555")
      ->required();

  auto* eval = app.add_subcommand("evaluator", "Run the evaluator");
  eval->add_option("CONFIG", config_path, "Run config (TOML)")->required()->check(CLI::ExistingFile);
  eval->add_option("--connect", connect, "Aggregator endpoint")->required();
  for (auto* sub : {run, agg}) {
    sub->add_option("--admin-listen", admin_listen,
                    "Take `flotilla admin` commands here, e.g. ipc:///run/user/1000/flotilla-admin "
                    "(default: aggregator.admin-listen; never the clients' endpoint)");
  }
  for (auto* sub : {run, agg, client, eval}) {
    sub->add_option("--metrics-listen", metrics_listen,
                    "Serve Prometheus metrics on HOST:PORT (default: metrics.listen; port 0 = any)");
  }

  auto* keygen = app.add_subcommand(
      "keygen", "Make a CurveZMQ key pair for security.mode = \"curve\": DIR/NAME.key (secret, "
                "owner-only) and DIR/NAME.pub (to authorize NAME on the aggregator)");
  std::string key_name, key_dir = "keys";
  keygen->add_option("NAME", key_name,
                     "The id the key is for: aggregator, evaluator, client-<id>, or an operator's name")
      ->required();
  keygen->add_option("--dir", key_dir, "Where to write the files")->capture_default_str();

  auto* plugins = app.add_subcommand("plugins", "Inspect plugins");
  plugins->require_subcommand(1);
  std::string plugin_dir;
  auto* plugins_list = plugins->add_subcommand(
      "list", "List the plugins in DIR (default: the built-in plugins) with versions and ABI");
  plugins_list->add_option("DIR", plugin_dir, "Directory of plugin libraries (*.so)");

  auto* adm = app.add_subcommand("admin", "Send an operator's command to a running aggregator");
  adm->require_subcommand(1);
  auto* adm_reload = adm->add_subcommand(
      "reload", "Reload the aggregation plugin's file (switches between rounds, keeps its state)");
  auto* adm_status = adm->add_subcommand("status", "Show the run's round, model and plugin");
  double admin_timeout = 10;
  std::string admin_key, admin_server_key;
  for (auto* sub : {adm_reload, adm_status}) {
    sub->add_option("--key", admin_key,
                    "Under security.mode = \"curve\": this operator's key (NAME.key from `flotilla "
                    "keygen NAME`; NAME.pub must be in the aggregator's security.admins)");
    sub->add_option("--server-key", admin_server_key,
                    "Under curve: the aggregator's public key (aggregator.pub)");
    sub->add_option("--connect", connect,
                    "The aggregator's admin endpoint (aggregator.admin-listen), e.g. "
                    "ipc:///run/user/1000/flotilla-admin")
        ->required();
    sub->add_option("--timeout", admin_timeout, "Seconds to wait for the reply")->capture_default_str();
  }

  CLI11_PARSE(app, argc, argv);
  // A study runs dozens of federations: their roles' info lines would bury its progress.
  if (*experiment && app.get_option("--log-level")->count() == 0) log_level = "warn";
  if (!set_log_level(log_level)) {
    std::cerr << "flotilla: --log-level '" << log_level
              << "' is not one of trace, debug, info, warn, error, off" << std::endl;
    return 2;
  }
  route_plugin_logs();
  if (*experiment) {
    try {
      return run_study(config_path, output, study_options);
    } catch (const std::exception& e) {
      std::cerr << "flotilla: " << e.what() << std::endl;
      return 1;
    }
  }
  if (*plugins_list) return list_plugins(plugin_dir.empty() ? builtin_plugin_dir() : std::filesystem::path(plugin_dir));
  if (*keygen) {
    auto keys = generate_curve_keypair();
    if (keys) {
      if (auto ok = write_curve_keypair(key_dir, key_name, *keys); !ok) keys = ok.error();
    }
    if (!keys) {
      std::cerr << "flotilla: " << keys.error().message << std::endl;
      return 1;
    }
    const auto dir = std::filesystem::path(key_dir);
    std::cout << "wrote " << (dir / (key_name + ".key")).string() << " (secret: keep it on that machine) and "
              << (dir / (key_name + ".pub")).string() << " (public key " << keys->public_key << ")"
              << std::endl;
    return 0;
  }
  if (*adm) {
    const std::string command = *adm_reload ? "reload" : "status";
    std::optional<AdminCredentials> credentials;
    if (!admin_key.empty() || !admin_server_key.empty()) {
      if (admin_key.empty() || admin_server_key.empty()) {
        std::cerr << "flotilla: admin over Curve needs both --key and --server-key" << std::endl;
        return 2;
      }
      auto keys = read_curve_secret(admin_key);
      if (!keys) {
        std::cerr << "flotilla: " << keys.error().message << std::endl;
        return 2;
      }
      auto server = read_curve_public(admin_server_key);
      if (!server) {
        std::cerr << "flotilla: " << server.error().message << std::endl;
        return 2;
      }
      credentials = AdminCredentials{std::filesystem::path(admin_key).stem().string(),
                                     CurveClient{*keys, *server}};
    }
    auto reply = send_admin(connect, command, {},
                            std::chrono::milliseconds(static_cast<long>(admin_timeout * 1000)),
                            credentials);
    if (!reply) {
      std::cerr << "flotilla: " << reply.error().message << std::endl;
      return 1;
    }
    (reply->ok ? std::cout : std::cerr) << (reply->ok ? "" : "flotilla: ") << reply->message
                                        << std::endl;
    return reply->ok ? 0 : 1;
  }
  auto config = load(config_path);
  if (!config) return 2;
  if (!admin_listen.empty()) config->aggregator.admin_listen = admin_listen;
  if (!resume_dir.empty()) {
    // It goes on writing checkpoints where it resumed from.
    config->checkpoint.dir = resume_dir;
    config->checkpoint.resume = true;
  }
  if (config->run.mode == RunMode::simulate && !*run) {
    std::cerr << "flotilla: " << config_path
              << " has run.mode = \"simulate\": the whole fleet runs in one process; start it "
                 "with `flotilla run " << config_path << "`" << std::endl;
    return 2;
  }

  auto monitoring = start_monitoring(*config, metrics_listen);
  if (!monitoring) return 2;
  const auto done = [&](const actors::RoleResult& result) {
    monitoring->linger();
    return finish(result);
  };

  try {
    if (*run || *agg) {
      Reporter reporter;
      reporter.kind = config->aggregator.schedule;
      reporter.total_rounds = schedule_options(*config).versions;
      const std::string dir = output.empty() ? config->run.output : output;
      if (!dir.empty()) {
        auto csv = RoundsCsv::open(dir);
        if (!csv) return finish({1, csv.error().message});
        reporter.csv = std::move(csv).value();
      }
      auto hooks = reporter.hooks();
      if (*run && config->run.mode == RunMode::simulate) {
        std::shared_ptr<monitoring::AggregatorMetrics> watched;
        if (monitoring->get() != nullptr) watched = actors::watch_schedule(*config, *monitoring->get(), hooks);
        SimulationHooks sim_hooks{std::move(hooks), [](const SimulationStatus& s) {
                                std::cout << fmt::format(
                                                 "[simulated {:.1f} s in {:.1f} s wall] model "
                                                 "version {}, {} devices training, {} events",
                                                 s.virtual_seconds, s.wall_seconds, s.versions,
                                                 s.training, s.events)
                                          << std::endl;
                              }};
        auto report = simulate(*config, std::move(sim_hooks));
        if (!report) return done({1, report.error().message});
        print_simulation(*report);
        return done({report->failure.empty() ? 0 : 1, report->failure});
      }
      if (*run) return done(actors::run_all(*config, std::move(hooks), monitoring->get()));
      return done(actors::run_aggregator(*config, std::move(hooks),
                                         listen.empty() ? std::nullopt : std::optional(listen),
                                         monitoring->get()));
    }
    if (*client) return done(actors::run_client(*config, id, connect, monitoring->get()));
    return done(actors::run_evaluator(*config, connect, monitoring->get()));
  } catch (const std::exception& e) {
    std::cerr << "flotilla: " << e.what() << std::endl;
    return 1;
  }
}

#include "runtime/setup/config.hpp"

#include "runtime/ml/llama.hpp"
#include "runtime/ml/vit.hpp"

#include <toml++/toml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

namespace flotilla {
namespace {

[[noreturn]] void fail(const std::string& message) { throw Failure(Errc::invalid_config, message); }

std::string describe(const toml::node& node) {
  std::ostringstream out;
  if (node.is_string()) {
    out << '"' << *node.value<std::string>() << '"';
  } else if (node.is_table()) {
    out << "a table";
  } else if (node.is_array()) {
    out << "an array";
  } else {
    node.visit([&](auto&& n) {
      if constexpr (toml::is_value<decltype(n)>) out << n;
    });
  }
  return out.str();
}

/// Reads typed keys out of one TOML document, remembering which keys exist so that any key
/// nobody asked for is reported as unknown (a typo must not be silently ignored).
class Reader {
 public:
  Reader(const toml::table& root, std::string source) : root_(root), source_(std::move(source)) {}

  template <class Fn>
  void key(const std::string& section, const std::string& key, Fn&& read) {
    known_[section].insert(key);
    const toml::table* sec = root_[section].as_table();
    if (sec == nullptr) return;
    const toml::node* node = sec->get(key);
    if (node == nullptr) return;
    read(*node, section + "." + key);
  }

  void string(const std::string& s, const std::string& k, std::string& out) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      if (!n.is_string()) bad(name, n, "a string");
      out = *n.value<std::string>();
    });
  }

  template <class Int>
  void integer(const std::string& s, const std::string& k, Int& out, std::int64_t min,
               std::int64_t max = std::numeric_limits<std::int64_t>::max()) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      auto v = n.value<std::int64_t>();
      if (!n.is_integer() || !v || *v < min || *v > max) {
        bad(name, n, "an integer in [" + std::to_string(min) + ", " +
                         (max == std::numeric_limits<std::int64_t>::max() ? std::string("inf")
                                                                            : std::to_string(max)) +
                         "]");
      }
      out = static_cast<Int>(*v);
    });
  }

  template <class Real>
  void real(const std::string& s, const std::string& k, Real& out, double min, double max,
            const char* expected) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      auto v = n.value<double>();  // integers convert too
      if (!(n.is_floating_point() || n.is_integer()) || !v || !std::isfinite(*v) || *v < min ||
          *v > max) {
        bad(name, n, expected);
      }
      out = static_cast<Real>(*v);
    });
  }

  void boolean(const std::string& s, const std::string& k, bool& out) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      if (!n.is_boolean()) bad(name, n, "true or false");
      out = *n.value<bool>();
    });
  }

  void strings(const std::string& s, const std::string& k, std::vector<std::string>& out) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      const toml::array* a = n.as_array();
      if (a == nullptr) bad(name, n, "an array of strings");
      out.clear();
      for (const auto& e : *a) {
        if (!e.is_string()) bad(name, n, "an array of strings");
        out.push_back(*e.value<std::string>());
      }
    });
  }

  void integers(const std::string& s, const std::string& k, std::vector<std::int64_t>& out,
                std::int64_t min, std::int64_t max) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      const toml::array* a = n.as_array();
      const std::string expected =
          "an array of integers in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
      if (a == nullptr) bad(name, n, expected);
      out.clear();
      for (const auto& e : *a) {
        auto v = e.value<std::int64_t>();
        if (!e.is_integer() || !v || *v < min || *v > max) bad(name, n, expected);
        out.push_back(*v);
      }
    });
  }

  /// A table of a plugin's options ([aggregator.options], [training.options]): scalars kept as
  /// text; the plugin's own specs check keys and values once it is loaded.
  void options(const std::string& s, const std::string& k, PluginOptions& out) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      const toml::table* t = n.as_table();
      if (t == nullptr) bad(name, n, "a table ([" + name + "])");
      for (const auto& [key, value] : *t) {
        const std::string full = name + "." + std::string(key.str());
        if (value.is_string()) {
          out[std::string(key.str())] = *value.value<std::string>();
        } else if (value.is_integer() || value.is_floating_point() || value.is_boolean()) {
          out[std::string(key.str())] = describe(value);
        } else {
          bad(full, value, "a number, a string or true/false");
        }
      }
    });
  }

  void duration(const std::string& s, const std::string& k, Duration& out) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      if (!n.is_string()) bad(name, n, "a duration with a unit, such as \"500ms\", \"30s\", \"2m\"");
      auto d = parse_duration(*n.value<std::string>());
      if (!d || d->count() <= 0) bad(name, n, "a positive duration with a unit, such as \"30s\"");
      out = *d;
    });
  }

  void bytes(const std::string& s, const std::string& k, std::uint64_t& out) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      Expected<std::uint64_t> b = Error{};
      if (n.is_integer() && *n.value<std::int64_t>() > 0) {
        b = static_cast<std::uint64_t>(*n.value<std::int64_t>());
      } else if (n.is_string()) {
        b = parse_bytes(*n.value<std::string>());
      }
      if (!b || *b == 0) bad(name, n, "a positive size, such as \"64MiB\" or \"8GiB\"");
      out = *b;
    });
  }

  template <class E>
  void choice(const std::string& s, const std::string& k, E& out,
              const std::map<std::string, E>& choices) {
    key(s, k, [&](const toml::node& n, const std::string& name) {
      std::string list;
      for (const auto& [c, _] : choices) list += (list.empty() ? "" : ", ") + ('"' + c + '"');
      if (!n.is_string()) bad(name, n, "one of " + list);
      auto it = choices.find(*n.value<std::string>());
      if (it == choices.end()) bad(name, n, "one of " + list);
      out = it->second;
    });
  }

  /// Fails on the first section or key that no reader asked for.
  void check_unknown() const {
    for (const auto& [section, node] : root_) {
      const std::string s(section.str());
      auto known = known_.find(s);
      if (known == known_.end()) {
        std::string list;
        for (const auto& [k, _] : known_) list += (list.empty() ? "" : ", ") + ('[' + k + ']');
        fail(source_ + ": unknown section [" + s + "] (known sections: " + list + ")");
      }
      const toml::table* table = node.as_table();
      if (table == nullptr) fail(source_ + ": '" + s + "' must be a section ([" + s + "])");
      for (const auto& [key, _] : *table) {
        const std::string k(key.str());
        if (!known->second.contains(k)) {
          fail(source_ + ": unknown key '" + s + "." + k + "' (see docs/config.md for the keys of [" +
               s + "])");
        }
      }
    }
  }

 private:
  [[noreturn]] void bad(const std::string& name, const toml::node& node,
                        const std::string& expected) const {
    fail(source_ + ": key '" + name + "' is " + describe(node) + ", expected " + expected);
  }

  const toml::table& root_;
  std::string source_;
  std::map<std::string, std::set<std::string>> known_;
};

/// One [[fleet.profile]] table (the index names it in messages).
DeviceProfileSpec read_profile(const toml::table& table, const std::string& source, std::size_t index) {
  const std::string section = "fleet.profile[" + std::to_string(index) + "]";
  toml::table root;
  root.insert(section, table);
  Reader r(root, source);
  DeviceProfileSpec p;
  p.name = "profile-" + std::to_string(index);
  r.string(section, "name", p.name);
  std::vector<std::int64_t> clients;
  r.integers(section, "clients", clients, 0, std::numeric_limits<std::uint32_t>::max());
  for (auto id : clients) p.clients.push_back(static_cast<std::uint32_t>(id));
  r.real(section, "compute-speed", p.compute_speed, 1e-6, 1e6, "a positive number");
  auto seconds = [&](const std::string& key, double& out) {
    Duration d{0};
    r.duration(section, key, d);
    if (d.count() > 0) out = std::chrono::duration<double>(d).count();
  };
  auto rate = [&](const std::string& key, double& out) {
    std::uint64_t b = 0;
    r.bytes(section, key, b);
    if (b > 0) out = static_cast<double>(b);
  };
  rate("up-bandwidth", p.link.up_bytes_per_second);
  rate("down-bandwidth", p.link.down_bytes_per_second);
  seconds("up-latency", p.link.up_latency_seconds);
  seconds("down-latency", p.link.down_latency_seconds);
  r.real(section, "availability", p.availability, 1e-6, 1.0, "a number in (0, 1]");
  seconds("mean-session", p.mean_session_seconds);
  r.real(section, "dropout", p.dropout, 0.0, 0.999, "a number in [0, 1)");
  r.string(section, "availability-trace", p.availability_trace);
  r.string(section, "device-trace", p.device_trace);
  r.choice(section, "task-time", p.task_time.kind,
           std::map<std::string, TaskTime::Kind>{{"measured", TaskTime::Kind::measured},
                                                 {"lognormal", TaskTime::Kind::lognormal},
                                                 {"pareto", TaskTime::Kind::pareto},
                                                 {"trace", TaskTime::Kind::trace}});
  seconds("task-median", p.task_time.median_seconds);
  r.real(section, "task-sigma", p.task_time.sigma, 0.0, 10.0, "a number in [0, 10]");
  seconds("task-scale", p.task_time.scale_seconds);
  r.real(section, "task-shape", p.task_time.shape, 1e-6, 1e6, "a positive number");
  r.string(section, "task-trace", p.task_time.trace_file);
  r.check_unknown();
  return p;
}

Config read(const toml::table& root, const std::string& source) {
  Config c;
  c.source = source;
  Reader r(root, source);
  const auto inf = std::numeric_limits<double>::infinity();

  r.choice("run", "mode", c.run.mode,
           std::map<std::string, RunMode>{{"real", RunMode::real}, {"simulate", RunMode::simulate}});
  r.string("run", "name", c.run.name);
  r.integer("run", "seed", c.run.seed, 0);
  r.integer("run", "rounds", c.run.rounds, 1, 1'000'000);
  r.string("run", "device", c.run.device);
  r.integer("run", "threads", c.run.threads, 0, 1024);
  r.real("run", "target-accuracy", c.run.target_accuracy, 0.0, 1.0, "a number in [0, 1]");
  r.string("run", "output", c.run.output);
  r.integer("run", "versions", c.run.versions, 0, 1'000'000'000);
  r.duration("run", "max-time", c.run.max_time);
  r.strings("run", "plugin-path", c.run.plugin_path);

  r.string("data", "dataset", c.data.dataset);
  r.string("data", "path", c.data.path);
  r.integer("data", "max-length", c.data.max_length, 4, 1 << 20);
  r.choice("data", "tokenizer", c.data.tokenizer,
           std::map<std::string, std::string>{{"bytes", "bytes"}, {"sentencepiece", "sentencepiece"}});
  r.string("data", "tokenizer-model", c.data.tokenizer_model);
  r.real("data", "held-out", c.data.held_out, 0.0, 0.9, "a number in [0, 0.9]");
  r.choice("data", "partition", c.data.partition,
           std::map<std::string, PartitionKind>{{"iid", PartitionKind::iid},
                                                {"dirichlet", PartitionKind::dirichlet},
                                                {"classes", PartitionKind::classes}});
  r.real("data", "alpha", c.data.alpha, 1e-6, 1e6, "a positive number");
  r.integer("data", "clients", c.data.clients, 1, 10'000'000);
  r.real("data", "test-fraction", c.data.test_fraction, 0.0, 0.9, "a number in [0, 0.9]");
  r.integer("data", "min-examples", c.data.min_examples, 1);
  r.integer("data", "classes-per-client", c.data.classes_per_client, 1, 1'000'000);
  r.integer("data", "examples-per-client", c.data.examples_per_client, 1, 1'000'000'000);

  r.choice("model", "name", c.model.name,
           std::map<std::string, std::string>{{"mlp", "mlp"}, {"cnn", "cnn"}, {"vit", "vit"}, {"llama", "llama"}});
  r.integer("model", "hidden", c.model.hidden, 1, 1 << 20);
  // "llama": sizes from a transformers config.json, then any of the keys below over them.
  std::string lm_json;
  r.string("model", "config-json", lm_json);
  if (!lm_json.empty()) {
    auto lm = read_llama_config(lm_json);
    if (!lm) fail(source + ": key 'model.config-json': " + lm.error().message);
    c.model.lm = *lm;
  }
  auto& lm = c.model.lm;
  r.integer("model", "vocab-size", lm.vocab_size, 1, 1 << 22);
  // The transformer sizes name the same things in "llama" and "vit".
  const bool vit = c.model.name == "vit";
  auto& vs = c.model.vit;
  r.integer("model", "hidden-size", vit ? vs.hidden_size : lm.hidden_size, 1, 1 << 16);
  r.integer("model", "intermediate-size", vit ? vs.intermediate_size : lm.intermediate_size, 1, 1 << 18);
  r.integer("model", "layers", vit ? vs.num_layers : lm.num_layers, 1, 1024);
  r.integer("model", "heads", vit ? vs.num_heads : lm.num_heads, 1, 1024);
  r.integer("model", "patch-size", vs.patch_size, 1, 1 << 12);
  r.integer("model", "kv-heads", lm.num_kv_heads, 1, 1024);
  r.integer("model", "max-positions", lm.max_positions, 1, 1 << 20);
  r.real("model", "rope-theta", lm.rope_theta, 1e-6, 1e12, "a positive number");
  r.real("model", "rms-norm-eps", lm.rms_norm_eps, 1e-12, 0.5, "a number in (0, 0.5]");
  r.boolean("model", "tie-embeddings", lm.tie_embeddings);
  r.string("model", "checkpoint", c.model.checkpoint);
  r.strings("model", "trainable", c.model.trainable);

  r.integer("training", "local-steps", c.training.local_steps, 0, 1'000'000'000);
  r.integer("training", "local-epochs", c.training.local_epochs, 0, 1'000'000);
  r.integer("training", "batch-size", c.training.batch_size, 1, 1 << 20);
  r.real("training", "learning-rate", c.training.learning_rate, 1e-12, inf, "a positive number");
  r.real("training", "momentum", c.training.momentum, 0.0, 0.999999, "a number in [0, 1)");
  r.real("training", "weight-decay", c.training.weight_decay, 0.0, inf, "a number >= 0");
  r.string("training", "optimizer", c.optimizer.name);
  r.options("training", "options", c.optimizer.options);

  r.integer("lora", "rank", c.lora.rank, 0, 1 << 16);
  r.integers("lora", "ranks", c.lora.ranks, 1, 1 << 16);
  r.real("lora", "alpha", c.lora.alpha, 1e-6, 1e6, "a positive number");
  r.real("lora", "dropout", c.lora.dropout, 0.0, 0.999, "a number in [0, 1)");
  r.strings("lora", "targets", c.lora.targets);
  r.boolean("lora", "freeze-a", c.lora.freeze_a);

  r.string("aggregator", "listen", c.aggregator.listen);
  r.string("aggregator", "admin-listen", c.aggregator.admin_listen);
  r.integer("aggregator", "clients-per-round", c.aggregator.clients_per_round, 0, 1'000'000);
  r.integer("aggregator", "min-updates", c.aggregator.min_updates, 1, 1'000'000);
  r.duration("aggregator", "round-deadline", c.aggregator.round_deadline);
  r.integer("aggregator", "min-clients", c.aggregator.min_clients, 0, 1'000'000);
  r.duration("aggregator", "registration-timeout", c.aggregator.registration_timeout);
  r.duration("aggregator", "evaluation-timeout", c.aggregator.evaluation_timeout);
  r.duration("aggregator", "peer-timeout", c.aggregator.peer_timeout);
  r.bytes("aggregator", "max-message-size", c.aggregator.max_message_bytes);
  r.integer("aggregator", "max-tensors", c.aggregator.max_tensors, 1, 100'000'000);
  r.integer("aggregator", "max-clients", c.aggregator.max_clients, 1, 100'000'000);
  r.integer("aggregator", "fold-batch", c.aggregator.fold_batch, 1, 64);
  r.integer("aggregator", "max-examples", c.aggregator.max_examples, 1, 1'000'000'000'000);
  r.integer("aggregator", "max-in-flight", c.aggregator.max_in_flight, 1, 1'000'000);
  r.choice("aggregator", "update-validation", c.aggregator.update_validation,
           std::map<std::string, std::string>{{"finite", "finite"}, {"reject", "reject"},
                                              {"clip", "clip"}, {"off", "off"}});
  r.real("aggregator", "outlier-factor", c.aggregator.outlier_factor, 1.0, 1e6, "a number in [1, 1e6]");
  r.integer("aggregator", "outlier-window", c.aggregator.outlier_window, 5, 100'000);
  r.string("aggregator", "strategy", c.aggregator.strategy);
  r.options("aggregator", "options", c.aggregator.options);
  r.boolean("aggregator", "watch-plugins", c.aggregator.watch_plugins);
  r.choice("aggregator", "schedule", c.aggregator.schedule,
           std::map<std::string, ScheduleKind>{{"sync", ScheduleKind::sync},
                                               {"async", ScheduleKind::async},
                                               {"buffered", ScheduleKind::buffered}});
  r.real("aggregator", "over-selection", c.aggregator.over_selection, 0.0, 10.0, "a number in [0, 10]");
  r.integer("aggregator", "max-concurrency", c.aggregator.max_concurrency, 0, 1'000'000);
  r.duration("aggregator", "task-deadline", c.aggregator.task_deadline);
  r.real("aggregator", "alpha", c.aggregator.alpha, 1e-9, 1.0, "a number in (0, 1]");
  r.choice("aggregator", "staleness", c.aggregator.staleness.kind,
           std::map<std::string, Staleness::Kind>{{"constant", Staleness::Kind::constant},
                                                  {"polynomial", Staleness::Kind::polynomial},
                                                  {"hinge", Staleness::Kind::hinge}});
  // The hinge's own defaults (FedAsync's experiments) unless set.
  if (c.aggregator.staleness.kind == Staleness::Kind::hinge) c.aggregator.staleness.a = 10;
  r.real("aggregator", "staleness-a", c.aggregator.staleness.a, 0.0, 1e6, "a number >= 0");
  r.real("aggregator", "staleness-b", c.aggregator.staleness.b, 0.0, 1e9, "a number >= 0");
  r.integer("aggregator", "buffer-size", c.aggregator.buffer_size, 1, 1'000'000);
  r.real("aggregator", "buffer-learning-rate", c.aggregator.buffer_learning_rate, 1e-9, 1e3,
         "a positive number");
  r.integer("aggregator", "max-staleness", c.aggregator.max_staleness, 0);
  r.boolean("aggregator", "staleness-weighted", c.aggregator.staleness_weighted);
  r.integer("aggregator", "evaluate-every", c.aggregator.evaluate_every, 0);
  r.duration("aggregator", "evaluate-every-time", c.aggregator.evaluate_every_time);

  r.duration("client", "connect-timeout", c.client.connect_timeout);
  r.duration("client", "heartbeat-interval", c.client.heartbeat_interval);
  r.string("client", "device-class", c.client.device_class);
  r.string("metrics", "listen", c.metrics.listen);
  r.duration("metrics", "hold", c.metrics.hold);

  r.choice("security", "mode", c.security.mode,
           std::map<std::string, SecuritySection::Mode>{{"none", SecuritySection::Mode::none},
                                                         {"curve", SecuritySection::Mode::curve}});
  r.string("security", "key-dir", c.security.key_dir);
  r.string("security", "server-key", c.security.server_key);
  r.string("security", "authorized", c.security.authorized);
  r.string("security", "admins", c.security.admins);
  const auto in_key_dir = [&](std::string& path, const char* name) {
    if (path.empty()) path = (std::filesystem::path(c.security.key_dir) / name).string();
  };
  in_key_dir(c.security.server_key, "aggregator.pub");
  in_key_dir(c.security.authorized, "authorized");
  in_key_dir(c.security.admins, "admins");

  r.string("checkpoint", "dir", c.checkpoint.dir);
  r.integer("checkpoint", "every", c.checkpoint.every, 0, 1'000'000'000);
  r.integer("checkpoint", "keep", c.checkpoint.keep, 1, 1'000'000);
  r.boolean("checkpoint", "sync-journal", c.checkpoint.sync_journal);

  r.duration("simulation", "tick", c.simulation.tick);
  r.real("simulation", "example-seconds", c.simulation.example_seconds, 0.0, 1e6, "a number >= 0");
  r.duration("simulation", "progress", c.simulation.progress);

  r.boolean("evaluator", "enabled", c.evaluator.enabled);
  r.integer("evaluator", "examples", c.evaluator.examples, 0);
  r.integer("evaluator", "batch-size", c.evaluator.batch_size, 1, 1 << 20);

  r.key("fleet", "profile", [&](const toml::node& n, const std::string& name) {
    const toml::array* a = n.as_array();
    if (a == nullptr || !a->is_array_of_tables()) {
      fail(source + ": '" + name + "' must be an array of tables ([[fleet.profile]])");
    }
    for (std::size_t i = 0; i < a->size(); ++i) {
      c.fleet.push_back(read_profile(*a->get(i)->as_table(), source, i));
    }
  });

  r.check_unknown();

  // Relations between keys.
  if (c.training.local_steps == 0 && c.training.local_epochs == 0) {
    fail(source + ": training.local-steps and training.local-epochs are both 0; set one of them");
  }
  if (c.data.dataset != "fashion-mnist" && c.data.dataset != "instructions") {
    fail(source + ": key 'data.dataset' is \"" + c.data.dataset +
         "\", expected \"fashion-mnist\" (images) or \"instructions\" (Dolly-shaped JSON lines, for "
         "model.name = \"llama\")");
  }
  const bool text = c.data.dataset == "instructions";
  if (text != (c.model.name == "llama")) {
    fail(source + ": model.name \"" + c.model.name + "\" and data.dataset \"" + c.data.dataset +
         "\" do not go together: the language model (\"llama\") trains on \"instructions\", the image "
         "models (\"cnn\", \"mlp\", \"vit\") on \"fashion-mnist\"");
  }
  if (c.model.name == "vit") {
    if (auto ok = check_vit_spec(c.model); !ok) fail(source + ": [model]: " + ok.error().message);
  }
  if (text) {
    if (auto ok = check_lm_spec(c.model.lm); !ok) fail(source + ": [model]: " + ok.error().message);
    const std::int64_t bytes_vocab = 259;  // ByteTokenizer: pad, bos, eos and the 256 bytes
    if (c.data.tokenizer == "bytes" && c.model.lm.vocab_size < bytes_vocab) {
      fail(source + ": model.vocab-size is " + std::to_string(c.model.lm.vocab_size) +
           ", but data.tokenizer \"bytes\" has 259 tokens (pad, bos, eos, 256 bytes)");
    }
    if (c.data.tokenizer == "bytes" && !c.model.checkpoint.empty() && c.model.lm.vocab_size != bytes_vocab) {
      fail(source + ": model.checkpoint has " + std::to_string(c.model.lm.vocab_size) +
           " tokens, but data.tokenizer is \"bytes\" (259): the checkpoint's embeddings are of its own "
           "tokenizer; set data.tokenizer = \"sentencepiece\" and data.tokenizer-model to its tokenizer.model");
    }
    if (c.data.tokenizer == "sentencepiece" && c.data.tokenizer_model.empty()) {
      fail(source + ": data.tokenizer \"sentencepiece\" needs data.tokenizer-model (the checkpoint's tokenizer.model)");
    }
    if (c.evaluator.enabled && !(c.data.held_out > 0)) {
      fail(source + ": data.held-out is 0, so the evaluator would have no records: hold some out, or "
                    "set evaluator.enabled = false");
    }
    if (c.data.max_length > c.model.lm.max_positions) {
      fail(source + ": data.max-length (" + std::to_string(c.data.max_length) +
           ") is longer than model.max-positions (" + std::to_string(c.model.lm.max_positions) + ")");
    }
  }
  const auto k = c.aggregator.clients_per_round;
  if (k != 0 && k > static_cast<std::uint32_t>(c.data.clients)) {
    fail(source + ": aggregator.clients-per-round (" + std::to_string(k) +
         ") is larger than data.clients (" + std::to_string(c.data.clients) + ")");
  }
  const std::uint32_t per_round = k == 0 ? static_cast<std::uint32_t>(c.data.clients) : k;
  if (c.aggregator.min_updates > per_round) {
    fail(source + ": aggregator.min-updates (" + std::to_string(c.aggregator.min_updates) +
         ") is larger than the clients sampled per round (" + std::to_string(per_round) + ")");
  }
  if (c.aggregator.min_clients > static_cast<std::uint32_t>(c.data.clients)) {
    fail(source + ": aggregator.min-clients (" + std::to_string(c.aggregator.min_clients) +
         ") is larger than data.clients (" + std::to_string(c.data.clients) + ")");
  }
  if (c.aggregator.listen.empty()) fail(source + ": aggregator.listen is empty");
  if (auto why = admin_listen_problem(c.aggregator.admin_listen, c.aggregator.listen); !why.empty()) {
    fail(source + ": " + why);
  }
  if (c.run.mode == RunMode::simulate && c.lora.dropout > 0 && c.run.threads > 1) {
    // LibTorch's dropout draws from one process-wide generator: with several workers training
    // at once, who draws first would change the results.
    fail(source + ": lora.dropout > 0 with run.mode = \"simulate\" needs run.threads = 1 (adapter "
                  "dropout draws from LibTorch's one global generator, so concurrent workers would "
                  "make the run depend on their timing)");
  }
  if (c.run.mode == RunMode::simulate && c.simulation.tick.count() <= 0) {
    fail(source + ": simulation.tick must be > 0 (how often virtual deadlines are checked)");
  }
  if (c.aggregator.strategy.empty()) fail(source + ": aggregator.strategy is empty");
  if (c.optimizer.name.empty()) fail(source + ": training.optimizer is empty");
  for (const char* key : {"learning-rate", "momentum", "weight-decay"}) {
    if (c.optimizer.options.count(key) != 0) {
      fail(source + ": training.options." + key + " duplicates training." + key +
           "; set it in [training] (the optimizer receives it as its option '" + key + "')");
    }
  }
  if (c.aggregator.strategy == "builtin" && !c.aggregator.options.empty()) {
    fail(source + ": aggregator.options are given, but aggregator.strategy \"builtin\" takes none");
  }
  if (!c.lora.ranks.empty() && c.lora.ranks.size() != static_cast<std::size_t>(c.data.clients)) {
    fail(source + ": lora.ranks has " + std::to_string(c.lora.ranks.size()) +
         " entries, expected one per client (data.clients = " + std::to_string(c.data.clients) + ")");
  }
  if (!c.lora.ranks.empty() && c.lora.rank == 0) {
    fail(source + ": lora.ranks is set but lora.rank is 0; set lora.rank (the global model's rank)");
  }
  if (c.lora.rank > 0 && c.lora.targets.empty()) {
    fail(source + ": lora.targets is empty; name the layers to adapt, e.g. [\"fc1\", \"fc2\"]");
  }
  if (!c.model.trainable.empty() && c.lora.rank > 0) {
    fail(source + ": model.trainable is for training full weights (lora.rank = 0); with LoRA the "
                  "adapters on lora.targets are what is trained");
  }
  if (c.lora.freeze_a && c.lora.rank == 0) fail(source + ": lora.freeze-a needs lora.rank > 0");
  if (auto d = resolve_device(c.run.device); !d) fail(source + ": key 'run.device': " + d.error().message);
  if (c.aggregator.schedule != ScheduleKind::sync) {
    if (c.aggregator.max_concurrency > static_cast<std::uint32_t>(c.data.clients)) {
      fail(source + ": aggregator.max-concurrency (" + std::to_string(c.aggregator.max_concurrency) +
           ") is larger than data.clients (" + std::to_string(c.data.clients) + ")");
    }
    if (!c.lora.ranks.empty()) {
      fail(source + ": lora.ranks (per-client ranks) needs the sync schedule: per-client models "
                    "are served after a cohort's aggregation");
    }
  }
  if (c.aggregator.over_selection > 0 && c.aggregator.clients_per_round == 0) {
    fail(source + ": aggregator.over-selection needs aggregator.clients-per-round (the K to close "
                  "the round at)");
  }
  if (auto ok = validate_fleet(c.fleet); !ok) fail(source + ": " + ok.error().message);
  for (const auto& profile : c.fleet) {
    for (auto id : profile.clients) {
      if (id >= static_cast<std::uint32_t>(c.data.clients)) {
        fail(source + ": fleet profile '" + profile.name + "' names client " + std::to_string(id) +
             ", but data.clients is " + std::to_string(c.data.clients) + " (ids 0.." +
             std::to_string(c.data.clients - 1) + ")");
      }
    }
  }
  return c;
}

}  // namespace

std::string admin_listen_problem(const std::string& admin_listen, const std::string& listen) {
  if (admin_listen.empty()) return {};
  if (admin_listen == listen) {
    return "aggregator.admin-listen " + admin_listen +
           " is the clients' endpoint (aggregator.listen): give admin commands their own (an "
           "ipc:// path)";
  }
  if (admin_listen.starts_with("ipc://@")) {
    return "aggregator.admin-listen " + admin_listen +
           ": an abstract ipc socket has no file permissions (anyone on this machine could "
           "connect); use an ipc:// path";
  }
  return {};
}

Expected<Config> parse_config(const std::string& text, const std::string& source) {
  try {
    toml::table root = toml::parse(text, source);
    return read(root, source);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return Error{Errc::invalid_config, source + ":" + std::to_string(where.line) + ":" +
                                           std::to_string(where.column) + ": TOML syntax error: " +
                                           std::string(e.description())};
  } catch (const Failure& f) {
    return f.error();
  }
}

Expected<Config> load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error{Errc::invalid_config, "cannot read config file '" + path + "'"};
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_config(buffer.str(), path);
}

namespace {

/// "30s" -> {30, "s"}; nothing if the text does not start with a number.
std::optional<std::pair<double, std::string>> number_and_unit(const std::string& text) {
  std::size_t pos = 0;
  try {
    const double value = std::stod(text, &pos);
    return std::pair{value, text.substr(pos)};
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace

Expected<Duration> parse_duration(const std::string& text) {
  const auto bad = Error{Errc::invalid_config,
                         "'" + text + "' is not a duration: use a number and a unit (ms, s, m, h)"};
  const auto parsed = number_and_unit(text);
  if (!parsed) return bad;
  const auto& [value, unit] = *parsed;
  double ms = 0;
  if (unit == "ms") ms = value;
  else if (unit == "s") ms = value * 1e3;
  else if (unit == "m" || unit == "min") ms = value * 60e3;
  else if (unit == "h") ms = value * 3600e3;
  else return bad;
  if (!std::isfinite(ms) || ms < 0 || ms > 1e15) return bad;
  return Duration{static_cast<std::int64_t>(std::llround(ms))};
}

Expected<std::uint64_t> parse_bytes(const std::string& text) {
  const auto bad = Error{Errc::invalid_config,
                         "'" + text + "' is not a size: use e.g. 512, 64KiB, 64MiB, 8GiB"};
  const auto parsed = number_and_unit(text);
  if (!parsed) return bad;
  const auto& [value, unit] = *parsed;
  static const std::map<std::string, double> units = {
      {"", 1},      {"B", 1},        {"KiB", 1024.0}, {"MiB", 1048576.0},
      {"GiB", 1073741824.0},         {"KB", 1e3},     {"MB", 1e6}, {"GB", 1e9}};
  auto it = units.find(unit);
  if (it == units.end() || value < 0) return bad;
  const double bytes = value * it->second;
  if (!std::isfinite(bytes) || bytes > 1.8e19) return bad;
  return static_cast<std::uint64_t>(bytes);
}

}  // namespace flotilla

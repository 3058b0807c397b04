#pragma once
/// The host side of the plugin ABI (plugins/include/flotilla/plugin.h): finding, loading,
/// checking and unloading plugin libraries, and calling them with Flotilla's tensors.
///
/// Every load copies the library to a private temporary file before dlopen, so a plugin file
/// can be replaced on disk while the old version is loaded (hot reload), and a file overwritten
/// in place never corrupts the running code.
#include "runtime/base/error.hpp"
#include "runtime/base/tensor.hpp"
#include "runtime/plugin_host/options.hpp"

#include "flotilla/plugin.h"

#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace flotilla {

/// What the host tells every plugin about the run (flotilla_host's fields beyond the device).
struct PluginHostFacts {
  double lora_alpha = 0;  ///< the run's lora.alpha; 0 when its model has no adapters
};

struct PluginOptionSpec {
  std::string key, type, default_value, help;
};

struct PluginInfo {
  std::string name;
  std::string version;
  std::string description;
  flotilla_plugin_kind kind = FLOTILLA_KIND_AGGREGATOR;
  std::uint32_t abi_major = 0, abi_minor = 0;
  std::vector<PluginOptionSpec> options;
  std::filesystem::path path;  ///< the file it was loaded from
  bool per_client = false;     ///< aggregator with per-client models (client_model)
  std::uint32_t aggregator_flags = 0;  ///< flotilla_aggregator_flag bits (ABI 1.1; 0 before)

  /// The option called `key` the plugin declares, or nullptr.
  [[nodiscard]] const PluginOptionSpec* option(const std::string& key) const {
    for (const auto& o : options) {
      if (o.key == key) return &o;
    }
    return nullptr;
  }
};

[[nodiscard]] const char* kind_name(flotilla_plugin_kind kind) noexcept;

/// Where plugins' log lines go (the runtime routes them to its logger; default: stderr).
using PluginLogSink =
    std::function<void(flotilla_log_level, const std::string& plugin, const std::string& message)>;
/// Routes plugins' log lines to `sink` (nullptr: back to stderr).
void set_plugin_log_sink(PluginLogSink sink);
void plugin_log(flotilla_log_level level, const std::string& plugin, const std::string& message);

/// One loaded plugin library. Unloaded (dlclose) when the last reference goes: every state a
/// plugin created must be destroyed first (PluginAggregation and PluginOptimizer hold a
/// reference for that reason).
class PluginLibrary {
 public:
  /// Loads `path` on `device`, telling it `facts`. Errc::invalid_argument for a missing file, a file that is not a
  /// loadable library, a missing entry point, another ABI major, a too-small struct, a kind
  /// without its function table, or an entry point that fails (with the plugin's message).
  [[nodiscard]] static Expected<std::shared_ptr<PluginLibrary>> open(
      const std::filesystem::path& path, c10::Device device, const PluginHostFacts& facts = {});
  ~PluginLibrary();
  PluginLibrary(const PluginLibrary&) = delete;
  PluginLibrary& operator=(const PluginLibrary&) = delete;

  [[nodiscard]] const PluginInfo& info() const { return info_; }
  [[nodiscard]] const flotilla_plugin& plugin() const { return *plugin_; }
  [[nodiscard]] const flotilla_host* host() const { return &host_; }
  [[nodiscard]] c10::Device device() const { return device_; }
  /// The file's modification time when it was loaded.
  [[nodiscard]] std::filesystem::file_time_type loaded_mtime() const { return mtime_; }

  /// Checks option keys and values against the plugin's option specs; Errc::invalid_config
  /// naming `where` (e.g. "run.toml: aggregator.options") and the key.
  [[nodiscard]] Expected<void> check_options(const PluginOptions& options,
                                             const std::string& where) const;

  /// Calls `fn` (returning a flotilla_status) and turns a failure, or an exception escaping the
  /// plugin, into an Error naming the plugin and `what`.
  template <class Fn>
  [[nodiscard]] Expected<void> call(const char* what, Fn&& fn) const {
    clear_error();
    int status = FLOTILLA_E_INTERNAL;
    try {
      status = fn();
    } catch (const std::exception& e) {
      return failed(what, FLOTILLA_E_INTERNAL, std::string("threw an exception: ") + e.what());
    } catch (...) {
      return failed(what, FLOTILLA_E_INTERNAL, "threw an exception");
    }
    if (status == FLOTILLA_OK) return {};
    return failed(what, status, last_error());
  }

 private:
  PluginLibrary() = default;
  static void clear_error();
  static std::string last_error();
  [[nodiscard]] Error failed(const char* what, int status, const std::string& message) const;

  void* handle_ = nullptr;
  /// The sealed in-memory copy dlopen mapped, open for as long as the library is loaded: its
  /// path (/proc/self/fd/N) names it, and a number reused while it is loaded would make dlopen
  /// hand out this library again for another file.
  int code_fd_ = -1;
  const flotilla_plugin* plugin_ = nullptr;
  flotilla_host host_{};
  c10::Device device_{c10::kCPU};
  PluginInfo info_;
  std::filesystem::file_time_type mtime_{};
};

/// Where plugins are looked for, and which are loaded (names are unique among them).
class PluginRegistry {
 public:
  /// `search_path`: directories tried in order, then $FLOTILLA_PLUGIN_PATH (':'-separated),
  /// then the built-in plugins' directory.
  PluginRegistry(std::vector<std::filesystem::path> search_path, c10::Device device,
                 PluginHostFacts facts = {});

  /// The file plugin `name` is loaded from: the first `<dir>/flotilla-<name>.so` or
  /// `<dir>/<name>.so` on the search path. Errc::invalid_argument listing the directories
  /// tried if there is none.
  [[nodiscard]] Expected<std::filesystem::path> find(const std::string& name) const;

  /// Loads plugin `name` of `kind`. Refuses a file whose plugin has another name or kind, and a
  /// name already loaded from another file.
  [[nodiscard]] Expected<std::shared_ptr<PluginLibrary>> load(const std::string& name,
                                                              flotilla_plugin_kind kind);

  /// Loads the plugin in `file` (a path given instead of a name), of `kind`; refuses a name
  /// already loaded from another file.
  [[nodiscard]] Expected<std::shared_ptr<PluginLibrary>> load_file(const std::filesystem::path& file,
                                                                   flotilla_plugin_kind kind);

  /// Plugin `spec`: a name looked up on the search path, or a path to a library (it contains a
  /// '/' or ends in ".so").
  [[nodiscard]] Expected<std::shared_ptr<PluginLibrary>> load_spec(const std::string& spec,
                                                                   flotilla_plugin_kind kind);

  /// Loads the current file of an already loaded plugin again (a new copy; the old one stays
  /// loaded while anything uses it).
  [[nodiscard]] Expected<std::shared_ptr<PluginLibrary>> reload(const std::string& name);

  [[nodiscard]] const std::vector<std::filesystem::path>& search_path() const { return path_; }

 private:
  std::vector<std::filesystem::path> path_;
  c10::Device device_;
  PluginHostFacts facts_;
  std::mutex mutex_;
  std::map<std::string, std::filesystem::path> loaded_;  ///< name -> file
};

/// Notices that a loaded plugin's file changed on disk, once the change has settled (the same
/// new modification time at two polls in a row, so a file still being written is not loaded).
class PluginWatcher {
 public:
  PluginWatcher(std::filesystem::path file, std::filesystem::file_time_type loaded)
      : file_(std::move(file)), loaded_(loaded) {}
  /// True (once per change) when the file has a new, settled modification time.
  [[nodiscard]] bool poll();
  /// The version now running was loaded from a file with this time.
  void loaded(std::filesystem::file_time_type t) { loaded_ = t; }
  [[nodiscard]] const std::filesystem::path& file() const { return file_; }

 private:
  std::filesystem::path file_;
  std::filesystem::file_time_type loaded_;
  std::optional<std::filesystem::file_time_type> pending_;
};

/// A loaded plugin that follows its file (thread-safe): current() loads the file again when its
/// modification time is no longer the loaded library's, and keeps the old library when that
/// fails (trying again only once the file changes again).
class WatchedPlugin {
 public:
  WatchedPlugin(std::shared_ptr<PluginRegistry> registry, std::shared_ptr<PluginLibrary> library);

  struct Current {
    std::shared_ptr<PluginLibrary> library;  ///< the library to use now
    /// One line when something happened: "reloaded ... (version 1.0.0 -> 1.1.0)", or why a
    /// reload failed (then `failed` is set and `library` is the old one).
    std::string event;
    bool failed = false;
  };
  /// The library to use now, reloaded first if its file changed.
  [[nodiscard]] Current current();
  [[nodiscard]] std::shared_ptr<PluginLibrary> library() const;

 private:
  std::shared_ptr<PluginRegistry> registry_;
  mutable std::mutex mutex_;
  std::shared_ptr<PluginLibrary> library_;
  std::filesystem::file_time_type failed_mtime_{};  ///< the file version a reload failed for
};

/// The built-in plugins' directory (next to the executable: ../plugins, or the build tree's).
[[nodiscard]] std::filesystem::path builtin_plugin_dir();

/// What each library in `dir` is (for `flotilla plugins list`): its info, or why it cannot be
/// loaded. Loads each on the CPU and unloads it again.
struct PluginScan {
  std::filesystem::path path;
  Expected<PluginInfo> info;
};
[[nodiscard]] std::vector<PluginScan> scan_plugins(const std::filesystem::path& dir);

/// Borrowed DLPack views of a tensor list, valid while `tensors` lives unchanged.
class DlTensors {
 public:
  explicit DlTensors(const TensorList& tensors);
  [[nodiscard]] const flotilla_tensors* get() const { return &list_; }

 private:
  std::vector<flotilla_tensor> items_;
  flotilla_tensors list_{};
};

}  // namespace flotilla

/// Host-owned outputs of one plugin call (see flotilla_host.output_tensor).
struct flotilla_output {
  flotilla::TensorList tensors;
};

#include "runtime/plugin_host/plugin_host.hpp"

#include "flotilla/plugin.hpp"

#include <ATen/ATen.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace flotilla {
namespace {

thread_local std::string tls_error;

void stderr_sink(flotilla_log_level level, const std::string& plugin, const std::string& message) {
  static const char* names[] = {"debug", "info", "warning", "error"};
  if (level >= FLOTILLA_LOG_INFO) {
    std::fprintf(stderr, "[plugin:%s] %s: %s\n", plugin.c_str(), names[level & 3], message.c_str());
  }
}

PluginLogSink& sink() {
  static PluginLogSink s = stderr_sink;
  return s;
}

void host_log(void* context, flotilla_log_level level, const char* message) {
  const auto* info = static_cast<const PluginInfo*>(context);
  plugin_log(level, info->name.empty() ? info->path.filename().string() : info->name,
             message ? message : "");
}

void host_set_error(void*, const char* message) { tls_error = message ? message : "(no message)"; }

/// The shape a plugin asks for, or nothing (tls_error says why) when a dimension is negative.
std::optional<std::vector<std::int64_t>> checked_dims(int32_t ndim, const int64_t* shape,
                                                      const std::string& what) {
  std::vector<std::int64_t> dims(shape, shape + ndim);
  for (auto d : dims) {
    if (d < 0) {
      tls_error = what + ": negative dimension";
      return std::nullopt;
    }
  }
  return dims;
}

/// Whether no output of `out` is called `name` yet (else tls_error says so).
bool fresh_name(const flotilla_output& out, const char* name, const char* what) {
  for (const auto& t : out.tensors) {
    if (t.name == name) {
      tls_error = std::string(what) + ": tensor '" + name + "' emitted twice";
      return false;
    }
  }
  return true;
}

int host_output_tensor(void*, flotilla_output* out, const char* name, DLDataType dtype,
                       int32_t ndim, const int64_t* shape, DLDevice device, DLTensor* result) {
  try {
    if (out == nullptr || name == nullptr || result == nullptr || ndim < 0 ||
        (ndim > 0 && shape == nullptr)) {
      tls_error = "output_tensor: null argument";
      return FLOTILLA_E_INVALID;
    }
    if (!fresh_name(*out, name, "output_tensor")) return FLOTILLA_E_INVALID;
    auto dims = checked_dims(ndim, shape, std::string("output_tensor: '") + name + "'");
    if (!dims) return FLOTILLA_E_INVALID;
    auto t = at::empty(*dims, at::TensorOptions()
                                 .dtype(sdk::scalar_type(dtype))
                                 .device(sdk::device(device)));
    out->tensors.push_back({name, t});
    *result = sdk::describe(out->tensors.back().tensor);
    return FLOTILLA_OK;
  } catch (const std::exception& e) {
    tls_error = std::string("output_tensor: ") + e.what();
    return FLOTILLA_E_INVALID;
  }
}

at::Tensor* lent(void* handle) { return static_cast<at::Tensor*>(handle); }

int host_lend_tensor(void*, DLDataType dtype, int32_t ndim, const int64_t* shape, DLDevice device,
                     DLTensor* result, void** handle) {
  try {
    if (result == nullptr || handle == nullptr || ndim < 0 || (ndim > 0 && shape == nullptr)) {
      tls_error = "lend_tensor: null argument";
      return FLOTILLA_E_INVALID;
    }
    auto dims = checked_dims(ndim, shape, "lend_tensor");
    if (!dims) return FLOTILLA_E_INVALID;
    auto* t = new at::Tensor(at::empty(
        *dims, at::TensorOptions().dtype(sdk::scalar_type(dtype)).device(sdk::device(device))));
    *result = sdk::describe(*t);
    *handle = t;
    return FLOTILLA_OK;
  } catch (const std::exception& e) {
    tls_error = std::string("lend_tensor: ") + e.what();
    return FLOTILLA_E_NO_MEMORY;
  }
}

int host_emit_lent(void*, flotilla_output* out, const char* name, void* handle) {
  // The handle is spent on every path: taken as output, or freed with the error.
  std::unique_ptr<at::Tensor> t(lent(handle));
  try {
    if (out == nullptr || name == nullptr || t == nullptr) {
      tls_error = "emit_lent: null argument";
      return FLOTILLA_E_INVALID;
    }
    if (!fresh_name(*out, name, "emit_lent")) return FLOTILLA_E_INVALID;
    out->tensors.push_back({name, std::move(*t)});
    return FLOTILLA_OK;
  } catch (const std::exception& e) {
    tls_error = std::string("emit_lent: ") + e.what();
    return FLOTILLA_E_NO_MEMORY;
  }
}

void host_release_lent(void*, void* handle) { delete lent(handle); }

const char* status_name(int status) {
  switch (status) {
    case FLOTILLA_E_INVALID: return "invalid";
    case FLOTILLA_E_REJECTED: return "rejected";
    case FLOTILLA_E_UNSUPPORTED: return "unsupported";
    case FLOTILLA_E_NO_MEMORY: return "out of memory";
    case FLOTILLA_E_INTERNAL: return "internal error";
    default: return "failed";
  }
}

/// A sealed in-memory copy of `from` (memfd_create), so that dlopen maps code nobody else can
/// write to: no name in a shared directory another local user could plant or swap, and a
/// second load of the same path is a second, independent library (another inode). The copy is
/// sealed against writes and resizes before anything maps it.
class PrivateCopy {
 public:
  static Expected<PrivateCopy> of(const fs::path& from) {
    const auto io = [&](const std::string& what) {
      return Error{Errc::io, "cannot copy plugin '" + from.string() + "' " + what + ": " +
                                 std::strerror(errno)};
    };
    const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) return io("(open)");
    PrivateCopy copy(::memfd_create(("flotilla-plugin-" + from.filename().string()).c_str(),
                                    MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (copy.fd_ < 0) {
      ::close(in);
      return io("(memfd_create)");
    }
    char buf[1 << 16];
    for (;;) {
      const ssize_t n = ::read(in, buf, sizeof buf);
      if (n == 0) break;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || ::write(copy.fd_, buf, static_cast<std::size_t>(n)) != n) {
        ::close(in);
        return io("(copying)");
      }
    }
    ::close(in);
    if (::fcntl(copy.fd_, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) {
      return io("(sealing)");
    }
    return copy;
  }
  PrivateCopy(PrivateCopy&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  PrivateCopy& operator=(PrivateCopy&&) = delete;
  ~PrivateCopy() {
    if (fd_ >= 0) ::close(fd_);
  }
  /// What dlopen opens.
  [[nodiscard]] std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }
  /// Hands the descriptor over (to the library that keeps it while loaded).
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }

 private:
  explicit PrivateCopy(int fd) : fd_(fd) {}
  int fd_;
};

std::string self_dir() {
  std::error_code ec;
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : exe.parent_path().string();
}

}  // namespace

void set_plugin_log_sink(PluginLogSink s) { sink() = s ? std::move(s) : PluginLogSink(stderr_sink); }

void plugin_log(flotilla_log_level level, const std::string& plugin, const std::string& message) {
  sink()(level, plugin, message);
}

const char* kind_name(flotilla_plugin_kind kind) noexcept {
  switch (kind) {
    case FLOTILLA_KIND_AGGREGATOR: return "aggregator";
    case FLOTILLA_KIND_OPTIMIZER: return "optimizer";
  }
  return "unknown";
}

void PluginLibrary::clear_error() { tls_error.clear(); }
std::string PluginLibrary::last_error() { return tls_error.empty() ? "(no message)" : tls_error; }

Error PluginLibrary::failed(const char* what, int status, const std::string& message) const {
  return Error{status == FLOTILLA_E_REJECTED ? Errc::rejected
               : status == FLOTILLA_E_INVALID ? Errc::invalid_config
                                              : Errc::internal,
               "plugin '" + info_.name + "' " + what + " failed (" + status_name(status) +
                   "): " + message};
}

Expected<std::shared_ptr<PluginLibrary>> PluginLibrary::open(const fs::path& path,
                                                             c10::Device device,
                                                             const PluginHostFacts& facts) {
  auto refuse = [&](const std::string& why) {
    return Error{Errc::invalid_argument, "plugin '" + path.string() + "': " + why};
  };
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return refuse("no such file");
  auto copy = PrivateCopy::of(path);
  if (!copy) return copy.error();

  std::shared_ptr<PluginLibrary> lib(new PluginLibrary());
  lib->device_ = device;
  lib->info_.path = path;
  lib->mtime_ = fs::last_write_time(path, ec);
  lib->handle_ = ::dlopen(copy->path().c_str(), RTLD_NOW | RTLD_LOCAL);
  const char* dl_error = lib->handle_ == nullptr ? ::dlerror() : nullptr;
  if (lib->handle_ != nullptr) lib->code_fd_ = copy->release();
  if (lib->handle_ == nullptr) {
    return refuse(std::string("not a loadable library: ") + (dl_error ? dl_error : "?"));
  }
  auto* entry =
      reinterpret_cast<flotilla_plugin_entry_v1>(::dlsym(lib->handle_, FLOTILLA_PLUGIN_ENTRY_NAME));
  if (entry == nullptr) {
    // Say which ABI it might be built for, if any.
    for (int major = 2; major < 10; ++major) {
      const std::string other = "flotilla_plugin_v" + std::to_string(major);
      if (::dlsym(lib->handle_, other.c_str()) != nullptr) {
        return refuse("built for plugin ABI " + std::to_string(major) + " (entry point " + other +
                      "); this host speaks ABI " + std::to_string(FLOTILLA_PLUGIN_ABI_MAJOR));
      }
    }
    return refuse("no entry point " FLOTILLA_PLUGIN_ENTRY_NAME
                  " (is it a Flotilla plugin? see docs/plugins.md)");
  }

  lib->host_.struct_size = sizeof(flotilla_host);
  lib->host_.abi_major = FLOTILLA_PLUGIN_ABI_MAJOR;
  lib->host_.abi_minor = FLOTILLA_PLUGIN_ABI_MINOR;
  lib->host_.context = &lib->info_;
  lib->host_.device = sdk::dl_device(device);
  lib->host_.log = &host_log;
  lib->host_.set_error = &host_set_error;
  lib->host_.output_tensor = &host_output_tensor;
  lib->host_.lend_tensor = &host_lend_tensor;
  lib->host_.emit_lent = &host_emit_lent;
  lib->host_.release_lent = &host_release_lent;
  lib->host_.lora_alpha = facts.lora_alpha;

  const flotilla_plugin* plugin = nullptr;
  lib->info_.name = path.stem().string();  // until the plugin says its name
  clear_error();
  int status = FLOTILLA_E_INTERNAL;
  try {
    status = entry(&lib->host_, &plugin);
  } catch (const std::exception& e) {
    return refuse(std::string("initialisation threw an exception: ") + e.what());
  } catch (...) {
    return refuse("initialisation threw an exception");
  }
  if (status != FLOTILLA_OK) {
    return refuse("initialisation failed (" + std::string(status_name(status)) + "): " + last_error());
  }
  if (plugin == nullptr) return refuse("entry point returned no plugin description");
  constexpr std::size_t kMinPlugin = offsetof(flotilla_plugin, optimizer) + sizeof(void*);
  if (plugin->struct_size < kMinPlugin) {
    return refuse("plugin description is " + std::to_string(plugin->struct_size) +
                  " bytes, smaller than ABI 1.0's " + std::to_string(kMinPlugin));
  }
  if (plugin->abi_major != FLOTILLA_PLUGIN_ABI_MAJOR) {
    return refuse("built for plugin ABI " + std::to_string(plugin->abi_major) + "." +
                  std::to_string(plugin->abi_minor) + "; this host speaks ABI " +
                  std::to_string(FLOTILLA_PLUGIN_ABI_MAJOR) + "." +
                  std::to_string(FLOTILLA_PLUGIN_ABI_MINOR));
  }
  if (plugin->name == nullptr || *plugin->name == '\0') return refuse("plugin has no name");
  auto& info = lib->info_;
  info.name = plugin->name;
  info.version = plugin->version ? plugin->version : "?";
  info.description = plugin->description ? plugin->description : "";
  info.kind = plugin->kind;
  info.abi_major = plugin->abi_major;
  info.abi_minor = plugin->abi_minor;
  for (std::size_t i = 0; i < plugin->option_count; ++i) {
    const auto& o = plugin->options[i];
    if (o.key == nullptr) continue;
    info.options.push_back({o.key, o.type ? o.type : "string", o.default_value ? o.default_value : "",
                            o.help ? o.help : ""});
  }
  switch (plugin->kind) {
    case FLOTILLA_KIND_AGGREGATOR: {
      const auto* api = plugin->aggregator;
      constexpr std::size_t kMin = offsetof(flotilla_aggregator_api, destroy) + sizeof(void*);
      if (api == nullptr || api->struct_size < kMin) {
        return refuse("aggregator plugin without a complete function table");
      }
      if (!api->create || !api->check || !api->accept || !api->finalize || !api->discard ||
          !api->destroy) {
        return refuse("aggregator function table lacks a required function");
      }
      info.per_client = api->client_model != nullptr;
      if (plugin->struct_size >= offsetof(flotilla_plugin, aggregator_flags) + sizeof(std::uint32_t)) {
        info.aggregator_flags = plugin->aggregator_flags;
      }
      break;
    }
    case FLOTILLA_KIND_OPTIMIZER: {
      const auto* api = plugin->optimizer;
      constexpr std::size_t kMin = offsetof(flotilla_optimizer_api, destroy) + sizeof(void*);
      if (api == nullptr || api->struct_size < kMin) {
        return refuse("optimizer plugin without a complete function table");
      }
      if (!api->create || !api->step || !api->state_bytes || !api->destroy) {
        return refuse("optimizer function table lacks a required function");
      }
      break;
    }
    default:
      return refuse("unknown plugin kind " + std::to_string(static_cast<int>(plugin->kind)));
  }
  lib->plugin_ = plugin;
  return lib;
}

PluginLibrary::~PluginLibrary() {
  if (handle_ != nullptr) ::dlclose(handle_);
  if (code_fd_ < 0) return;
  // A library that dlclose did not unload (a unique symbol can pin it) keeps its name, so the
  // descriptor stays open and the number is never reused for another plugin's code.
  const std::string name = "/proc/self/fd/" + std::to_string(code_fd_);
  if (void* still = ::dlopen(name.c_str(), RTLD_NOW | RTLD_NOLOAD)) {
    ::dlclose(still);
    return;
  }
  ::close(code_fd_);
}

Expected<void> PluginLibrary::check_options(const PluginOptions& options,
                                            const std::string& where) const {
  for (const auto& [key, value] : options) {
    const PluginOptionSpec* spec = info_.option(key);
    if (spec == nullptr) {
      std::string known;
      for (const auto& o : info_.options) known += (known.empty() ? "" : ", ") + o.key;
      return Error{Errc::invalid_config,
                   where + ": unknown option '" + key + "' for plugin '" + info_.name +
                       "' (its options: " + (known.empty() ? "none" : known) + ")"};
    }
    bool ok = true;
    try {
      std::size_t used = 0;
      if (spec->type == "float") {
        (void)std::stod(value, &used);
        ok = used == value.size();
      } else if (spec->type == "int") {
        (void)std::stoll(value, &used);
        ok = used == value.size();
      } else if (spec->type == "bool") {
        ok = value == "true" || value == "false";
      }
    } catch (...) {
      ok = false;
    }
    if (!ok) {
      return Error{Errc::invalid_config, where + ": option '" + key + "' of plugin '" + info_.name +
                                             "' is \"" + value + "\", expected " +
                                             (spec->type == "int" ? "an integer"
                                              : spec->type == "bool" ? "true or false"
                                                                     : "a number")};
    }
  }
  return {};
}

PluginRegistry::PluginRegistry(std::vector<fs::path> search_path, c10::Device device,
                               PluginHostFacts facts)
    : path_(std::move(search_path)), device_(device), facts_(facts) {
  if (const char* env = std::getenv("FLOTILLA_PLUGIN_PATH"); env != nullptr) {
    std::stringstream in(env);
    std::string dir;
    while (std::getline(in, dir, ':')) {
      if (!dir.empty()) path_.emplace_back(dir);
    }
  }
  path_.push_back(builtin_plugin_dir());
}

Expected<fs::path> PluginRegistry::find(const std::string& name) const {
  std::string tried;
  for (const auto& dir : path_) {
    for (const auto& file : {"flotilla-" + name + ".so", name + ".so"}) {
      std::error_code ec;
      if (fs::is_regular_file(dir / file, ec)) return dir / file;
    }
    tried += (tried.empty() ? "" : ", ") + dir.string();
  }
  return Error{Errc::invalid_argument, "plugin '" + name + "' not found: no flotilla-" + name +
                                           ".so or " + name + ".so in " + tried +
                                           " (set run.plugin-path; `flotilla plugins list DIR` "
                                           "shows what a directory has)"};
}

Expected<std::shared_ptr<PluginLibrary>> PluginRegistry::load(const std::string& name,
                                                              flotilla_plugin_kind kind) {
  auto file = find(name);
  if (!file) return file.error();
  auto lib = load_file(*file, kind);
  if (lib && (*lib)->info().name != name) {
    std::lock_guard lock(mutex_);
    loaded_.erase((*lib)->info().name);
    return Error{Errc::invalid_argument, "plugin '" + file->string() + "' declares the name '" +
                                             (*lib)->info().name + "', expected '" + name + "'"};
  }
  return lib;
}

Expected<std::shared_ptr<PluginLibrary>> PluginRegistry::load_file(const fs::path& file,
                                                                   flotilla_plugin_kind kind) {
  auto lib = PluginLibrary::open(file, device_, facts_);
  if (!lib) return lib.error();
  const auto& info = (*lib)->info();
  if (info.kind != kind) {
    return Error{Errc::invalid_argument, "plugin '" + info.name + "' (" + file.string() + ") is an " +
                                             kind_name(info.kind) + " plugin, expected an " +
                                             kind_name(kind) + " plugin"};
  }
  std::lock_guard lock(mutex_);
  std::error_code ec;
  if (auto it = loaded_.find(info.name);
      it != loaded_.end() && !fs::equivalent(it->second, file, ec)) {
    return Error{Errc::invalid_argument, "plugin '" + file.string() + "' is named '" + info.name +
                                             "', which is already loaded from " +
                                             it->second.string()};
  }
  loaded_[info.name] = file;
  return lib;
}

Expected<std::shared_ptr<PluginLibrary>> PluginRegistry::load_spec(const std::string& spec,
                                                                   flotilla_plugin_kind kind) {
  const bool is_path = spec.find('/') != std::string::npos ||
                       (spec.size() > 3 && spec.compare(spec.size() - 3, 3, ".so") == 0);
  return is_path ? load_file(spec, kind) : load(spec, kind);
}

Expected<std::shared_ptr<PluginLibrary>> PluginRegistry::reload(const std::string& name) {
  fs::path file;
  {
    std::lock_guard lock(mutex_);
    auto it = loaded_.find(name);
    if (it == loaded_.end()) return Error{Errc::invalid_argument, "plugin '" + name + "' is not loaded"};
    file = it->second;
  }
  auto lib = PluginLibrary::open(file, device_, facts_);
  if (!lib) return lib.error();
  if ((*lib)->info().name != name) {
    return Error{Errc::invalid_argument, "the new '" + file.string() + "' declares the name '" +
                                             (*lib)->info().name + "', expected '" + name + "'"};
  }
  return lib;
}

WatchedPlugin::WatchedPlugin(std::shared_ptr<PluginRegistry> registry,
                             std::shared_ptr<PluginLibrary> library)
    : registry_(std::move(registry)), library_(std::move(library)) {}

std::shared_ptr<PluginLibrary> WatchedPlugin::library() const {
  std::lock_guard lock(mutex_);
  return library_;
}

WatchedPlugin::Current WatchedPlugin::current() {
  std::lock_guard lock(mutex_);
  const auto& info = library_->info();
  std::error_code ec;
  const auto mtime = fs::last_write_time(info.path, ec);
  // A missing file (being replaced) or one unchanged, or changed to a version that failed: keep.
  if (ec || mtime == library_->loaded_mtime() || mtime == failed_mtime_) return {library_, {}, false};
  auto fresh = registry_->reload(info.name);
  if (fresh && (*fresh)->info().kind != info.kind) {
    fresh = Error{Errc::invalid_argument, "it is now an " + std::string(kind_name((*fresh)->info().kind)) +
                                              " plugin, expected an " + kind_name(info.kind) + " plugin"};
  }
  if (!fresh) {
    failed_mtime_ = mtime;
    return {library_,
            "plugin '" + info.name + "' changed on disk (" + info.path.string() +
                ") but cannot be reloaded, keeping version " + info.version + ": " + fresh.error().message,
            true};
  }
  const std::string old_version = info.version;
  library_ = *fresh;
  failed_mtime_ = {};
  return {library_,
          "reloaded plugin '" + library_->info().name + "' from " + library_->info().path.string() +
              " (version " + old_version + " -> " + library_->info().version + ")",
          false};
}

bool PluginWatcher::poll() {
  std::error_code ec;
  const auto now = fs::last_write_time(file_, ec);
  if (ec || now == loaded_) {
    pending_.reset();
    return false;
  }
  if (pending_ && *pending_ == now) {
    pending_.reset();
    loaded_ = now;  // report each change once, whether or not its reload succeeds
    return true;
  }
  pending_ = now;
  return false;
}

fs::path builtin_plugin_dir() {
  // The build tree (build/bin/flotilla, build/plugins) or an install (bin/, lib/flotilla/plugins).
  const fs::path exe = self_dir();
  std::error_code ec;
  for (const auto& candidate : {exe / ".." / "plugins", exe / ".." / "lib" / "flotilla" / "plugins"}) {
    if (!exe.empty() && fs::is_directory(candidate, ec)) return fs::weakly_canonical(candidate, ec);
  }
#ifdef FLOTILLA_BUILTIN_PLUGIN_DIR
  return FLOTILLA_BUILTIN_PLUGIN_DIR;
#else
  return exe / ".." / "plugins";
#endif
}

std::vector<PluginScan> scan_plugins(const fs::path& dir) {
  std::vector<PluginScan> out;
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".so") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    auto lib = PluginLibrary::open(f, c10::Device(c10::kCPU));
    if (lib) {
      out.push_back({f, (*lib)->info()});
    } else {
      out.push_back({f, lib.error()});
    }
  }
  return out;
}

DlTensors::DlTensors(const TensorList& tensors) {
  items_.reserve(tensors.size());
  for (const auto& t : tensors) items_.push_back({t.name.c_str(), sdk::describe(t.tensor)});
  list_.items = items_.data();
  list_.count = items_.size();
}

}  // namespace flotilla

// Flotilla plugin SDK for C++ and LibTorch: header-only, compiled into the plugin (nothing C++
// crosses the C ABI of flotilla/plugin.h). It maps DLPack to at::Tensor views, turns
// exceptions into status codes with messages, parses options, and builds the C function table
// from a C++ class:
//
//   class MyAgg : public flotilla::sdk::Aggregator { ... };
//   FLOTILLA_AGGREGATOR_PLUGIN(MyAgg, "my-agg", "1.0.0", "what it does", kMyOptions)
//
// Needs only LibTorch (>= 1.13) and flotilla/plugin.h. See docs/plugins.md.
#pragma once

#include "flotilla/plugin.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::sdk {

// ---- DLPack <-> LibTorch -------------------------------------------------------------------

inline at::ScalarType scalar_type(DLDataType t) {
  if (t.lanes != 1) throw std::invalid_argument("vector dtypes (lanes != 1) are not supported");
  switch (t.code) {
    case kDLFloat:
      if (t.bits == 16) return at::kHalf;
      if (t.bits == 32) return at::kFloat;
      if (t.bits == 64) return at::kDouble;
      break;
    case kDLBfloat:
      if (t.bits == 16) return at::kBFloat16;
      break;
    case kDLInt:
      if (t.bits == 8) return at::kChar;
      if (t.bits == 16) return at::kShort;
      if (t.bits == 32) return at::kInt;
      if (t.bits == 64) return at::kLong;
      break;
    case kDLUInt:
      if (t.bits == 8) return at::kByte;
      if (t.bits == 1) return at::kBool;
      break;
    default: break;
  }
  throw std::invalid_argument("unsupported DLPack dtype code " + std::to_string(t.code) + " bits " +
                              std::to_string(t.bits));
}

inline DLDataType dl_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return {kDLFloat, 16, 1};
    case at::kFloat: return {kDLFloat, 32, 1};
    case at::kDouble: return {kDLFloat, 64, 1};
    case at::kBFloat16: return {kDLBfloat, 16, 1};
    case at::kChar: return {kDLInt, 8, 1};
    case at::kShort: return {kDLInt, 16, 1};
    case at::kInt: return {kDLInt, 32, 1};
    case at::kLong: return {kDLInt, 64, 1};
    case at::kByte: return {kDLUInt, 8, 1};
    case at::kBool: return {kDLUInt, 1, 1};
    default: throw std::invalid_argument(std::string("dtype ") + c10::toString(t) + " has no DLPack code");
  }
}

inline c10::Device device(DLDevice d) {
  switch (d.device_type) {
    case kDLCPU: return c10::Device(c10::kCPU);
    case kDLCUDA: return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d.device_id));
    default:
      throw std::invalid_argument("unsupported DLPack device type " + std::to_string(d.device_type));
  }
}

inline DLDevice dl_device(const c10::Device& d) {
  if (d.is_cpu()) return {kDLCPU, 0};
  if (d.is_cuda()) return {kDLCUDA, d.has_index() ? d.index() : 0};
  throw std::invalid_argument("device " + d.str() + " has no DLPack code");
}

/// A non-owning at::Tensor over a borrowed DLTensor (valid while the DLTensor's memory is).
/// A DLTensor with data == NULL (metadata only) gives an undefined-data meta tensor.
inline at::Tensor view(const DLTensor& t) {
  const auto dtype = scalar_type(t.dtype);
  std::vector<std::int64_t> shape(t.shape, t.shape + t.ndim);
  if (t.data == nullptr) return at::empty(shape, at::TensorOptions().dtype(dtype).device(at::kMeta));
  auto* data = static_cast<char*>(t.data) + t.byte_offset;
  auto options = at::TensorOptions().dtype(dtype).device(device(t.device));
  if (t.strides == nullptr) return at::from_blob(data, shape, options);
  std::vector<std::int64_t> strides(t.strides, t.strides + t.ndim);
  return at::from_blob(data, shape, strides, options);
}

/// A borrowed DLTensor describing `t` (whose sizes and strides arrays it points into): valid
/// while `t` lives and is not resized.
inline DLTensor describe(const at::Tensor& t) {
  DLTensor d{};
  d.data = t.numel() == 0 ? nullptr : t.data_ptr();
  if (t.device().is_meta()) d.data = nullptr;
  d.device = t.device().is_meta() ? DLDevice{kDLCPU, 0} : dl_device(t.device());
  d.ndim = static_cast<std::int32_t>(t.dim());
  d.dtype = dl_dtype(t.scalar_type());
  d.shape = const_cast<std::int64_t*>(t.sizes().data());
  d.strides = const_cast<std::int64_t*>(t.strides().data());
  d.byte_offset = 0;
  return d;
}

// ---- Named tensors, errors, options ----------------------------------------------------------

struct Named {
  std::string name;
  at::Tensor tensor;
};
using NamedTensors = std::vector<Named>;

inline NamedTensors views(const flotilla_tensors* list) {
  NamedTensors out;
  if (list == nullptr) return out;
  out.reserve(list->count);
  for (std::size_t i = 0; i < list->count; ++i) {
    out.push_back({list->items[i].name ? list->items[i].name : "", view(list->items[i].tensor)});
  }
  return out;
}

/// Throw to refuse an update (FLOTILLA_E_REJECTED) or an option/argument (FLOTILLA_E_INVALID).
struct Rejected : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Invalid : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Runs `fn`, turning an exception into a status and a message for the host.
template <class Fn>
int guarded(const flotilla_host* host, Fn&& fn) noexcept {
  auto report = [&](int status, const char* what) {
    if (host != nullptr && host->set_error != nullptr) host->set_error(host->context, what);
    return status;
  };
  try {
    fn();
    return FLOTILLA_OK;
  } catch (const Rejected& e) {
    return report(FLOTILLA_E_REJECTED, e.what());
  } catch (const Invalid& e) {
    return report(FLOTILLA_E_INVALID, e.what());
  } catch (const std::bad_alloc&) {
    return report(FLOTILLA_E_NO_MEMORY, "out of memory");
  } catch (const c10::Error& e) {
    // LibTorch's own errors: the message without LibTorch's C++ backtrace.
    return report(FLOTILLA_E_INTERNAL, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return report(FLOTILLA_E_INTERNAL, e.what());
  } catch (...) {
    return report(FLOTILLA_E_INTERNAL, "unknown exception");
  }
}

/// The options the host passed (already checked against the plugin's specs), with typed reads.
class Options {
 public:
  explicit Options(const flotilla_options* options) {
    if (options == nullptr) return;
    for (std::size_t i = 0; i < options->count; ++i) {
      items_.emplace_back(options->items[i].key, options->items[i].value);
    }
  }
  [[nodiscard]] const std::string* find(const std::string& key) const {
    for (const auto& [k, v] : items_) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  [[nodiscard]] std::string text(const std::string& key, std::string fallback) const {
    const auto* v = find(key);
    return v ? *v : std::move(fallback);
  }
  [[nodiscard]] double real(const std::string& key, double fallback) const {
    const auto* v = find(key);
    if (v == nullptr) return fallback;
    try {
      std::size_t used = 0;
      const double d = std::stod(*v, &used);
      if (used == v->size()) return d;
    } catch (...) {
    }
    throw Invalid("option '" + key + "' is \"" + *v + "\", expected a number");
  }
  [[nodiscard]] std::int64_t integer(const std::string& key, std::int64_t fallback) const {
    const auto* v = find(key);
    if (v == nullptr) return fallback;
    try {
      std::size_t used = 0;
      const auto i = std::stoll(*v, &used);
      if (used == v->size()) return i;
    } catch (...) {
    }
    throw Invalid("option '" + key + "' is \"" + *v + "\", expected an integer");
  }
  [[nodiscard]] bool boolean(const std::string& key, bool fallback) const {
    const auto* v = find(key);
    if (v == nullptr) return fallback;
    if (*v == "true") return true;
    if (*v == "false") return false;
    throw Invalid("option '" + key + "' is \"" + *v + "\", expected true or false");
  }

 private:
  std::vector<std::pair<std::string, std::string>> items_;
};

/// Option `key` as a number, refused (Invalid naming the option, its value and `range`, e.g.
/// "in [0, 1)") unless lo <= v (lo < v with `open_lo`) and v <= hi (v < hi with `open_hi`).
/// NaN and infinities are out of every range.
inline double bounded(const Options& options, const std::string& key, double fallback, double lo,
                      double hi, bool open_lo, bool open_hi, const std::string& range) {
  const double v = options.real(key, fallback);
  const bool ok = std::isfinite(v) && (open_lo ? v > lo : v >= lo) && (open_hi ? v < hi : v <= hi);
  if (!ok) {
    const auto* text = options.find(key);
    throw Invalid("option '" + key + "' is " + (text ? *text : std::to_string(v)) + ", expected " +
                  range);
  }
  return v;
}

/// The host services a plugin state uses: its device, logging, outputs.
/// A tensor in memory the host lent (ABI 1.1, flotilla_host.lend_tensor): a plugin keeps it
/// across calls (a running sum) and hands it over as an output without a copy (emit); dropped
/// unemitted, it goes back to the host.
class Lent {
 public:
  Lent() = default;
  Lent(const flotilla_host* host, at::Tensor view, void* handle)
      : host_(host), view_(std::move(view)), handle_(handle) {}
  Lent(Lent&& o) noexcept : host_(o.host_), view_(std::move(o.view_)), handle_(o.handle_) {
    o.handle_ = nullptr;
  }
  Lent& operator=(Lent&& o) noexcept {
    if (this != &o) {
      release();
      host_ = o.host_;
      view_ = std::move(o.view_);
      handle_ = o.handle_;
      o.handle_ = nullptr;
    }
    return *this;
  }
  Lent(const Lent&) = delete;
  Lent& operator=(const Lent&) = delete;
  ~Lent() { release(); }

  [[nodiscard]] bool held() const { return handle_ != nullptr; }
  /// A view of the lent memory (valid until emitted or released).
  [[nodiscard]] const at::Tensor& tensor() const { return view_; }
  /// Makes the lent memory output `name` of `out`; this no longer holds it.
  void emit(flotilla_output* out, const std::string& name) {
    view_ = at::Tensor();
    void* h = handle_;
    handle_ = nullptr;
    if (host_->emit_lent(host_->context, out, name.c_str(), h) != FLOTILLA_OK) {
      throw std::runtime_error("host refused the lent tensor '" + name + "'");
    }
  }
  void release() {
    view_ = at::Tensor();
    if (handle_ != nullptr) host_->release_lent(host_->context, handle_);
    handle_ = nullptr;
  }

 private:
  const flotilla_host* host_ = nullptr;
  at::Tensor view_;
  void* handle_ = nullptr;
};

class Host {
 public:
  explicit Host(const flotilla_host* host) : host_(host), device_(sdk::device(host->device)) {}
  [[nodiscard]] const c10::Device& device() const { return device_; }
  void log(flotilla_log_level level, const std::string& message) const {
    if (host_->log != nullptr) host_->log(host_->context, level, message.c_str());
  }
  /// Copies `value` into a new host-owned output tensor called `name` (on the host's device,
  /// or on the CPU when `value` is there and the device is the CPU).
  void emit(flotilla_output* out, const std::string& name, const at::Tensor& value) const {
    const auto src = value.contiguous();
    DLTensor dst{};
    const auto dev = dl_device(src.device().is_cuda() ? src.device() : device_);
    const int status = host_->output_tensor(host_->context, out, name.c_str(),
                                            dl_dtype(src.scalar_type()),
                                            static_cast<std::int32_t>(src.dim()),
                                            src.sizes().data(), dev, &dst);
    if (status != FLOTILLA_OK) {
      throw std::runtime_error("host refused output tensor '" + name + "'");
    }
    if (src.numel() > 0) view(dst).copy_(src);
  }
  [[nodiscard]] const flotilla_host* raw() const { return host_; }
  /// The run's LoRA alpha (adapters scale their output by alpha / rank); 0 when the run's
  /// model has no adapters or the host predates ABI 1.2.
  [[nodiscard]] double lora_alpha() const {
    return host_->struct_size >= offsetof(flotilla_host, lora_alpha) + sizeof(double)
               ? host_->lora_alpha
               : 0.0;
  }

  /// Whether the host lends memory (ABI 1.1 hosts do; older ones do not).
  [[nodiscard]] bool can_lend() const {
    return host_->struct_size >= offsetof(flotilla_host, release_lent) + sizeof(void*) &&
           host_->lend_tensor != nullptr && host_->emit_lent != nullptr &&
           host_->release_lent != nullptr;
  }
  /// Host memory for a tensor of `sizes` and `dtype` on the host's device (see Lent).
  [[nodiscard]] Lent lend(at::IntArrayRef sizes, at::ScalarType dtype) const {
    DLTensor dst{};
    void* handle = nullptr;
    if (host_->lend_tensor(host_->context, dl_dtype(dtype), static_cast<std::int32_t>(sizes.size()),
                           sizes.data(), dl_device(device_), &dst, &handle) != FLOTILLA_OK) {
      throw std::bad_alloc();
    }
    return Lent(host_, view(dst), handle);
  }

 private:
  const flotilla_host* host_;
  c10::Device device_;
};

// ---- Aggregation plugins ---------------------------------------------------------------------

/// Base class of an aggregation method. Exceptions thrown by overrides become status codes:
/// Rejected -> FLOTILLA_E_REJECTED, Invalid -> FLOTILLA_E_INVALID, others -> FLOTILLA_E_INTERNAL.
class Aggregator {
 public:
  /// Subclasses take (const Host&, const Options&, const NamedTensors& global).
  virtual ~Aggregator() = default;
  virtual void check(const NamedTensors& update, const flotilla_update_info& info) = 0;
  /// Called only with an update check() has just accepted.
  virtual void accept(const NamedTensors& update, const flotilla_update_info& info) = 0;
  virtual void finalize(flotilla_output* out) = 0;
  virtual void discard() = 0;
  /// Per-client models (override client_model and set has_client_model()).
  [[nodiscard]] virtual bool has_client_model() const { return false; }
  virtual void client_model(std::uint32_t client, const NamedTensors& client_template,
                            flotilla_output* out) {}
  virtual void export_state(flotilla_output* out) {}
  virtual void import_state(const NamedTensors& saved) {}
};

template <class T>
struct AggregatorEntry {
  struct State {
    Host host;
    std::unique_ptr<T> impl;
  };
  static int create(const flotilla_host* host, const flotilla_options* options,
                    const flotilla_tensors* global, void** state) {
    return guarded(host, [&] {
      auto s = std::make_unique<State>(State{Host(host), nullptr});
      s->impl = std::make_unique<T>(s->host, Options(options), views(global));
      *state = s.release();
    });
  }
  static State* self(void* s) { return static_cast<State*>(s); }
  static int check(void* s, const flotilla_tensors* u, const flotilla_update_info* info) {
    return guarded(self(s)->host.raw(), [&] { self(s)->impl->check(views(u), *info); });
  }
  /// check() first, then accept(): the ABI's "a rejected update leaves the state unchanged" holds
  /// for every SDK plugin without each accept() checking again.
  static int accept(void* s, const flotilla_tensors* u, const flotilla_update_info* info) {
    return guarded(self(s)->host.raw(), [&] {
      const auto update = views(u);
      self(s)->impl->check(update, *info);
      self(s)->impl->accept(update, *info);
    });
  }
  static int finalize(void* s, flotilla_output* out) {
    return guarded(self(s)->host.raw(), [&] { self(s)->impl->finalize(out); });
  }
  static int client_model(void* s, std::uint32_t client, const flotilla_tensors* tmpl,
                          flotilla_output* out) {
    return guarded(self(s)->host.raw(),
                   [&] { self(s)->impl->client_model(client, views(tmpl), out); });
  }
  static int discard(void* s) {
    return guarded(self(s)->host.raw(), [&] { self(s)->impl->discard(); });
  }
  static int export_state(void* s, flotilla_output* out) {
    return guarded(self(s)->host.raw(), [&] { self(s)->impl->export_state(out); });
  }
  static int import_state(void* s, const flotilla_tensors* saved) {
    return guarded(self(s)->host.raw(), [&] { self(s)->impl->import_state(views(saved)); });
  }
  static void destroy(void* s) { delete self(s); }
  static flotilla_aggregator_api table(bool per_client) {
    flotilla_aggregator_api api{};
    api.struct_size = sizeof(api);
    api.create = &create;
    api.check = &check;
    api.accept = &accept;
    api.finalize = &finalize;
    api.client_model = per_client ? &client_model : nullptr;
    api.discard = &discard;
    api.export_state = &export_state;
    api.import_state = &import_state;
    api.destroy = &destroy;
    return api;
  }
};

// ---- Optimizer plugins -----------------------------------------------------------------------

class Optimizer {
 public:
  /// Subclasses take (const Host&, const Options&, const NamedTensors& params).
  virtual ~Optimizer() = default;
  /// `grads[i].tensor` is undefined where parameter i got no gradient this step.
  virtual void step(const NamedTensors& params, const NamedTensors& grads) = 0;
  [[nodiscard]] virtual std::uint64_t state_bytes() const = 0;
  virtual void save(flotilla_output* out) {}
  virtual void load(const NamedTensors& saved) {}
};

template <class T>
struct OptimizerEntry {
  struct State {
    Host host;
    std::unique_ptr<T> impl;
  };
  static State* self(void* s) { return static_cast<State*>(s); }
  static int create(const flotilla_host* host, const flotilla_options* options,
                    const flotilla_tensors* params, void** state) {
    return guarded(host, [&] {
      auto s = std::make_unique<State>(State{Host(host), nullptr});
      s->impl = std::make_unique<T>(s->host, Options(options), views(params));
      *state = s.release();
    });
  }
  static int step(void* s, const flotilla_tensors* params, const flotilla_tensors* grads) {
    return guarded(self(s)->host.raw(), [&] {
      NamedTensors g;
      g.reserve(grads->count);
      for (std::size_t i = 0; i < grads->count; ++i) {
        const auto& t = grads->items[i];
        g.push_back({t.name ? t.name : "", t.tensor.data == nullptr ? at::Tensor() : view(t.tensor)});
      }
      self(s)->impl->step(views(params), g);
    });
  }
  static int state_bytes(void* s, std::uint64_t* bytes) {
    return guarded(self(s)->host.raw(), [&] { *bytes = self(s)->impl->state_bytes(); });
  }
  static int save(void* s, flotilla_output* out) {
    return guarded(self(s)->host.raw(), [&] { self(s)->impl->save(out); });
  }
  static int load(void* s, const flotilla_tensors* saved) {
    return guarded(self(s)->host.raw(), [&] { self(s)->impl->load(views(saved)); });
  }
  static void destroy(void* s) { delete self(s); }
  static flotilla_optimizer_api table() {
    flotilla_optimizer_api api{};
    api.struct_size = sizeof(api);
    api.create = &create;
    api.step = &step;
    api.state_bytes = &state_bytes;
    api.save = &save;
    api.load = &load;
    api.destroy = &destroy;
    return api;
  }
};

/// Bytes held by a tensor (0 if undefined).
inline std::uint64_t bytes_of(const at::Tensor& t) {
  return t.defined() ? static_cast<std::uint64_t>(t.numel()) * t.element_size() : 0;
}

}  // namespace flotilla::sdk

// ---- Entry points ------------------------------------------------------------------------------

namespace flotilla::sdk {
/// CLASS::kFlags (an OR of flotilla_aggregator_flag) when the class declares it, else 0.
template <class T, class = void>
struct AggregatorFlags {
  static constexpr std::uint32_t value = 0;
};
template <class T>
struct AggregatorFlags<T, std::void_t<decltype(T::kFlags)>> {
  static constexpr std::uint32_t value = static_cast<std::uint32_t>(T::kFlags);
};
}  // namespace flotilla::sdk

#define FLOTILLA_SDK_DESCRIPTOR_(KIND, NAME, VERSION, DESCRIPTION, OPTIONS, AGG, OPT, FLAGS) \
  static const flotilla_plugin flotilla_sdk_descriptor_ = {                                 \
      sizeof(flotilla_plugin), FLOTILLA_PLUGIN_ABI_MAJOR, FLOTILLA_PLUGIN_ABI_MINOR, KIND,  \
      NAME, VERSION, DESCRIPTION, OPTIONS,                                                   \
      sizeof(OPTIONS) / sizeof(flotilla_option_spec), AGG, OPT, FLAGS};                     \
  extern "C" FLOTILLA_PLUGIN_EXPORT int flotilla_plugin_v1(const flotilla_host* host,        \
                                                           const flotilla_plugin** plugin) { \
    if (host == nullptr || plugin == nullptr) return FLOTILLA_E_INVALID;                    \
    *plugin = &flotilla_sdk_descriptor_;                                                    \
    return FLOTILLA_OK;                                                                     \
  }

/// Defines the entry point of an aggregation plugin implemented by CLASS (a subclass of
/// flotilla::sdk::Aggregator). OPTIONS is a (non-empty) array of flotilla_option_spec. A class
/// may declare `static constexpr std::uint32_t kFlags` (flotilla_aggregator_flag bits).
#define FLOTILLA_AGGREGATOR_PLUGIN(CLASS, NAME, VERSION, DESCRIPTION, OPTIONS)              \
  static const flotilla_aggregator_api flotilla_sdk_aggregator_ =                           \
      flotilla::sdk::AggregatorEntry<CLASS>::table(CLASS::kPerClient);                      \
  FLOTILLA_SDK_DESCRIPTOR_(FLOTILLA_KIND_AGGREGATOR, NAME, VERSION, DESCRIPTION, OPTIONS,   \
                           &flotilla_sdk_aggregator_, nullptr,                              \
                           flotilla::sdk::AggregatorFlags<CLASS>::value)

/// Defines the entry point of an optimizer plugin implemented by CLASS (a subclass of
/// flotilla::sdk::Optimizer).
#define FLOTILLA_OPTIMIZER_PLUGIN(CLASS, NAME, VERSION, DESCRIPTION, OPTIONS)               \
  static const flotilla_optimizer_api flotilla_sdk_optimizer_ =                             \
      flotilla::sdk::OptimizerEntry<CLASS>::table();                                        \
  FLOTILLA_SDK_DESCRIPTOR_(FLOTILLA_KIND_OPTIMIZER, NAME, VERSION, DESCRIPTION, OPTIONS,    \
                           nullptr, &flotilla_sdk_optimizer_, 0u)

#include "runtime/plugin_host/plugin_aggregation.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace flotilla {
namespace {

flotilla_update_info info_of(const WeightedUpdate& u) {
  flotilla_update_info info{};
  info.struct_size = sizeof(info);
  info.weight = u.weight;
  info.staleness = u.staleness;
  info.client_id = u.client_id;
  return info;
}

/// The options as the C ABI passes them (pointers into `options`).
struct DlOptions {
  explicit DlOptions(const PluginOptions& options) {
    for (const auto& [k, v] : options) items.push_back({k.c_str(), v.c_str()});
    list.items = items.data();
    list.count = items.size();
  }
  std::vector<flotilla_option> items;
  flotilla_options list{};
};

}  // namespace

Expected<void*> PluginAggregation::create_state(const PluginLibrary& library,
                                                const PluginOptions& options,
                                                const TensorList& global) {
  DlOptions opts(options);
  DlTensors tensors(global);
  void* state = nullptr;
  const auto& api = *library.plugin().aggregator;
  if (auto ok = library.call("create",
                             [&] { return api.create(library.host(), &opts.list, tensors.get(), &state); });
      !ok) {
    return ok.error();
  }
  if (state == nullptr) {
    return Error{Errc::internal, "plugin '" + library.info().name + "' create returned no state"};
  }
  return state;
}

Expected<std::unique_ptr<PluginAggregation>> PluginAggregation::create(
    std::shared_ptr<PluginLibrary> library, PluginOptions options, const TensorList& global) {
  if (library->info().kind != FLOTILLA_KIND_AGGREGATOR) {
    return Error{Errc::invalid_argument,
                 "plugin '" + library->info().name + "' is not an aggregator plugin"};
  }
  if (auto ok = library->check_options(options, "aggregator.options"); !ok) return ok.error();
  auto state = create_state(*library, options, global);
  if (!state) return state.error();
  std::unique_ptr<PluginAggregation> agg(
      new PluginAggregation(std::move(library), std::move(options), global));
  agg->state_ = *state;
  return agg;
}

PluginAggregation::~PluginAggregation() { destroy_state(); }

void PluginAggregation::destroy_state() {
  if (state_ == nullptr) return;
  void* s = state_;
  state_ = nullptr;
  (void)library_->call("destroy", [&] {
    api().destroy(s);
    return FLOTILLA_OK;
  });
}

namespace {

/// What the host itself requires of every update, before any plugin sees it.
Expected<void> check_envelope(const WeightedUpdate& update) {
  if (update.tensors == nullptr) return Error{Errc::rejected, "update has no tensors"};
  if (!(update.weight > 0) || !std::isfinite(update.weight)) {
    return Error{Errc::rejected, "update weight must be > 0, got " + std::to_string(update.weight)};
  }
  return {};
}

}  // namespace

Expected<void> PluginAggregation::check(const WeightedUpdate& update) const {
  if (auto ok = check_envelope(update); !ok) return ok;
  // Metadata only: the plugin sees shapes without data.
  TensorList meta;
  meta.reserve(update.tensors->size());
  for (const auto& t : *update.tensors) {
    meta.push_back({t.name, at::empty(t.tensor.sizes(), t.tensor.options().device(at::kMeta))});
  }
  DlTensors tensors(meta);
  const auto info = info_of(update);
  return library_->call("check", [&] { return api().check(state_, tensors.get(), &info); });
}

Expected<void> PluginAggregation::accept(const WeightedUpdate& update) {
  // The plugin's accept refuses what its check refuses (the ABI's contract), so the metadata
  // check is not run a second time here; the round logic ran it when the update arrived.
  if (auto ok = check_envelope(update); !ok) return ok;
  TensorList contiguous;
  contiguous.reserve(update.tensors->size());
  for (const auto& t : *update.tensors) contiguous.push_back({t.name, t.tensor.contiguous()});
  DlTensors tensors(contiguous);
  const auto info = info_of(update);
  if (auto ok = library_->call("accept", [&] { return api().accept(state_, tensors.get(), &info); });
      !ok) {
    return ok;
  }
  ++accepted_;
  for (const auto& t : *update.tensors) carried_.insert(t.name);
  return {};
}

Expected<void> PluginAggregation::accept_batch(std::span<const WeightedUpdate> updates) {
  Expected<void> first;
  for (const auto& u : updates) {
    auto ok = accept(u);
    if (!ok && first) first = ok;
  }
  return first;
}

TensorList PluginAggregation::finalize() {
  if (accepted_ == 0) throw Failure(Errc::internal, "finalize with no accepted update");
  flotilla_output out;
  accepted_ = 0;
  if (auto ok = library_->call("finalize", [&] { return api().finalize(state_, &out); }); !ok) {
    throw Failure(ok.error());
  }
  // Overlay what the plugin emitted on the current global model; what it did not emit stays.
  const auto carried = std::exchange(carried_, {});
  // A plugin built before ABI 1.2 could not declare it: its outputs are taken as before.
  const bool writes_base = traits().writes_base || library_->info().abi_minor < 2;
  TensorList next = global_;
  for (auto& t : out.tensors) {
    if (!writes_base && carried.count(t.name) == 0) {
      throw Failure(Errc::internal, "plugin '" + plugin_name() + "' finalize emitted '" + t.name +
                                        "', which no update carried: a method that writes into "
                                        "tensors clients do not send declares FLOTILLA_AGG_WRITES_BASE");
    }
    auto it = std::find_if(next.begin(), next.end(), [&](const NamedTensor& g) { return g.name == t.name; });
    if (it == next.end()) {
      throw Failure(Errc::internal, "plugin '" + plugin_name() + "' finalize emitted '" + t.name +
                                        "', which is not a tensor of the global model");
    }
    if (!it->tensor.sizes().equals(t.tensor.sizes())) {
      throw Failure(Errc::internal, "plugin '" + plugin_name() + "' finalize emitted '" + t.name +
                                        "' with shape " + shape_string(t.tensor.sizes()) +
                                        ", the global model's is " + shape_string(it->tensor.sizes()));
    }
    auto value = t.tensor.to(at::kCPU, it->tensor.scalar_type());
    it->tensor = std::move(value);
  }
  global_ = next;
  return next;
}

void PluginAggregation::discard() {
  accepted_ = 0;
  carried_.clear();
  if (auto ok = library_->call("discard", [&] { return api().discard(state_); }); !ok) {
    plugin_log(FLOTILLA_LOG_ERROR, plugin_name(), ok.error().message);
  }
}

std::optional<TensorList> PluginAggregation::client_model(std::uint32_t client_id,
                                                          const TensorList& client_template) {
  if (api().client_model == nullptr) return std::nullopt;
  TensorList meta;
  for (const auto& t : client_template) {
    meta.push_back({t.name, at::empty(t.tensor.sizes(), t.tensor.options().device(at::kMeta))});
  }
  DlTensors tmpl(meta);
  flotilla_output out;
  if (auto ok = library_->call("client_model",
                               [&] { return api().client_model(state_, client_id, tmpl.get(), &out); });
      !ok) {
    throw Failure(ok.error());
  }
  for (auto& t : out.tensors) t.tensor = t.tensor.to(at::kCPU);
  return std::move(out.tensors);
}

std::string PluginAggregation::describe() const {
  const auto& info = library_->info();
  return info.name + " " + info.version + " (" + info.path.string() + ")";
}

AggregationTraits traits_of(const PluginInfo& info) {
  const auto flags = info.aggregator_flags;
  AggregationTraits t;
  t.needs_cohort = (flags & FLOTILLA_AGG_NEEDS_COHORT) != 0;
  t.tracks_global = (flags & FLOTILLA_AGG_TRACKS_GLOBAL) != 0;
  t.lora_frozen_a = (flags & FLOTILLA_AGG_LORA_FROZEN_A) != 0;
  t.lora_local_b = (flags & FLOTILLA_AGG_LORA_LOCAL_B) != 0;
  t.lora_trains_a = (flags & FLOTILLA_AGG_LORA_TRAINS_A) != 0 || t.lora_local_b;
  t.lora_adapters = (flags & FLOTILLA_AGG_LORA_ADAPTERS) != 0 || t.lora_frozen_a || t.lora_trains_a;
  t.writes_base = (flags & FLOTILLA_AGG_WRITES_BASE) != 0;
  t.per_client = info.per_client;
  return t;
}

AggregationTraits PluginAggregation::traits() const { return traits_of(library_->info()); }

Expected<void> PluginAggregation::reload(std::shared_ptr<PluginLibrary> library) {
  if (accepted_ != 0) {
    return Error{Errc::internal, "reload with " + std::to_string(accepted_) + " updates folded in"};
  }
  if (library->info().kind != FLOTILLA_KIND_AGGREGATOR) {
    return Error{Errc::invalid_argument, "the new '" + library->info().path.string() +
                                             "' is not an aggregator plugin"};
  }
  if (auto ok = library->check_options(options_, "aggregator.options"); !ok) return ok.error();
  // The run was set up (and checked) for what the running build declares: clients keep or send
  // tensors, schedules refuse combinations, by it. Another declaration needs a new run.
  if (traits_of(library->info()) != traits()) {
    return Error{Errc::invalid_config, "the new build declares other needs (aggregator flags " +
                                           std::to_string(library->info().aggregator_flags) + ", was " +
                                           std::to_string(library_->info().aggregator_flags) +
                                           ", or another client_model): the run was set up for the "
                                           "running build's; start a new run to change them"};
  }
  // The method's state between versions (server moments, ...) moves to the new build.
  auto saved = export_state();
  if (!saved) return saved.error();
  auto state = create_state(*library, options_, global_);
  if (!state) return state.error();
  if (auto ok = import_into(*library, *state, *saved); !ok) {
    const auto& next = *library->plugin().aggregator;
    (void)library->call("destroy", [&] { next.destroy(*state); return FLOTILLA_OK; });
    return Error{ok.error().code, "the new build cannot take the old one's state: " + ok.error().message};
  }
  destroy_state();
  library_ = std::move(library);
  state_ = *state;
  return {};
}

Expected<TensorList> PluginAggregation::export_state() {
  flotilla_output saved;
  if (api().export_state == nullptr) return TensorList{};
  if (auto ok = library_->call("export_state", [&] { return api().export_state(state_, &saved); }); !ok) {
    return ok.error();
  }
  return std::move(saved.tensors);
}

Expected<void> PluginAggregation::import_into(const PluginLibrary& library, void* state,
                                              const TensorList& saved) {
  if (saved.empty()) return {};
  const auto& api = *library.plugin().aggregator;
  if (api.import_state == nullptr) {
    return Error{Errc::invalid_argument, library.info().name + " " + library.info().version +
                                             " imports no state (it declares no import_state)"};
  }
  DlTensors tensors(saved);
  return library.call("import_state", [&] { return api.import_state(state, tensors.get()); });
}

Expected<void> PluginAggregation::import_state(const TensorList& saved) {
  return import_into(*library_, state_, saved);
}

}  // namespace flotilla

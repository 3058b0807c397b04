#include "runtime/plugin_host/plugin_optimizer.hpp"

#include "flotilla/plugin.hpp"

#include <ATen/ATen.h>

namespace flotilla {

Expected<std::unique_ptr<PluginOptimizer>> PluginOptimizer::create(
    std::shared_ptr<PluginLibrary> library, const PluginOptions& options, const TensorList& params,
    const std::string& where) {
  if (library->info().kind != FLOTILLA_KIND_OPTIMIZER) {
    return Error{Errc::invalid_argument,
                 "plugin '" + library->info().name + "' is not an optimizer plugin"};
  }
  if (auto ok = library->check_options(options, where); !ok) return ok.error();
  for (const auto& p : params) {
    if (!p.tensor.is_contiguous()) {
      return Error{Errc::invalid_argument, "parameter '" + p.name + "' is not contiguous"};
    }
  }
  std::unique_ptr<PluginOptimizer> opt(new PluginOptimizer(std::move(library), params));
  std::vector<flotilla_option> items;
  for (const auto& [k, v] : options) items.push_back({k.c_str(), v.c_str()});
  flotilla_options opts{items.data(), items.size()};
  void* state = nullptr;
  const auto& lib = *opt->library_;
  if (auto ok = lib.call("create", [&] {
        return opt->api().create(lib.host(), &opts, opt->dl_params_.get(), &state);
      });
      !ok) {
    return ok.error();
  }
  if (state == nullptr) {
    return Error{Errc::internal, "plugin '" + lib.info().name + "' create returned no state"};
  }
  opt->state_ = state;
  return opt;
}

PluginOptimizer::~PluginOptimizer() {
  if (state_ == nullptr) return;
  (void)library_->call("destroy", [&] {
    api().destroy(state_);
    return FLOTILLA_OK;
  });
}

Expected<void> PluginOptimizer::step() {
  TensorList grads;
  grads.reserve(params_.size());
  for (const auto& p : params_) grads.push_back({p.name, p.tensor.grad()});
  return step(grads);
}

Expected<void> PluginOptimizer::step(const TensorList& grads) {
  if (grads.size() != params_.size()) {
    return Error{Errc::invalid_argument, "step: " + std::to_string(grads.size()) +
                                             " gradients for " + std::to_string(params_.size()) +
                                             " parameters"};
  }
  std::vector<flotilla_tensor> items;
  items.reserve(grads.size());
  std::vector<at::Tensor> keep;
  keep.reserve(grads.size());
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const auto& g = grads[i].tensor;
    if (!g.defined()) {
      flotilla_tensor none{params_[i].name.c_str(), sdk::describe(params_[i].tensor)};
      none.tensor.data = nullptr;
      items.push_back(none);
      continue;
    }
    keep.push_back(g.contiguous());
    items.push_back({params_[i].name.c_str(), sdk::describe(keep.back())});
  }
  flotilla_tensors list{items.data(), items.size()};
  at::NoGradGuard no_grad;
  return library_->call("step", [&] { return api().step(state_, dl_params_.get(), &list); });
}

Expected<std::uint64_t> PluginOptimizer::state_bytes() const {
  std::uint64_t bytes = 0;
  if (auto ok = library_->call("state_bytes", [&] { return api().state_bytes(state_, &bytes); }); !ok) {
    return ok.error();
  }
  return bytes;
}

Expected<TensorList> PluginOptimizer::save() const {
  if (api().save == nullptr) return TensorList{};
  flotilla_output out;
  if (auto ok = library_->call("save", [&] { return api().save(state_, &out); }); !ok) {
    return ok.error();
  }
  return std::move(out.tensors);
}

Expected<void> PluginOptimizer::load(const TensorList& saved) {
  if (api().load == nullptr) {
    return Error{Errc::invalid_argument, "plugin '" + library_->info().name + "' cannot load state"};
  }
  DlTensors tensors(saved);
  return library_->call("load", [&] { return api().load(state_, tensors.get()); });
}

}  // namespace flotilla

// Server optimizers (fedavgm, fedadam, fedyogi): the weighted mean of a version's updates,
// minus the current global model, is a pseudo-gradient that an optimizer with state between
// versions (momentum, second moments) turns into the next global model. This header holds what
// the three plugins share: the running weighted mean (sdk::WeightedMean), the plugin's copy of the global model, the
// per-tensor optimizer state and its export/import; each plugin only defines its step.
//
// Memory on the device: a copy of the global model (the method needs the value the updates
// are compared against), one float32 running sum of the tensors updates carry, and the
// optimizer state of those tensors (one or two float32 copies).
#pragma once

#include "common.hpp"
#include "flotilla/fold.hpp"

#include <string>
#include <utility>
#include <vector>

namespace flotilla::aggregators {

class ServerOptimizer : public sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;
  /// Keeps the global model and steps it with its own server optimizer.
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_TRACKS_GLOBAL;

  /// `slots`: the names of the per-tensor state (e.g. {"m", "v"}); state tensor `s` of tensor
  /// `t` is exported as "<s>/<t>".
  ServerOptimizer(const sdk::Host& host, const NamedTensors& global, std::vector<std::string> slots)
      : host_(host), layout_(global), slots_(std::move(slots)), state_(global.size()), mean_(host) {
    for (const auto& t : global) {
      global_.push_back(owned_copy(t.tensor, t.tensor.options().device(host_.device())));
    }
  }

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    layout_.check(update, info);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    if (mean_.empty()) layout_.fix(update);
    mean_.add(update, info.weight);
  }

  void finalize(flotilla_output* out) override {
    AtExit reset{[this] { discard(); }};
    // The new global values are committed to the plugin's copy only once all are emitted, so
    // that a failure part-way leaves the copy equal to the host's model (which the host then
    // keeps). The optimizer state of tensors already stepped has advanced in that case.
    std::vector<std::pair<std::size_t, at::Tensor>> next;
    const auto& indices = layout_.indices();
    auto& means = mean_.means();
    for (std::size_t p = 0; p < indices.size(); ++p) {
      const std::size_t g = indices[p];
      const auto& x = global_[g];
      at::Tensor value;
      if (!at::isFloatingType(means[p].scalar_type())) {
        value = means[p];
      } else {
        // delta = weighted mean − global, computed in the mean's memory.
        at::Tensor delta = means[p].sub_(x);
        auto& state = state_[g];
        if (state.empty()) {
          for (std::size_t s = 0; s < slots_.size(); ++s) state.push_back(initial(s, delta));
        }
        const at::Tensor change = step(delta, state);
        value = (x.to(change.scalar_type()) + change).to(x.scalar_type());
      }
      host_.emit(out, layout_.name(g), value);
      next.emplace_back(g, std::move(value));
    }
    for (auto& [g, value] : next) global_[g] = std::move(value);
  }

  void discard() override {
    mean_.clear();
    layout_.reset();
  }

  void export_state(flotilla_output* out) override {
    for (std::size_t g = 0; g < state_.size(); ++g) {
      for (std::size_t s = 0; s < state_[g].size(); ++s) {
        host_.emit(out, slots_[s] + "/" + layout_.name(g), state_[g][s]);
      }
    }
  }

  /// Takes what export_state emitted (possibly by another build of the plugin). A name that is
  /// not "<slot>/<tensor of the model>" is skipped with a warning (a slot an older build had);
  /// a known name with another shape is Invalid.
  void import_state(const NamedTensors& saved) override {
    const auto& reference = layout_.reference();
    for (const auto& t : saved) {
      const auto slash = t.name.find('/');
      const std::string slot = t.name.substr(0, slash == std::string::npos ? 0 : slash);
      const std::string tensor = slash == std::string::npos ? "" : t.name.substr(slash + 1);
      std::size_t s = 0;
      while (s < slots_.size() && slots_[s] != slot) ++s;
      std::size_t g = 0;
      while (g < reference.size() && reference[g].name != tensor) ++g;
      if (s == slots_.size() || g == reference.size() ||
          !at::isFloatingType(reference[g].tensor.scalar_type())) {
        host_.log(FLOTILLA_LOG_WARN, "import_state: skipping '" + t.name + "' (no such state)");
        continue;
      }
      if (!t.tensor.sizes().equals(reference[g].tensor.sizes())) {
        throw Invalid("import_state: '" + t.name + "' is " + describe(t.tensor) + ", the model's '" +
                      tensor + "' is " + describe(reference[g].tensor));
      }
      const auto options = at::TensorOptions()
                               .dtype(sdk::accumulator_type(reference[g].tensor.scalar_type()))
                               .device(host_.device());
      auto& state = state_[g];
      if (state.empty()) {
        const auto like = at::empty(t.tensor.sizes(), options);
        for (std::size_t k = 0; k < slots_.size(); ++k) state.push_back(initial(k, like));
      }
      state[s] = owned_copy(t.tensor, options);
    }
  }

 protected:
  /// One optimizer step for one tensor: `delta` = weighted mean of the updates − global value
  /// (float32, or float64 for float64 tensors, on the device; the step may overwrite it),
  /// `state` the tensor's state slots (updated in place). Returns the change to the global value.
  virtual at::Tensor step(at::Tensor& delta, std::vector<at::Tensor>& state) = 0;
  /// The value of state slot `slot` before the first step (default zeros), shaped like `like`.
  virtual at::Tensor initial(std::size_t slot, const at::Tensor& like) { return at::zeros_like(like); }

 private:
  sdk::Host host_;
  UpdateLayout layout_;
  std::vector<std::string> slots_;
  std::vector<at::Tensor> global_;               ///< the current global model, on the device
  std::vector<std::vector<at::Tensor>> state_;   ///< [global index][slot]; empty until stepped
  sdk::WeightedMean mean_;                       ///< of this version's updates (their subset)
};

/// FedAdam and FedYogi (Reddi et al., 2021): the same first moment and update, second moments
/// that differ in how fast they follow delta².
class AdaptiveServerOptimizer : public ServerOptimizer {
 public:
  enum class Rule { adam, yogi };

  AdaptiveServerOptimizer(const sdk::Host& host, const sdk::Options& options,
                          const NamedTensors& global, Rule rule)
      : ServerOptimizer(host, global, {"m", "v"}),
        rule_(rule),
        lr_(positive(options, "server-learning-rate", 0.01)),
        beta1_(real_in(options, "beta1", 0.9, 0.0, 1.0)),
        beta2_(real_in(options, "beta2", 0.99, 0.0, 1.0)),
        tau_(positive(options, "tau", 1e-3)) {}

 protected:
  at::Tensor step(at::Tensor& delta, std::vector<at::Tensor>& state) override {
    auto& m = state[0];
    auto& v = state[1];
    m.mul_(beta1_).add_(delta, 1.0 - beta1_);
    const auto& d2 = delta.square_();
    if (rule_ == Rule::adam) {
      v.mul_(beta2_).add_(d2, 1.0 - beta2_);
    } else {
      // Yogi: v moves towards delta² by at most (1 − β2)·delta², additively, so a sudden small
      // delta does not collapse v (and blow up the step) as Adam's decay would.
      v.sub_((v - d2).sign_().mul_(d2), 1.0 - beta2_);
    }
    return m.div(at::sqrt(v).add_(tau_)).mul_(lr_);
  }

  /// v starts at τ² (the paper's v₋₁ ≥ τ²), m at zero.
  at::Tensor initial(std::size_t slot, const at::Tensor& like) override {
    return slot == 1 ? at::full_like(like, tau_ * tau_) : at::zeros_like(like);
  }

 private:
  Rule rule_;
  double lr_, beta1_, beta2_, tau_;
};

}  // namespace flotilla::aggregators

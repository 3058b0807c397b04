// adamw: Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization", ICLR 2019), with exactly torch::optim::AdamW's semantics (amsgrad off):
//
//   w = w * (1 - lr * weight_decay)                       (decoupled: not through the moments)
//   t = t + 1;  m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
//   w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// State per parameter: m and v (the parameter's shape and dtype) and a step count t.
#include "adam.hpp"

#include <string>
#include <vector>

namespace {

using flotilla::optimizers::AdamMoments;
using flotilla::optimizers::AdamOptions;
using flotilla::sdk::Host;
using flotilla::sdk::Invalid;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;

class AdamW final : public flotilla::sdk::Optimizer {
 public:
  AdamW(const Host& host, const Options& options, const NamedTensors& params)
      : host_(host), o_(options) {
    for (const auto& p : params) {
      state_.push_back({p.name, {at::zeros_like(p.tensor), at::zeros_like(p.tensor)}});
    }
  }

  void step(const NamedTensors& params, const NamedTensors& grads) override {
    if (params.size() != state_.size() || grads.size() != state_.size()) {
      throw Invalid("step: expected " + std::to_string(state_.size()) + " parameters and gradients");
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& g = grads[i].tensor;
      if (!g.defined()) continue;
      auto w = params[i].tensor;
      auto& m = state_[i].moments;
      w.mul_(1 - o_.lr * o_.weight_decay);
      const auto d = m.advance(g, o_);
      w.addcdiv_(m.exp_avg, d.denom, -d.step_size);
    }
  }

  [[nodiscard]] std::uint64_t state_bytes() const override {
    std::uint64_t total = 0;
    for (const auto& s : state_) total += s.moments.bytes();
    return total;
  }

  void save(flotilla_output* out) override {
    for (const auto& s : state_) s.moments.save(host_, out, s.name);
  }

  void load(const NamedTensors& saved) override {
    auto next = state_;
    for (auto& s : next) s.moments = s.moments.clone();
    flotilla::optimizers::for_each_saved(saved, [&](const std::string& param, const std::string& field,
                                                    const flotilla::sdk::Named& t) {
      State* s = nullptr;
      for (auto& c : next) {
        if (c.name == param) s = &c;
      }
      if (s == nullptr) throw Invalid("saved tensor '" + t.name + "' is not adamw state of these parameters");
      if (!s->moments.load(field, t)) throw Invalid("saved tensor '" + t.name + "' is not adamw state");
    });
    state_ = std::move(next);
  }

 private:
  struct State {
    std::string name;
    AdamMoments moments;
  };

  Host host_;
  AdamOptions o_;
  std::vector<State> state_;
};

const flotilla_option_spec kOptions[] = {
    {"learning-rate", "float", "0.001", "step size (>= 0)"},
    {"beta1", "float", "0.9", "decay of the first moment, in [0, 1)"},
    {"beta2", "float", "0.999", "decay of the second moment, in [0, 1)"},
    {"eps", "float", "1e-8", "added to the denominator (> 0)"},
    {"weight-decay", "float", "0.01", "decoupled weight decay: w -= learning-rate * weight-decay * w (>= 0)"},
};

}  // namespace

FLOTILLA_OPTIMIZER_PLUGIN(AdamW, "adamw", "1.0.0",
                          "Adam with decoupled weight decay (AdamW, torch.optim.AdamW semantics)",
                          kOptions)

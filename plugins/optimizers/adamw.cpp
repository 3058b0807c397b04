// adamw: Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization", ICLR 2019), with exactly torch::optim::AdamW's semantics (amsgrad off):
//
//   w = w * (1 - lr * weight_decay)                       (decoupled: not through the moments)
//   t = t + 1;  m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
//   w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// State per parameter: m and v (the parameter's shape and dtype) and a step count t.
#include "flotilla/plugin.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace {

using flotilla::sdk::Host;
using flotilla::sdk::Invalid;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;

using flotilla::sdk::bounded;

class AdamW final : public flotilla::sdk::Optimizer {
 public:
  AdamW(const Host& host, const Options& options, const NamedTensors& params)
      : host_(host),
        lr_(bounded(options, "learning-rate", 1e-3, 0, INFINITY, false, true, ">= 0")),
        beta1_(bounded(options, "beta1", 0.9, 0, 1, false, true, "in [0, 1)")),
        beta2_(bounded(options, "beta2", 0.999, 0, 1, false, true, "in [0, 1)")),
        eps_(bounded(options, "eps", 1e-8, 0, INFINITY, true, true, "> 0")),
        weight_decay_(bounded(options, "weight-decay", 0.01, 0, INFINITY, false, true, ">= 0")) {
    for (const auto& p : params) {
      state_.push_back({p.name, at::zeros_like(p.tensor), at::zeros_like(p.tensor), 0});
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
      auto& s = state_[i];
      w.mul_(1 - lr_ * weight_decay_);
      s.step += 1;
      const double bc1 = 1 - std::pow(beta1_, static_cast<double>(s.step));
      const double bc2 = 1 - std::pow(beta2_, static_cast<double>(s.step));
      s.exp_avg.mul_(beta1_).add_(g, 1 - beta1_);
      s.exp_avg_sq.mul_(beta2_).addcmul_(g, g, 1 - beta2_);
      const auto denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(eps_);
      w.addcdiv_(s.exp_avg, denom, -lr_ / bc1);
    }
  }

  [[nodiscard]] std::uint64_t state_bytes() const override {
    std::uint64_t total = 0;
    for (const auto& s : state_) {
      total += flotilla::sdk::bytes_of(s.exp_avg) + flotilla::sdk::bytes_of(s.exp_avg_sq);
    }
    return total;
  }

  void save(flotilla_output* out) override {
    for (const auto& s : state_) {
      host_.emit(out, s.name + "/exp_avg", s.exp_avg);
      host_.emit(out, s.name + "/exp_avg_sq", s.exp_avg_sq);
      host_.emit(out, s.name + "/step", at::scalar_tensor(s.step, at::kLong));
    }
  }

  void load(const NamedTensors& saved) override {
    auto next = state_;
    for (auto& s : next) {
      s.exp_avg = s.exp_avg.clone();
      s.exp_avg_sq = s.exp_avg_sq.clone();
    }
    for (const auto& t : saved) {
      const auto slash = t.name.rfind('/');
      const std::string param = slash == std::string::npos ? "" : t.name.substr(0, slash);
      const std::string field = slash == std::string::npos ? t.name : t.name.substr(slash + 1);
      State* s = nullptr;
      for (auto& c : next) {
        if (c.name == param) s = &c;
      }
      if (s == nullptr) throw Invalid("saved tensor '" + t.name + "' is not adamw state of these parameters");
      if (field == "step") {
        if (t.tensor.numel() != 1) throw Invalid("'" + t.name + "' must hold one number");
        s->step = t.tensor.to(at::kCPU).to(at::kLong).item<std::int64_t>();
        continue;
      }
      at::Tensor* dst = field == "exp_avg" ? &s->exp_avg : field == "exp_avg_sq" ? &s->exp_avg_sq : nullptr;
      if (dst == nullptr) throw Invalid("saved tensor '" + t.name + "' is not adamw state");
      if (!t.tensor.sizes().equals(dst->sizes())) {
        throw Invalid("'" + t.name + "' has another shape than its parameter");
      }
      dst->copy_(t.tensor);
    }
    state_ = std::move(next);
  }

 private:
  struct State {
    std::string name;
    at::Tensor exp_avg, exp_avg_sq;
    std::int64_t step;
  };

  Host host_;
  double lr_, beta1_, beta2_, eps_, weight_decay_;
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

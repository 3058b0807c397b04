// sgd: stochastic gradient descent with momentum, weight decay and Nesterov momentum, with
// exactly torch::optim::SGD's semantics at dampening 0:
//
//   d = g + weight_decay * w                       (L2 weight decay, added to the gradient)
//   b = momentum * b + d                           (momentum buffer; b = d at the first step)
//   d = nesterov ? d + momentum * b : b            (when momentum != 0)
//   w = w - learning_rate * d
//
// State: one momentum buffer per parameter when momentum != 0 (none otherwise).
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

class Sgd final : public flotilla::sdk::Optimizer {
 public:
  Sgd(const Host& host, const Options& options, const NamedTensors& params)
      : host_(host),
        lr_(bounded(options, "learning-rate", 0.01, 0, INFINITY, false, true, ">= 0")),
        momentum_(bounded(options, "momentum", 0, 0, 1, false, true, "in [0, 1)")),
        weight_decay_(bounded(options, "weight-decay", 0, 0, INFINITY, false, true, ">= 0")),
        nesterov_(options.boolean("nesterov", false)) {
    if (nesterov_ && momentum_ == 0) {
      throw Invalid("option 'nesterov' needs option 'momentum' > 0 (it is 0)");
    }
    for (const auto& p : params) {
      names_.push_back(p.name);
      // A zero buffer gives the same first step as torch's buf = d: momentum * 0 + d == d.
      buffers_.push_back(momentum_ != 0 ? at::zeros_like(p.tensor) : at::Tensor());
    }
  }

  void step(const NamedTensors& params, const NamedTensors& grads) override {
    if (params.size() != names_.size() || grads.size() != names_.size()) {
      throw Invalid("step: expected " + std::to_string(names_.size()) + " parameters and gradients");
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!grads[i].tensor.defined()) continue;
      auto w = params[i].tensor;
      auto d = grads[i].tensor;
      if (weight_decay_ != 0) d = d.add(w, weight_decay_);
      if (momentum_ != 0) {
        auto& b = buffers_[i];
        b.mul_(momentum_).add_(d);
        d = nesterov_ ? d.add(b, momentum_) : b;
      }
      w.add_(d, -lr_);
    }
  }

  [[nodiscard]] std::uint64_t state_bytes() const override {
    std::uint64_t total = 0;
    for (const auto& b : buffers_) total += flotilla::sdk::bytes_of(b);
    return total;
  }

  void save(flotilla_output* out) override {
    for (std::size_t i = 0; i < names_.size(); ++i) {
      if (buffers_[i].defined()) host_.emit(out, names_[i] + "/momentum_buffer", buffers_[i]);
    }
  }

  void load(const NamedTensors& saved) override {
    std::vector<at::Tensor> next = buffers_;
    for (const auto& s : saved) {
      bool known = false;
      for (std::size_t i = 0; i < names_.size() && !known; ++i) {
        if (s.name != names_[i] + "/momentum_buffer") continue;
        known = true;
        if (!next[i].defined()) throw Invalid("'" + s.name + "': this sgd has no momentum (momentum 0)");
        if (!s.tensor.sizes().equals(next[i].sizes())) {
          throw Invalid("'" + s.name + "' has another shape than its parameter");
        }
        next[i] = s.tensor.to(next[i].options()).clone();
      }
      if (!known) throw Invalid("saved tensor '" + s.name + "' is not sgd state of these parameters");
    }
    buffers_ = std::move(next);
  }

 private:
  Host host_;
  double lr_, momentum_, weight_decay_;
  bool nesterov_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> buffers_;
};

const flotilla_option_spec kOptions[] = {
    {"learning-rate", "float", "0.01", "step size (>= 0)"},
    {"momentum", "float", "0", "momentum factor in [0, 1); 0: plain SGD"},
    {"weight-decay", "float", "0", "L2 penalty added to the gradient (>= 0)"},
    {"nesterov", "bool", "false", "Nesterov momentum (needs momentum > 0)"},
};

}  // namespace

FLOTILLA_OPTIMIZER_PLUGIN(Sgd, "sgd", "1.0.0",
                          "SGD with momentum, weight decay and Nesterov momentum "
                          "(torch.optim.SGD semantics, dampening 0)",
                          kOptions)

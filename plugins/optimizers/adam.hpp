// What the Adam-family optimizer plugins (adamw, galore-adamw) share: their options, the
// moments of one tensor with torch::optim::AdamW's update of them, and saving and loading
// per-tensor state as "<parameter>/<field>". A header next to the plugins (the build makes a
// plugin of every *.cpp here, not of headers), compiled into each plugin that includes it.
#pragma once

#include "flotilla/plugin.hpp"

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

namespace flotilla::optimizers {

using sdk::Invalid;

/// learning-rate, beta1, beta2, eps, weight-decay, range-checked.
struct AdamOptions {
  explicit AdamOptions(const sdk::Options& o)
      : lr(sdk::bounded(o, "learning-rate", 1e-3, 0, INFINITY, false, true, ">= 0")),
        beta1(sdk::bounded(o, "beta1", 0.9, 0, 1, false, true, "in [0, 1)")),
        beta2(sdk::bounded(o, "beta2", 0.999, 0, 1, false, true, "in [0, 1)")),
        eps(sdk::bounded(o, "eps", 1e-8, 0, INFINITY, true, true, "> 0")),
        weight_decay(sdk::bounded(o, "weight-decay", 0.01, 0, INFINITY, false, true, ">= 0")) {}
  double lr, beta1, beta2, eps, weight_decay;
};

/// Adam's moments of one tensor (a parameter, or its low-rank projection) and their step count.
struct AdamMoments {
  at::Tensor exp_avg, exp_avg_sq;
  std::int64_t step = 0;

  /// One step of torch::optim::AdamW's moments from gradient `g`. The update to apply is
  /// -step_size · exp_avg / denom.
  struct Direction {
    at::Tensor denom;
    double step_size;
  };
  Direction advance(const at::Tensor& g, const AdamOptions& o) {
    step += 1;
    const double bc1 = 1 - std::pow(o.beta1, static_cast<double>(step));
    const double bc2 = 1 - std::pow(o.beta2, static_cast<double>(step));
    exp_avg.mul_(o.beta1).add_(g, 1 - o.beta1);
    exp_avg_sq.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
    return {(exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(o.eps), o.lr / bc1};
  }

  [[nodiscard]] std::uint64_t bytes() const {
    return sdk::bytes_of(exp_avg) + sdk::bytes_of(exp_avg_sq);
  }

  /// Emits "<name>/exp_avg", "<name>/exp_avg_sq", "<name>/step".
  void save(const sdk::Host& host, flotilla_output* out, const std::string& name) const {
    host.emit(out, name + "/exp_avg", exp_avg);
    host.emit(out, name + "/exp_avg_sq", exp_avg_sq);
    host.emit(out, name + "/step", at::scalar_tensor(step, at::kLong));
  }

  /// A copy that shares no memory (load works on copies: a bad file changes nothing).
  [[nodiscard]] AdamMoments clone() const { return {exp_avg.clone(), exp_avg_sq.clone(), step}; }

  /// Loads a saved "step", "exp_avg" or "exp_avg_sq" (shape-checked); false for another field.
  bool load(const std::string& field, const sdk::Named& saved);
};

/// Splits each saved "<parameter>/<field>" and calls `load(parameter, field, tensor)`.
inline void for_each_saved(const sdk::NamedTensors& saved,
                           const std::function<void(const std::string&, const std::string&,
                                                    const sdk::Named&)>& load) {
  for (const auto& t : saved) {
    const auto slash = t.name.rfind('/');
    if (slash == std::string::npos) throw Invalid("saved tensor '" + t.name + "' is not optimizer state");
    load(t.name.substr(0, slash), t.name.substr(slash + 1), t);
  }
}

/// Copies `saved` into `dst` after checking its shape.
inline void load_into(at::Tensor& dst, const sdk::Named& saved) {
  if (!saved.tensor.sizes().equals(dst.sizes())) {
    throw Invalid("'" + saved.name + "' has another shape than expected (another parameter or rank?)");
  }
  dst.copy_(saved.tensor);
}

inline bool AdamMoments::load(const std::string& field, const sdk::Named& saved) {
  if (field == "step") {
    if (saved.tensor.numel() != 1) throw Invalid("'" + saved.name + "' must hold one number");
    step = saved.tensor.to(at::kCPU).to(at::kLong).item<std::int64_t>();
    return true;
  }
  if (field != "exp_avg" && field != "exp_avg_sq") return false;
  load_into(field == "exp_avg" ? exp_avg : exp_avg_sq, saved);
  return true;
}

}  // namespace flotilla::optimizers

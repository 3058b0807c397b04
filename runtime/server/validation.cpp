#include "runtime/server/validation.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace flotilla {
namespace {

const NamedTensor* base_of(const NamedTensor& u, const TensorList& model, std::size_t i) {
  // Usually the same position; else by name.
  if (i < model.size() && model[i].name == u.name) return &model[i];
  for (const auto& m : model) {
    if (m.name == u.name) return &m;
  }
  return nullptr;
}

bool counts(const NamedTensor& u, const NamedTensor* base) {
  return base != nullptr && at::isFloatingType(u.tensor.scalar_type()) &&
         base->tensor.sizes().equals(u.tensor.sizes());
}

/// Whether every element is finite: a sum over all of them is (a NaN or an infinity makes it
/// not), checked exactly only if the sum overflowed.
bool finite(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  const double sum = t.sum().item<double>();
  if (std::isfinite(sum)) return true;
  return t.isfinite().all().item<bool>();
}

}  // namespace

const char* to_string(ValidationOptions::Norm norm) noexcept {
  switch (norm) {
    case ValidationOptions::Norm::off: return "off";
    case ValidationOptions::Norm::reject: return "reject";
    case ValidationOptions::Norm::clip: return "clip";
  }
  return "?";
}

UpdateValidator::Verdict UpdateValidator::inspect(const TensorList& update, const TensorList& model) const {
  Verdict v;
  at::NoGradGuard no_grad;
  const bool norms = options_.norm != ValidationOptions::Norm::off;
  double squares = 0;
  for (std::size_t i = 0; i < update.size(); ++i) {
    const auto& u = update[i];
    if (!u.tensor.defined() || !at::isFloatingType(u.tensor.scalar_type())) continue;
    if (options_.finite && !finite(u.tensor)) {
      v.ok = false;
      v.why = "tensor '" + u.name + "' has a NaN or an infinity";
      return v;
    }
    if (!norms) continue;
    const auto* base = base_of(u, model, i);
    if (!counts(u, base)) continue;
    const auto change = u.tensor.to(base->tensor.device(), at::kFloat) - base->tensor.to(at::kFloat);
    const double n = change.norm().item<double>();
    squares += n * n;
  }
  if (!norms) return v;
  v.norm = std::sqrt(squares);
  if (!std::isfinite(v.norm)) {
    v.ok = false;
    v.why = "its change to the model has a norm that is not finite";
    return v;
  }
  const auto med = median();
  if (!med || *med <= 0) return v;
  const double limit = options_.norm_factor * *med;
  if (v.norm <= limit) return v;
  v.outlier = true;
  v.why = fmt::format("its change has norm {:.4g}, more than {} x the median {:.4g} of the last {} "
                      "accepted updates",
                      v.norm, options_.norm_factor, *med, norms_.size());
  if (options_.norm == ValidationOptions::Norm::reject) {
    v.ok = false;
  } else {
    v.scale = limit / v.norm;
  }
  return v;
}

void UpdateValidator::accepted(double norm) {
  if (options_.norm == ValidationOptions::Norm::off || !std::isfinite(norm)) return;
  norms_.push_back(norm);
  while (norms_.size() > std::max<std::size_t>(options_.norm_window, 1)) norms_.pop_front();
}

std::optional<double> UpdateValidator::median() const {
  if (norms_.empty() || norms_.size() < options_.norm_min_samples) return std::nullopt;
  std::vector<double> sorted(norms_.begin(), norms_.end());
  const auto mid = sorted.begin() + static_cast<std::ptrdiff_t>(sorted.size() / 2);
  std::nth_element(sorted.begin(), mid, sorted.end());
  return *mid;
}

TensorList UpdateValidator::clip(const TensorList& update, const TensorList& model, double scale) {
  at::NoGradGuard no_grad;
  TensorList out;
  out.reserve(update.size());
  for (std::size_t i = 0; i < update.size(); ++i) {
    const auto& u = update[i];
    const auto* base = base_of(u, model, i);
    if (!counts(u, base)) {
      out.push_back(u);
      continue;
    }
    const auto m = base->tensor.to(u.tensor.device(), u.tensor.scalar_type());
    out.push_back({u.name, m + (u.tensor - m) * scale});
  }
  return out;
}

void UpdateValidator::restore(const std::vector<double>& norms) {
  norms_.clear();
  for (const double n : norms) accepted(n);
}

}  // namespace flotilla

// What the built-in aggregation plugins share: the check of an update's layout against the
// global model and option range checks. A header next to the plugins (the build makes a plugin
// of every *.cpp here, not of headers), compiled into each plugin that includes it.
#pragma once

#include "flotilla/plugin.hpp"

#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

namespace flotilla::aggregators {

using sdk::Invalid;
using sdk::NamedTensors;
using sdk::Rejected;

/// "Float [10, 64]"
inline std::string describe(const at::Tensor& t) {
  std::string s = std::string(c10::toString(t.scalar_type())) + " [";
  for (std::int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

/// Which tensors updates carry. An update carries every tensor of the global model or a subset
/// of them in the model's order (e.g. only LoRA adapters), with the global model's shapes and
/// dtypes; the first update accepted in a version fixes the subset for that version.
class UpdateLayout {
 public:
  explicit UpdateLayout(const NamedTensors& global) {
    for (const auto& t : global) {
      // Meta tensors: shapes and dtypes without keeping the data alive.
      reference_.push_back({t.name, at::empty(t.tensor.sizes(), t.tensor.options().device(at::kMeta))});
    }
  }

  /// Throws Rejected naming the first problem. Metadata only (check() gets no data).
  void check(const NamedTensors& update, const flotilla_update_info& info) const {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    if (update.empty()) throw Rejected("update has no tensors");
    std::size_t r = 0;
    for (std::size_t i = 0; i < update.size(); ++i) {
      const auto& u = update[i];
      while (r < reference_.size() && reference_[r].name != u.name) ++r;
      if (r == reference_.size()) {
        throw Rejected("tensor " + std::to_string(i) + " '" + u.name +
                       "' is not in the global model (or out of order)");
      }
      const auto& ref = reference_[r].tensor;
      if (!ref.sizes().equals(u.tensor.sizes()) || ref.scalar_type() != u.tensor.scalar_type()) {
        throw Rejected("tensor '" + u.name + "': expected " + describe(ref) + ", got " +
                       describe(u.tensor));
      }
      ++r;
    }
    if (!indices_.empty()) {
      bool same = indices_.size() == update.size();
      for (std::size_t i = 0; same && i < update.size(); ++i) {
        same = reference_[indices_[i]].name == update[i].name;
      }
      if (!same) throw Rejected("update carries other tensors than this version's first update");
    }
  }

  /// Records the subset `update` (already checked) carries, if this version has none yet.
  void fix(const NamedTensors& update) {
    if (!indices_.empty()) return;
    std::size_t r = 0;
    for (const auto& u : update) {
      while (reference_[r].name != u.name) ++r;
      indices_.push_back(r++);
    }
  }

  /// This version's subset: positions in the global model, in order (empty before fix()).
  [[nodiscard]] const std::vector<std::size_t>& indices() const { return indices_; }
  [[nodiscard]] const std::string& name(std::size_t global_index) const {
    return reference_[global_index].name;
  }
  /// The global model's tensors as meta tensors (names, shapes, dtypes).
  [[nodiscard]] const NamedTensors& reference() const { return reference_; }
  void reset() { indices_.clear(); }

 private:
  NamedTensors reference_;
  std::vector<std::size_t> indices_;
};

/// `v` as a short decimal ("0.5", "1e-06").
inline std::string number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

/// Option `key` as a number in [lo, hi) (or [lo, hi] with `hi_inclusive`), else Invalid naming
/// the option and the range.
inline double real_in(const sdk::Options& options, const std::string& key, double fallback,
                      double lo, double hi, bool hi_inclusive = false) {
  return sdk::bounded(options, key, fallback, lo, hi, false, !hi_inclusive,
                      "in [" + number(lo) + ", " + number(hi) + (hi_inclusive ? "]" : ")"));
}

/// Option `key` as a finite number > 0, else Invalid naming the option.
inline double positive(const sdk::Options& options, const std::string& key, double fallback) {
  return sdk::bounded(options, key, fallback, 0, INFINITY, true, true, "a finite number > 0");
}

/// Option `key` as an integer >= lo, else Invalid naming the option.
inline std::int64_t integer_at_least(const sdk::Options& options, const std::string& key,
                                     std::int64_t fallback, std::int64_t lo) {
  const auto v = options.integer(key, fallback);
  if (v < lo) {
    throw Invalid("option '" + key + "' is " + std::to_string(v) + ", must be >= " + std::to_string(lo));
  }
  return v;
}

/// A contiguous copy of `t` with `options` (device, dtype), owning its memory: tensors arrive
/// as borrowed views that die with the call, so anything kept across calls must be copied,
/// even on the CPU (where .to() would return the view itself).
inline at::Tensor owned_copy(const at::Tensor& t, const at::TensorOptions& options) {
  return at::empty(t.sizes(), options).copy_(t);
}

/// Calls `fn` when it goes out of scope: finalize resets for the next version even when it
/// fails part-way (the host counts the version's updates as gone either way).
template <class Fn>
struct AtExit {
  Fn fn;
  ~AtExit() { fn(); }
};
template <class Fn>
AtExit(Fn) -> AtExit<Fn>;

}  // namespace flotilla::aggregators

#pragma once
/// Update validation (aggregator.update-validation): what a client sends is checked before any
/// method sees it. Non-finite values are refused; an update whose change to the model is far
/// larger than usual (its norm against a running median of accepted updates' norms) is refused
/// or clipped. Plain and testable: the schedules call it, their events count what it decides.
#include "runtime/base/tensor.hpp"

#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace flotilla {

struct ValidationOptions {
  /// Refuse updates with a NaN or an infinity in a floating-point tensor.
  bool finite = true;
  enum class Norm { off, reject, clip };
  /// What to do with an update whose change is more than norm_factor × the running median.
  Norm norm = Norm::off;
  double norm_factor = 5.0;
  /// Accepted updates' norms the median is taken over (the latest ones).
  std::size_t norm_window = 50;
  /// Accepted updates needed before anything is called an outlier.
  std::size_t norm_min_samples = 5;
};

[[nodiscard]] const char* to_string(ValidationOptions::Norm norm) noexcept;

class UpdateValidator {
 public:
  explicit UpdateValidator(ValidationOptions options = {}) : options_(options) {}

  struct Verdict {
    bool ok = true;
    bool outlier = false;   ///< refused (ok false) or clipped (scale < 1) for its norm
    std::string why;        ///< why it is refused or clipped
    double norm = 0;        ///< of its change to the model (0 when norms are off)
    double scale = 1;       ///< < 1: clip the change by this factor
  };

  /// Inspects `update` (weights) against `model` (what it changes): tensors are matched by
  /// name; only floating-point tensors with a match of the same shape count toward the norm.
  /// Costs one pass over the update (finite check), two with norms on.
  [[nodiscard]] Verdict inspect(const TensorList& update, const TensorList& model) const;

  /// An update was accepted with this norm (after clipping: the clipped norm).
  void accepted(double norm);

  /// `update` with its change to `model` scaled by `scale`: model + scale × (update − model).
  [[nodiscard]] static TensorList clip(const TensorList& update, const TensorList& model, double scale);

  [[nodiscard]] const ValidationOptions& options() const { return options_; }
  /// The median of the accepted norms in the window (nothing before norm_min_samples).
  [[nodiscard]] std::optional<double> median() const;
  /// The accepted norms the median is taken over, oldest first (for checkpoints).
  [[nodiscard]] std::vector<double> norms() const { return {norms_.begin(), norms_.end()}; }
  /// Continues with `norms` (from norms()) as the accepted ones.
  void restore(const std::vector<double>& norms);

 private:
  ValidationOptions options_;
  std::deque<double> norms_;
};

}  // namespace flotilla

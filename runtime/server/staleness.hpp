#pragma once
/// Staleness functions s(τ) of FedAsync (Xie et al., 2019): how much an update based on a
/// model τ versions old still counts. FedAsync mixes w ← (1−α·s(τ))·w + α·s(τ)·w_client;
/// FedBuff may weight the deltas of a buffer by s(τ) too.
#include "runtime/base/error.hpp"

#include <cstdint>
#include <string>

namespace flotilla {

struct Staleness {
  enum class Kind { constant, polynomial, hinge };
  Kind kind = Kind::polynomial;
  /// polynomial: s = (1+τ)^−a. hinge: s = 1 if τ ≤ b else 1/(a·(τ−b)+1).
  /// Defaults are the FedAsync paper's experiments: polynomial a = 0.5; hinge a = 10, b = 4.
  double a = 0.5;
  double b = 4;

  /// s(τ), in (0, 1].
  [[nodiscard]] double operator()(std::uint64_t tau) const;
  /// "polynomial(a=0.5)", for logs and reports.
  [[nodiscard]] std::string describe() const;
  /// Errc::invalid_config naming `where` and the bad parameter (a must be ≥ 0; hinge b ≥ 0).
  [[nodiscard]] Expected<void> validate(const std::string& where) const;
};

/// "constant", "polynomial", "hinge"; nothing for another name.
[[nodiscard]] Expected<Staleness::Kind> staleness_kind(const std::string& name);

}  // namespace flotilla

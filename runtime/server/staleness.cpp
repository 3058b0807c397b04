#include "runtime/server/staleness.hpp"

#include <cmath>
#include <fmt/format.h>

namespace flotilla {

double Staleness::operator()(std::uint64_t tau) const {
  const double t = static_cast<double>(tau);
  switch (kind) {
    case Kind::constant: return 1.0;
    case Kind::polynomial: return std::pow(1.0 + t, -a);
    case Kind::hinge: return t <= b ? 1.0 : 1.0 / (a * (t - b) + 1.0);
  }
  return 1.0;
}

std::string Staleness::describe() const {
  switch (kind) {
    case Kind::constant: return "constant";
    case Kind::polynomial: return fmt::format("polynomial(a={})", a);
    case Kind::hinge: return fmt::format("hinge(a={}, b={})", a, b);
  }
  return "?";
}

Expected<void> Staleness::validate(const std::string& where) const {
  if (!(a >= 0) || !std::isfinite(a)) {
    return Error{Errc::invalid_config, fmt::format("{}.a: must be a number >= 0, got {}", where, a)};
  }
  if (kind == Kind::hinge && (!(b >= 0) || !std::isfinite(b))) {
    return Error{Errc::invalid_config, fmt::format("{}.b: must be a number >= 0, got {}", where, b)};
  }
  return {};
}

Expected<Staleness::Kind> staleness_kind(const std::string& name) {
  if (name == "constant") return Staleness::Kind::constant;
  if (name == "polynomial") return Staleness::Kind::polynomial;
  if (name == "hinge") return Staleness::Kind::hinge;
  return Error{Errc::invalid_config,
               "'" + name + "' is not a staleness function (constant, polynomial, hinge)"};
}

}  // namespace flotilla

#pragma once
/// Warnings that others can repeat without bound, said at most so often (header-only, no
/// logging library: for headers that hold one).
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace flotilla {

/// A warning that others can make repeat without bound (each garbage message of a hostile peer,
/// each refused handshake), said at most once per `interval`. admit() says whether to say this
/// one, and what to add to it: "" when none was held back, else " (and N more since the last
/// one said)"; nullopt holds it back. Not thread-safe: one per thread, or under a lock.
class LogThrottle {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  explicit LogThrottle(std::chrono::steady_clock::duration interval = std::chrono::seconds(5))
      : interval_(interval) {}
  [[nodiscard]] std::optional<std::string> admit(time_point now) {
    if (last_said_ && now - *last_said_ < interval_) {
      ++held_back_;
      return std::nullopt;
    }
    std::string more;
    if (held_back_ > 0) more = " (and " + std::to_string(held_back_) + " more since the last one said)";
    held_back_ = 0;
    last_said_ = now;
    return more;
  }

 private:
  std::chrono::steady_clock::duration interval_;
  std::optional<time_point> last_said_;
  std::uint64_t held_back_ = 0;
};

}  // namespace flotilla

#pragma once
/// Time as an injected dependency, so round logic can be driven by tests (and later by a
/// virtual clock simulating thousands of clients) without sleeping.
#include <chrono>

namespace flotilla {

/// Durations in config and schedules: milliseconds.
using Duration = std::chrono::milliseconds;

class Clock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  [[nodiscard]] virtual time_point now() const = 0;
};

class SteadyClock final : public Clock {
 public:
  [[nodiscard]] time_point now() const override { return std::chrono::steady_clock::now(); }
};

/// Wall seconds since `start` (measuring compute, which a virtual clock does not see).
[[nodiscard]] inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// A clock that moves only when told to.
class ManualClock final : public Clock {
 public:
  [[nodiscard]] time_point now() const override { return now_; }
  void advance(std::chrono::steady_clock::duration d) { now_ += d; }

 private:
  time_point now_{};
};

}  // namespace flotilla

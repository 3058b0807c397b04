#pragma once
/// What a test's own endpoint (a scripted aggregator or peer) received, waited for with a
/// timeout, no sleeps.
#include "runtime/net/transport.hpp"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

namespace flotilla::testing {

class Inbox {
 public:
  Endpoint::Handler handler() {
    return [this](Inbound in) {
      std::lock_guard lock(mutex_);
      if (in.message) queue_.push_back(std::move(in.message).value());
      cv_.notify_all();
    };
  }
  /// The next message whose payload is a T (others before it are skipped); nothing on timeout.
  template <class T>
  std::optional<T> next(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    std::unique_lock lock(mutex_);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      while (!queue_.empty()) {
        Message m = std::move(queue_.front());
        queue_.pop_front();
        if (auto* p = std::get_if<T>(&m.payload)) return *p;
      }
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) return std::nullopt;
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Message> queue_;
};

}  // namespace flotilla::testing

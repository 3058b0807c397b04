#pragma once
/// Helpers for the schedule tests: what a schedule sent, by payload kind.
#include "runtime/server/schedule.hpp"

#include <string>
#include <utility>
#include <vector>

namespace flotilla::testing {

/// The payloads of kind T among `out`, with the peer each goes to.
template <class T>
std::vector<std::pair<std::string, T>> sent(const std::vector<Send>& out) {
  std::vector<std::pair<std::string, T>> r;
  for (const auto& s : out) {
    if (auto* p = std::get_if<T>(&s.payload)) r.emplace_back(s.peer, *p);
  }
  return r;
}

}  // namespace flotilla::testing

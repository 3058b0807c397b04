#include "runtime/base/process.hpp"

#include <malloc.h>
#include <sys/resource.h>

namespace flotilla {

std::uint64_t heap_bytes_in_use() {
  const auto info = ::mallinfo2();
  return static_cast<std::uint64_t>(info.uordblks) + static_cast<std::uint64_t>(info.hblkhd);
}

std::uint64_t peak_resident_bytes() {
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024U;  // kilobytes on Linux
}

}  // namespace flotilla

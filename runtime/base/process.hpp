#pragma once
/// What this process uses (glibc's heap statistics, the kernel's getrusage): for reports such
/// as a simulator's bytes per client. Metrics for operators are monitoring/'s.
#include <cstdint>

namespace flotilla {

/// Bytes the C heap holds for live allocations now (glibc's mallinfo2, every arena): unlike
/// the resident set, it does not hide new data in memory freed earlier and not yet returned.
[[nodiscard]] std::uint64_t heap_bytes_in_use();

/// The largest resident set size this process has had, in bytes.
[[nodiscard]] std::uint64_t peak_resident_bytes();

}  // namespace flotilla

#pragma once
/// What this process uses, read from the kernel (Linux /proc and getrusage): for reports such
/// as a simulator's bytes per client. Metrics for operators are monitoring/'s.
#include <cstdint>

namespace flotilla {

/// Resident set size now, in bytes (0 where /proc/self/statm cannot be read).
[[nodiscard]] std::uint64_t resident_bytes();

/// Bytes the C heap holds for live allocations now (glibc's mallinfo2, every arena): unlike
/// the resident set, it does not hide new data in memory freed earlier and not yet returned.
[[nodiscard]] std::uint64_t heap_bytes_in_use();

/// The largest resident set size this process has had, in bytes.
[[nodiscard]] std::uint64_t peak_resident_bytes();

/// CPU time (user + system) this process has used, in seconds.
[[nodiscard]] double cpu_seconds();

}  // namespace flotilla

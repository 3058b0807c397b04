// Coverage for libFuzzer from GCC's instrumentation (fuzz builds only: FLOTILLA_FUZZ).
//
// LibTorch's headers do not compile with clang 14 in C++20 against libstdc++ 12 (nor with
// Debian 12's clang 16), so the targets cannot be built with clang's -fsanitize=fuzzer. They are
// built with GCC instead: -fsanitize-coverage=trace-pc calls __sanitizer_cov_trace_pc at every
// basic block, and -fsanitize-coverage=trace-cmp calls the __sanitizer_cov_trace_cmp* hooks,
// which libFuzzer implements itself (its comparison tables). libFuzzer no longer takes trace-pc
// as coverage (its own __sanitizer_cov_trace_pc exits; CMake weakens that symbol in a copy of
// the archive), so this one counts each block's return address, hashed, into libFuzzer's
// "extra counters" section, which libFuzzer reads as coverage features alongside its own.
#include <cstdint>

extern "C" {

extern const char __executable_start;  // the linker's symbol for the start of the executable

__attribute__((section("__libfuzzer_extra_counters"), used))
std::uint8_t flotilla_fuzz_counters[1 << 16];

__attribute__((no_sanitize_coverage, no_sanitize_address, no_sanitize_undefined))
void __sanitizer_cov_trace_pc() {
  // Relative to the executable's start, so a block has the same counter in every process
  // (address-space randomisation moves the absolute address; -merge restarts processes).
  auto pc = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0)) -
            reinterpret_cast<std::uintptr_t>(&__executable_start);
  pc *= 0x9E3779B97F4A7C15ULL;  // Fibonacci hashing: the top 16 bits pick the counter
  std::uint8_t& counter = flotilla_fuzz_counters[pc >> 48];
  if (counter != 0xff) ++counter;
}

// GCC also traces floating-point comparisons, which libFuzzer has no table for.
__attribute__((no_sanitize_coverage)) void __sanitizer_cov_trace_cmpf(float, float) {}
__attribute__((no_sanitize_coverage)) void __sanitizer_cov_trace_cmpd(double, double) {}

}

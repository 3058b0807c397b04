#pragma once
/// Hand-overs between threads that ThreadSanitizer cannot see, because they happen inside
/// libraries Debian does not build with it (libzmq's lock-free pipes, CAF 0.17's mailboxes and
/// scheduler): marked where Flotilla hands an object over (a release) and where it takes it
/// (an acquire), so that what `scripts/test.sh --tsan` reports is Flotilla's own. Empty
/// outside ThreadSanitizer builds.
#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace flotilla {

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
inline void tsan_handed_over(const void* p) noexcept { __tsan_release(const_cast<void*>(p)); }
inline void tsan_taken_over(const void* p) noexcept { __tsan_acquire(const_cast<void*>(p)); }
#else
inline constexpr bool kThreadSanitizer = false;
inline void tsan_handed_over(const void* /*p*/) noexcept {}
inline void tsan_taken_over(const void* /*p*/) noexcept {}
#endif

}  // namespace flotilla

#!/usr/bin/env bash
# Installs what is missing, builds, and runs the tests.
#   scripts/test.sh          fast tests (unit + end-to-end), under 20 minutes on 2 cores
#   scripts/test.sh --all    also the tests labelled `slow` (huge tensors, long runs), then
#                            each fuzz target for 60 s (scripts/fuzz.sh, build-fuzz/)
#   scripts/test.sh --asan   the fast tests built with AddressSanitizer and UndefinedBehaviorSanitizer
#                            (in build-asan/; any report fails the test that made it)
#   scripts/test.sh --tsan   the transport and actor tests built with ThreadSanitizer (build-tsan/)
set -euo pipefail
cd "$(dirname "$0")/.."
ALL=0
SANITIZER=""
for arg in "$@"; do
  case "$arg" in
    --all) ALL=1 ;;
    --asan) SANITIZER=address,undefined ;;
    --tsan) SANITIZER=thread ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$arg' (use --all, --asan, --tsan or nothing)" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh
if [ -n "$SANITIZER" ]; then
  DIR=build-asan
  [ "$SANITIZER" = thread ] && DIR=build-tsan
  export FLOTILLA_BUILD_DIR=${FLOTILLA_BUILD_DIR:-$DIR}
  export FLOTILLA_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLOTILLA_SANITIZE=$SANITIZER -DFLOTILLA_BUILD_BENCH=OFF"
  # Leaks are LeakSanitizer's: libraries' process-lifetime caches (LibTorch's, CAF's) are
  # listed in tests/sanitizers/lsan.supp, nothing of Flotilla's.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:suppressions=$PWD/tests/sanitizers/tsan.supp}
  bash scripts/build.sh
  if [ "$SANITIZER" = thread ]; then
    ctest --test-dir "$FLOTILLA_BUILD_DIR" --output-on-failure -j2 -LE slow -R 'Transport|Bridge|Actor|Client|Aggregator|Evaluator|PeerLink'
  else
    ctest --test-dir "$FLOTILLA_BUILD_DIR" --output-on-failure -j2 -LE slow --timeout 900
  fi
  exit 0
fi
bash scripts/build.sh
BUILD_DIR=${FLOTILLA_BUILD_DIR:-build}
if [ "$ALL" -eq 1 ]; then
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j2
  bash scripts/fuzz.sh --time "${FLOTILLA_FUZZ_SECONDS:-60}"
else
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 -LE slow
fi

#!/usr/bin/env bash
# Fuzzes the decoders of untrusted bytes with libFuzzer (docs/fuzzing.md).
#   scripts/fuzz.sh [--time SECONDS] [--merge] [TARGET...]
# Builds build-fuzz/ (AddressSanitizer + UndefinedBehaviorSanitizer, coverage from GCC) and runs
# each target (default: all of envelope tensor config safetensors sentencepiece) for SECONDS
# (default 60), starting from the kept corpus tests/fuzz/corpus/TARGET; what it finds goes to
# build-fuzz/corpus/TARGET. --merge then adds the inputs that reach new code to the kept corpus.
# A crash, a leak, an allocation over 512 MiB or a broken property fails the script, the input
# kept in build-fuzz/crashes/TARGET/ with the line that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
TIME=60
MERGE=0
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=${2:?--time needs a number of seconds}; shift ;;
    --merge) MERGE=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    envelope|tensor|config|safetensors|sentencepiece) TARGETS+=("$1") ;;
    *) echo "fuzz.sh: unknown argument '$1' (targets: envelope tensor config safetensors sentencepiece)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(envelope tensor config safetensors sentencepiece)
case "$TIME" in ''|*[!0-9]*|0) echo "fuzz.sh: --time wants a whole number of seconds above 0, got '$TIME'" >&2; exit 2 ;; esac

# libFuzzer comes with clang's runtime (libclang-rt-14-dev); the first run builds build-fuzz/
# (an ASan + UBSan tree of the libraries the targets link: about 15 minutes on 2 cores).
bash scripts/install-deps.sh

export FLOTILLA_BUILD_DIR=${FLOTILLA_FUZZ_BUILD_DIR:-build-fuzz}
export FLOTILLA_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLOTILLA_SANITIZE=address,undefined -DFLOTILLA_FUZZ=ON -DFLOTILLA_BUILD_BENCH=OFF"
bash scripts/build.sh "${TARGETS[@]/#/fuzz_}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
BIN=$FLOTILLA_BUILD_DIR/bin
failed=()
for t in "${TARGETS[@]}"; do
  kept=tests/fuzz/corpus/$t
  found=$FLOTILLA_BUILD_DIR/corpus/$t
  crashes=$FLOTILLA_BUILD_DIR/crashes/$t
  mkdir -p "$found" "$crashes"
  echo "== fuzz_$t: ${TIME}s from $(find "$kept" -type f | wc -l) kept inputs"
  if "$BIN/fuzz_$t" "$found" "$kept" -max_total_time="$TIME" -timeout=10 -rss_limit_mb=4096 \
       -malloc_limit_mb=512 -max_len=65536 -print_final_stats=1 -artifact_prefix="$crashes/" \
       >"$crashes/../$t.log" 2>&1; then
    { grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$crashes/../$t.log" || true; } | tr '\n' ' '
    echo
  else
    failed+=("$t")
    tail -40 "$crashes/../$t.log"
    echo "fuzz_$t FAILED; the input is in $crashes/. Replay it with:"
    echo "  ASAN_OPTIONS=$ASAN_OPTIONS LSAN_OPTIONS=$LSAN_OPTIONS $BIN/fuzz_$t $crashes/<file>"
    echo "fix the cause, then keep the input as a regression test:"
    echo "  cp $crashes/<file> $kept/regression-<what-it-found>"
  fi
  if [ "$MERGE" -eq 1 ]; then
    if "$BIN/fuzz_$t" -merge=1 "$kept" "$found" >"$crashes/../$t.merge.log" 2>&1; then
      echo "   kept corpus now $(find "$kept" -type f | wc -l) inputs"
    else
      failed+=("$t (merge: see $crashes/../$t.merge.log)")
    fi
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]} (logs in $FLOTILLA_BUILD_DIR/crashes/)" >&2
  exit 1
fi
echo "fuzzing found nothing in ${TARGETS[*]} (${TIME}s each)"

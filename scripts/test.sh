#!/usr/bin/env bash
# Installs what is missing, builds, and runs the tests.
#   scripts/test.sh          fast tests (unit + end-to-end), under 20 minutes on 2 cores
#   scripts/test.sh --all    also the tests labelled `slow` (huge tensors, long runs)
set -euo pipefail
cd "$(dirname "$0")/.."
ALL=0
for arg in "$@"; do
  case "$arg" in
    --all) ALL=1 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$arg' (use --all or nothing)" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh
bash scripts/build.sh
BUILD_DIR=${FLOTILLA_BUILD_DIR:-build}
if [ "$ALL" -eq 1 ]; then
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j2
else
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 -LE slow
fi

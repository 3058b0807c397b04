#!/usr/bin/env bash
# Configures and builds Flotilla in build/ (Release, ccache when present, two jobs: more
# than two LibTorch compiles at once do not fit this class of machine).
#   scripts/build.sh [TARGET...]      default: everything
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FLOTILLA_BUILD_DIR:-build}
JOBS=${FLOTILLA_JOBS:-2}
# ccache must be told that precompiled headers are fine to cache.
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}

if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  # FLOTILLA_CMAKE_ARGS: more settings for a new build directory (scripts/test.sh --asan).
  # shellcheck disable=SC2086
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${FLOTILLA_CMAKE_ARGS:-}
fi
if [ $# -eq 0 ]; then
  cmake --build "$BUILD_DIR" -j"$JOBS"
else
  for t in "$@"; do cmake --build "$BUILD_DIR" -j"$JOBS" --target "$t"; done
fi

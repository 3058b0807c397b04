#!/usr/bin/env bash
# The quick start: installs what is missing, builds `flotilla`, and runs a federation of
# 8 clients, an aggregator and an evaluator on Fashion-MNIST (examples/quickstart.toml).
#   scripts/quickstart.sh [extra flotilla run options, e.g. --output out/quickstart]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh flotilla
exec "${FLOTILLA_BUILD_DIR:-build}/bin/flotilla" run examples/quickstart.toml "$@"

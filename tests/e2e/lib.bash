# Helpers for the end-to-end tests (sourced, not run: it has no test of its own).
set -euo pipefail
FLOTILLA=${1:?usage: $0 PATH/TO/flotilla}
WORK=$(mktemp -d /tmp/flotilla-e2e.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# A free TCP port on 127.0.0.1 (bind to port 0, read what the kernel gave).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

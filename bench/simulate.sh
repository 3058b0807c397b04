#!/usr/bin/env bash
# The fleet simulator at scale (docs/simulation.md), figures from this one run:
#  1. examples/scale_10k.toml: 10,000 clients of the quick-start CNN, FedBuff, 100 training at
#     once: peak resident memory, bytes per idle client, events/s, and the overhead (wall time
#     x workers / the local-training compute performed; goal <= 1.1).
#  2. the same fleet grown to 1,000,000 registered clients (32-example shares drawn with
#     replacement, 20 versions): bytes per idle client (goal <= 1 KiB) and events/s.
#  3. sync vs async vs buffered at 1,000 simulated clients (examples/stragglers_1000.toml), and
#     the 16-client wall-clock comparison (examples/async_stragglers.toml) simulated, next to
#     its real run with --real (about 6 minutes more).
#   bench/simulate.sh FLOTILLA [scale|million|compare ...] [--real]     default: all three
set -euo pipefail
FLOTILLA=${1:?usage: $0 FLOTILLA [scale|million|compare ...] [--real]}
shift
REAL=0
WHICH=()
for a in "$@"; do
  case "$a" in
    --real) REAL=1 ;;
    *) WHICH+=("$a") ;;
  esac
done
[ ${#WHICH[@]} -eq 0 ] && WHICH=(scale million compare)
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/flotilla-sim-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Prints the simulator's own lines and the figures the issue asks for, from its summary.
summary() {  # summary LOG
  grep -E "^(done|simulated|compute:|devices:|memory:|final)" "$1"
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def num(pattern):
    m = re.search(pattern, text, re.M)
    return m.group(1) if m else "?"
fig = {
    "overhead": num(r"overhead ([\d.]+)"),
    "overhead_with_evaluation": num(r"([\d.]+) counting evaluation"),
    "events_per_s": num(r"events \(([\d.]+)/s\)"),
    "bytes_per_idle_client": num(r"memory: (.+?) per idle client"),
    "peak_rss": num(r"peak resident (.+)"),
    "virtual_s": num(r"^simulated ([\d.]+) s"),
    "wall_s": num(r"in ([\d.]+) s of wall time"),
}
print("figures: " + " ".join(f"{k}={v}" for k, v in fig.items()))
PY
}

for w in "${WHICH[@]}"; do
case "$w" in
scale)
  echo "== simulate: examples/scale_10k.toml (10,000 clients, FedBuff, 100 concurrent, 2 workers)"
  "$FLOTILLA" --log-level warn run examples/scale_10k.toml --output "$WORK/scale" > "$WORK/scale.log" 2>&1 \
    || { tail -20 "$WORK/scale.log"; exit 1; }
  summary "$WORK/scale.log"
  ;;
million)
  echo "== simulate: 1,000,000 registered clients (32-example shares, 20 versions, 100 concurrent)"
  sed -e 's/^clients = 10000/clients = 1000000/' -e 's/^examples-per-client = 64/examples-per-client = 32/' \
      -e 's/^versions = 200/versions = 20/' -e 's/^evaluate-every-time = .*/evaluate-every = 10/' \
      examples/scale_10k.toml > "$WORK/million.toml"
  "$FLOTILLA" --log-level warn run "$WORK/million.toml" > "$WORK/million.log" 2>&1 \
    || { tail -20 "$WORK/million.log"; exit 1; }
  summary "$WORK/million.log"
  ;;
compare)
  echo "== simulate: sync vs async vs buffered at 1,000 clients (virtual seconds to 65%)"
  bash scripts/compare-schedules.sh --target 0.65 --out "$WORK/c1000" examples/stragglers_1000.toml \
    | sed -n '/^schedule /,$p'
  echo "== simulate: the 16-device comparison (examples/async_stragglers.toml) on a virtual clock (to 80%)"
  bash scripts/compare-schedules.sh --simulate --out "$WORK/c16sim" | sed -n '/^schedule /,$p'
  if [ "$REAL" = 1 ]; then
    echo "== the same 16 devices for real (wall-clock seconds to 80%)"
    bash scripts/compare-schedules.sh --out "$WORK/c16real" | sed -n '/^schedule /,$p'
  fi
  ;;
*) echo "bench/simulate.sh: unknown case '$w' (scale, million, compare)" >&2; exit 2 ;;
esac
done

#!/usr/bin/env bash
# Runs examples/async_stragglers.toml (16 emulated devices, lognormal task times with sigma 1,
# 10% dropouts) once per schedule, same fleet, data and seed, and prints for each the time to
# the target accuracy and the final accuracy; writes a PNG of accuracy against time.
# --simulate runs the same config on a virtual clock (run.mode = "simulate"); a config that
# already says so (e.g. examples/stragglers_1000.toml) is simulated anyway. Times are then
# virtual seconds.
#   scripts/compare-schedules.sh [--target 0.8] [--out DIR] [--simulate] [CONFIG]
#   default: --target 0.8, --out compare-schedules/, CONFIG examples/async_stragglers.toml
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=0.8
OUT=compare-schedules
CONFIG=examples/async_stragglers.toml
SIMULATE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --simulate) SIMULATE=1; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    -*) echo "compare-schedules.sh: unknown option '$1'" >&2; exit 2 ;;
    *) CONFIG=$1; shift ;;
  esac
done
bash scripts/install-deps.sh
bash scripts/build.sh flotilla flotilla_plugins
FLOTILLA="${FLOTILLA_BUILD_DIR:-build}/bin/flotilla"
mkdir -p "$OUT"
for s in sync async buffered; do
  echo "== $s"
  sed "s/^schedule = \".*\"/schedule = \"$s\"/" "$CONFIG" > "$OUT/$s.toml"
  grep -q "^schedule = \"$s\"" "$OUT/$s.toml" || { echo "no 'schedule = ' line in $CONFIG" >&2; exit 2; }
  if [ "$SIMULATE" = 1 ] && ! grep -q '^mode = "simulate"' "$OUT/$s.toml"; then
    sed -i '/^mode = /d; /^\[run\]/a mode = "simulate"' "$OUT/$s.toml"
  fi
  "$FLOTILLA" --log-level warn run "$OUT/$s.toml" --output "$OUT/$s" 2>"$OUT/$s.log" | grep -E "^(done|schedule|updates dropped|final|simulated|compute:)" || {
    echo "the $s run failed; see $OUT/$s.log" >&2; exit 1; }
done
python3 - "$OUT" "$TARGET" <<'PY'
import csv, os, sys
out, target = sys.argv[1], float(sys.argv[2])
print(f"\n{'schedule':9s} {'time to ' + format(target, '.0%'):>12s} {'final acc':>10s} {'best acc':>9s} {'versions':>9s} {'updates':>8s} {'run time':>9s}")
rows = {}
for s in ("sync", "async", "buffered"):
    r = list(csv.DictReader(open(os.path.join(out, s, "rounds.csv"))))
    ev = [(float(x["version_seconds"]), float(x["eval_accuracy"])) for x in r if x["eval_accuracy"]]
    with open(os.path.join(out, s + ".dat"), "w") as f:
        for t, a in ev: f.write(f"{t:.3f} {100*a:.3f}\n")
    hit = next((t for t, a in ev if a >= target), None)
    updates = sum(int(x["updates"]) for x in r)
    versions = max(int(x["model_version"]) for x in r)
    end = max(float(x["elapsed_seconds"]) for x in r)
    rows[s] = hit
    print(f"{s:9s} {('%.1f s' % hit) if hit is not None else 'not reached':>12s} {100*ev[-1][1]:9.2f}% {100*max(a for _, a in ev):8.2f}% {versions:9d} {updates:8d} {end:8.1f}s")
if rows.get("sync"):
    for s in ("async", "buffered"):
        if rows.get(s): print(f"{s}: {rows['sync']/rows[s]:.2f}x faster to {target:.0%} than sync")
PY
CLIENTS=$(sed -n 's/^clients = \([0-9]*\).*/\1/p' "$OUT/sync.toml" | head -1)
CLOCK="seconds since the first task"
grep -q '^mode = "simulate"' "$OUT/sync.toml" && CLOCK="virtual seconds since the first task (simulated)"
if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal png size 900,540
set output "$OUT/accuracy.png"
set title "Test accuracy against time: $CLIENTS devices ($(basename "$CONFIG"))" noenhanced
set xlabel "$CLOCK"
set ylabel "test accuracy (%)"
set key bottom right
set grid
plot "$OUT/sync.dat" with linespoints title "sync (FedAvg)", \
     "$OUT/async.dat" with linespoints title "async (FedAsync)", \
     "$OUT/buffered.dat" with linespoints title "buffered (FedBuff)", \
     $(python3 -c "print(100*$TARGET)") with lines dt 2 lc rgb "gray" title "target"
GP
  echo "plot: $OUT/accuracy.png"
fi

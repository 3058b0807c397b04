#!/usr/bin/env bash
# Flotilla's benchmarks, each printing ratios measured in this one run (the machines are
# shared and noisy: compare ratios, not absolute numbers across runs).
#   scripts/bench.sh [fold|transport|e2e|blas|plugins|schedules|async|simulate|churn|metrics|validation|checkpoint|curve|lm ...]   default: all
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=("$@"); [ ${#WHICH[@]} -eq 0 ] && WHICH=(fold transport e2e blas plugins schedules async simulate churn metrics validation checkpoint curve lm memory)
bash scripts/install-deps.sh
bash scripts/build.sh flotilla fold_bench transport_bench baseline_bench blas_bench \
  fold_plugin_bench galore_bench metrics_bench lm_bench memory_bench
B=${FLOTILLA_BUILD_DIR:-build}/bin
OUT=$(mktemp -d /tmp/flotilla-bench.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

for w in "${WHICH[@]}"; do
case "$w" in
memory)
  echo "== memory: what one client holds to train, by method (LLaMA-layout LM, 4 layers, hidden 512, vocab 32000; rank 16 on up_proj)"
  "$B/memory_bench"
  ;;
lm)
  echo "== lm: tokens/s of local training of the LLaMA-layout LM (4 layers, hidden 128, 128-token sequences), Flotilla's trainer vs a bare LibTorch loop"
  "$B/lm_bench" --repeats 3
  ;;
metrics)
  echo "== metrics: updates/s on the aggregation hot path (FedAsync, one version per update) with metrics on vs off"
  "$B/metrics_bench" --kib 204 --updates 8000 --repeats 8   # the quick start's CNN
  "$B/metrics_bench" --kib 1 --updates 50000 --repeats 8    # a tiny model: bookkeeping only
  ;;
validation)
  echo "== validation: updates/s on the aggregation hot path with update validation off, \"finite\" (default), \"clip\" (norms)"
  "$B/metrics_bench" --compare validation --kib 204 --updates 4000 --repeats 5
  ;;
checkpoint)
  echo "== checkpoint: updates/s on the aggregation hot path (FedAsync) without checkpoints, with every accepted update journaled, and journaled and flushed (fdatasync; the default); a checkpoint every 100 versions, on the build directory's disk"
  "$B/metrics_bench" --compare checkpoint --kib 204 --updates 2000 --repeats 3 --every 100 \
    --dir "${FLOTILLA_BUILD_DIR:-build}/bench-checkpoints"
  ;;
churn)
  echo "== churn: 100 client processes on loopback, SIGKILLed and restarted at random (async, 150 s)"
  bash bench/churn.sh "$B/flotilla" 100 150 async
  ;;
simulate)
  echo "== simulate: the fleet simulator at 10,000 and 1,000,000 clients; schedules at 1,000"
  bash bench/simulate.sh "$B/flotilla"
  ;;
schedules)
  echo "== schedules: time to 80% on examples/async_stragglers.toml (16 devices, lognormal sigma 1, 10% dropouts)"
  bash scripts/compare-schedules.sh --out "$OUT/schedules" | sed -n '/^schedule /,$p'
  ;;
async)
  echo "== async: aggregator throughput (FedAsync, quick-start CNN, 32 client processes on loopback) vs the fold bound"
  bash bench/async_throughput.sh "$B/flotilla" "$B/fold_bench" 32 3000
  ;;
plugins)
  echo "== plugins: the fedavg plugin's fold through the ABI vs the core's built-in fold (256 MiB, 1 thread)"
  "$B/fold_plugin_bench" --mb 256 --updates 8 --repeats 3
  echo "== plugins: galore-adamw vs adamw on a 4096x4096 weight (step time, optimizer state)"
  "$B/galore_bench" --dim 4096 --threads 2 --steps 5
  ;;
fold)
  echo "== aggregation: FedAvg fold vs memcpy (1 thread, 256 MiB model)"
  "$B/fold_bench" --mb 256 --threads 1
  ;;
curve)
  echo "== curve: one 256 MiB update over tcp, plaintext vs CurveZMQ (security.mode = \"curve\")"
  "$B/transport_bench" --transport tcp --bytes 268435456 --repeat 3 | tee "$OUT/plain.txt"
  "$B/transport_bench" --transport curve --bytes 268435456 --repeat 3 | tee "$OUT/curve.txt"
  python3 - "$OUT/plain.txt" "$OUT/curve.txt" <<'PY'
import re, sys
def best(path):
    m = re.search(r" GBps=([\d.]+)", open(path).read().splitlines()[0])
    return float(m.group(1))
plain, curve = best(sys.argv[1]), best(sys.argv[2])
print(f"curve: {curve:.2f} GB/s vs plaintext {plain:.2f} GB/s: curve_vs_plain={curve / plain:.3f}")
PY
  ;;
transport)
  echo "== transport: one 1 GiB update, client -> aggregator, vs iperf3 on loopback"
  # No iperf3 bound (it failed, with its reason on stderr) skips the ratios, not the bench.
  IPERF=$(bash bench/iperf3_loopback.sh | sed -n 's/^iperf3 GBps=//p' || true)
  echo "iperf3 GBps=${IPERF:-unavailable}"
  "$B/transport_bench" --transport all | tee "$OUT/transport.txt"
  [ -n "$IPERF" ] || { echo "transport: no iperf3 figure, no ratios"; continue; }
  python3 - "$IPERF" "$OUT/transport.txt" <<'PY'
import re, sys
iperf = float(sys.argv[1])
for line in open(sys.argv[2]):
    m = re.match(r"transport (\w+) .*first_GBps=([\d.]+) .* GBps=([\d.]+)", line)
    if not m:
        continue
    kind, first, best = m.group(1), float(m.group(2)), float(m.group(3))
    if kind == "inproc":
        print("inproc: the receiver gets a view of the sender's tensor; no bytes move, no ratio")
        continue
    print(f"ratio {kind}_vs_iperf3: steady state (best of N)={best / iperf:.2f}  "
          f"first transfer into untouched memory={first / iperf:.2f}")
PY
  ;;
e2e)
  echo "== end to end: quick start's time to 80% vs a bare single-process LibTorch loop"
  # The bare loop trains exactly what the quick start trains: same settings, read from its config.
  ARGS=$(python3 - <<'PY'
import tomllib
c = tomllib.load(open("examples/quickstart.toml", "rb"))
t, d, m, r = c["training"], c["data"], c["model"], c["run"]
print(f"--clients {d['clients']} --alpha {d['alpha']} --local-steps {t['local-steps']} "
      f"--batch-size {t['batch-size']} --lr {t['learning-rate']} --momentum {t.get('momentum', 0)} "
      f"--model {m['name']} --hidden {m['hidden']} --seed {r['seed']} --rounds {r['rounds']} "
      f"--threads {r.get('threads', 0) or 2}")
PY
)
  echo "baseline args: $ARGS"
  "$B/baseline_bench" $ARGS | tee "$OUT/baseline.txt"
  START=$(date +%s.%N)
  "$B/flotilla" --log-level warn run examples/quickstart.toml --output "$OUT/run" | tee "$OUT/run.txt"
  END=$(date +%s.%N)
  python3 - "$OUT/baseline.txt" "$OUT/run/rounds.csv" "$START" "$END" <<'PY'
import csv, re, sys
base = None
for line in open(sys.argv[1]):
    m = re.search(r"seconds_to_80=([\d.]+)", line)
    if m: base = float(m.group(1))
rows = [r for r in csv.DictReader(open(sys.argv[2])) if r["eval_accuracy"] and int(r["round"]) > 0]
base_model = None
for line in open(sys.argv[1]):
    m = re.search(r"train_seconds_to_80=([\d.]+)", line)
    if m: base_model = float(m.group(1))
hit = next((r for r in rows if float(r["eval_accuracy"]) >= 0.80), None)
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"flotilla run wall seconds (process start to exit)={wall:.1f}")
if hit is None or base is None:
    print("e2e: 80% not reached by", "flotilla" if hit is None else "the baseline")
    sys.exit(0)
t = float(hit["elapsed_seconds"])
v = float(hit["version_seconds"])
print(f"time until the 80% model exists: flotilla={v:.1f}s (round {hit['round']})  baseline={base_model:.1f}s"
      f"  ratio={v / base_model:.2f} (overhead {100 * (v / base_model - 1):+.0f}%)")
print(f"time until its evaluation is reported: flotilla={t:.1f}s  baseline={base:.1f}s"
      f"  ratio={t / base:.2f} (overhead {100 * (t / base - 1):+.0f}%)")
PY
  ;;
blas)
  echo "== BLAS: installed OpenBLAS vs Debian's reference BLAS, under LibTorch"
  REF=/usr/lib/x86_64-linux-gnu/blas
  for t in 1 2; do
    "$B/blas_bench" --threads $t > "$OUT/openblas.txt"
    LD_LIBRARY_PATH=$REF "$B/blas_bench" --threads $t > "$OUT/reference.txt"
    python3 - "$t" "$OUT/openblas.txt" "$OUT/reference.txt" <<'PY'
import sys
def read(p): return {l.split()[0]: float(l.split("=")[1]) for l in open(p) if "=" in l}
o, r = read(sys.argv[2]), read(sys.argv[3])
for k in o:
    print(f"threads={sys.argv[1]} {k}: openblas={o[k]:.1f} reference={r[k]:.1f} ratio={o[k] / r[k]:.2f}")
PY
  done
  ;;
*) echo "bench.sh: unknown benchmark '$w' (fold, transport, e2e, blas, plugins, schedules, async)" >&2; exit 2 ;;
esac
done

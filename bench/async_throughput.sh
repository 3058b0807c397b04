#!/usr/bin/env bash
# Aggregator throughput under the async schedule (FedAsync): model versions produced per second
# for the quick-start CNN, from N client processes on loopback TCP, each training one tiny step
# per task so that the aggregator (decode, check, fold, finalize, mix, encode the next task) is
# what limits the rate. Printed against the fold bound measured in the same run: the built-in
# fold's rate at this model size (fold_bench), as updates per second.
#   bench/async_throughput.sh FLOTILLA FOLD_BENCH [CLIENTS] [VERSIONS]     default 32 and 3000
set -euo pipefail
FLOTILLA=${1:?usage: $0 FLOTILLA FOLD_BENCH [CLIENTS] [VERSIONS]}
FOLD_BENCH=${2:?usage: $0 FLOTILLA FOLD_BENCH [CLIENTS] [VERSIONS]}
CLIENTS=${3:-32}
VERSIONS=${4:-3000}
WORK=$(mktemp -d /tmp/flotilla-async-bench.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/run.toml" <<TOML
[run]
name = "async-throughput"
seed = 1
versions = $VERSIONS
threads = 1
[data]
clients = $CLIENTS
[model]
name = "cnn"
hidden = 64
[training]
local-steps = 1
batch-size = 4
learning-rate = 0.01
[aggregator]
listen = "tcp://127.0.0.1:$PORT"
schedule = "async"
evaluate-every = 1000000
registration-timeout = "300s"
[client]
connect-timeout = "300s"
[evaluator]
enabled = false
TOML
"$FLOTILLA" --log-level warn aggregator "$WORK/run.toml" --output "$WORK/out" > "$WORK/agg.out" 2> "$WORK/agg.err" &
AGG=$!; PIDS+=("$AGG")
for id in $(seq 0 $((CLIENTS - 1))); do
  "$FLOTILLA" --log-level warn client "$WORK/run.toml" --id "$id" --connect "tcp://127.0.0.1:$PORT" \
    2> "$WORK/client-$id.err" &
  PIDS+=($!)
done
wait "$AGG" || { tail -5 "$WORK/agg.err"; echo "async_throughput: the aggregator failed" >&2; exit 1; }
MODEL_KB=$(python3 - "$WORK/out/rounds.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r["updates"]) > 0]
print(int(float(rows[0]["bytes_per_client"])) // 1024 + 1)
PY
)
FOLD=$("$FOLD_BENCH" --kb "$MODEL_KB" --threads 1 | sed -n 's/^fold one-at-a-time N=64 GBps=\([0-9.e+-]*\).*/\1/p')
python3 - "$WORK/out/rounds.csv" "$FOLD" "$CLIENTS" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r["updates"]) > 0]
fold_gbps, clients = float(sys.argv[2]), int(sys.argv[3])
bytes_per_update = float(rows[0]["bytes_per_client"])
# The steady state: skip the first tenth (clients still connecting and warming up).
skip = len(rows) // 10
t0, t1 = float(rows[skip]["version_seconds"]), float(rows[-1]["version_seconds"])
rate = (len(rows) - 1 - skip) / (t1 - t0)
bound = fold_gbps * 1e9 / bytes_per_update
stale = sum(float(r["staleness_mean"]) for r in rows[skip:]) / len(rows[skip:])
print(f"async throughput: {clients} client processes, update {bytes_per_update/1024:.1f} KiB: "
      f"{rate:.0f} versions/s (one update each), mean staleness {stale:.1f}")
print(f"fold bound at this size: {fold_gbps:.2f} GB/s = {bound:.0f} updates/s; ratio {rate / bound:.3f}")
PY

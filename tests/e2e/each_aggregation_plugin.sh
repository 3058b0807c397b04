#!/usr/bin/env bash
# The quick-start task (Fashion-MNIST, Dirichlet split; here 5 clients and 3 rounds) with each
# built-in aggregation plugin: every run completes and learns (accuracy well above chance and
# above the initial model's). LoRA methods run with LoRA on the MLP's hidden layers.
source "$(dirname "$0")/lib.bash"
run_with() {  # STRATEGY  MIN-ACCURACY  [LINES OF [aggregator.options] ...]
  local name=$1 min=$2; shift 2
  sed "s|tcp://127.0.0.1:PORT|inproc://each-$name|; s/rounds = 4/rounds = 3/; s/clients = 3/clients = 5/; s/min-updates = 2/min-updates = 5/" \
    "$(dirname "$0")/lib_config.toml" > "$WORK/$name.toml"
  sed -i "s|^\[aggregator\]|[aggregator]\nstrategy = \"$name\"|" "$WORK/$name.toml"
  if [ $# -gt 0 ]; then printf '[aggregator.options]\n'; printf '%s\n' "$@"; fi >> "$WORK/$name.toml"
  timeout 300 "$FLOTILLA" --log-level warn run "$WORK/$name.toml" --output "$WORK/out-$name" \
    > "$WORK/$name.out" 2> "$WORK/$name.err" || { cat "$WORK/$name.out" "$WORK/$name.err"; fail "$name: run failed"; }
  python3 - "$WORK/out-$name/rounds.csv" "$name" "$min" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
acc = {int(r["round"]): float(r["eval_accuracy"]) for r in rows if r["eval_accuracy"]}
name, least = sys.argv[2], float(sys.argv[3])
assert sorted(acc) == [0, 1, 2, 3], f"{name}: every version evaluated: {acc}"
assert all(int(r["updates"]) == 5 for r in rows if int(r["round"]) > 0), f"{name}: updates lost"
assert acc[3] >= least and acc[3] > acc[0] + 0.2, f"{name}: did not learn: {acc}"
print(f"ok: {name:14s} accuracy by round: " + " ".join(f"{acc[k]:.3f}" for k in sorted(acc)))
PY
}
run_with fedavg 0.6
run_with builtin 0.6
run_with fedavgm 0.6 "momentum = 0.5"
run_with fedadam 0.5 "server-learning-rate = 0.01"
run_with fedyogi 0.5 "server-learning-rate = 0.01"
run_with median 0.5
run_with trimmed-mean 0.5 "trim-fraction = 0.2"
run_with krum 0.4 "byzantine = 1" "multi = 2"
echo "PASS"

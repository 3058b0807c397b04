#!/usr/bin/env bash
# The quick-start task (Fashion-MNIST, Dirichlet split; here 5 clients and 3 rounds) with each
# built-in aggregation plugin: every run completes and learns (accuracy well above chance and
# above the initial model's). LoRA methods train rank-8 adapters on every linear layer of the
# MLP (FlexLoRA and FLoRA at ranks 4, 8 and 16 at once). FedSA-LoRA's global model never
# trains its B (each client keeps its own), so its clients' own models are judged instead: the
# accuracy they train at (METRIC=train).
source "$(dirname "$0")/lib.bash"
run_with() {  # STRATEGY  MIN-ACCURACY  EXTRA-TOML  [LINES OF [aggregator.options] ...]
  local strategy=$1 min=$2 extra=$3; shift 3
  local name=$strategy${OPTIMIZER:++$OPTIMIZER}
  sed "s|tcp://127.0.0.1:PORT|inproc://each-$strategy|; s/rounds = 4/rounds = 3/; s/clients = 3/clients = 5/; s/min-updates = 2/min-updates = 5/" \
    "$(dirname "$0")/lib_config.toml" > "$WORK/$name.toml"
  sed -i "s|^\[aggregator\]|[aggregator]\nstrategy = \"$strategy\"|" "$WORK/$name.toml"
  sed -i "s/^learning-rate = .*/learning-rate = ${LR:-0.05}/" "$WORK/$name.toml"
  if [ -n "${OPTIMIZER:-}" ]; then  # e.g. galore-adamw: no momentum key, its own options
    sed -i "s/^momentum = .*/optimizer = \"$OPTIMIZER\"/" "$WORK/$name.toml"
  fi
  printf '%b\n' "$extra" >> "$WORK/$name.toml"
  if [ $# -gt 0 ]; then printf '[aggregator.options]\n'; printf '%s\n' "$@"; fi >> "$WORK/$name.toml"
  timeout 300 "$FLOTILLA" --log-level warn run "$WORK/$name.toml" --output "$WORK/out-$name" \
    > "$WORK/$name.out" 2> "$WORK/$name.err" || { cat "$WORK/$name.out" "$WORK/$name.err"; fail "$name: run failed"; }
  python3 - "$WORK/out-$name/rounds.csv" "$name" "$min" "${METRIC:-eval}" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
acc = {int(r["round"]): float(r["eval_accuracy"]) for r in rows if r["eval_accuracy"]}
name, least, metric = sys.argv[2], float(sys.argv[3]), sys.argv[4]
assert sorted(acc) == [0, 1, 2, 3], f"{name}: every version evaluated: {acc}"
assert all(int(r["updates"]) == 5 for r in rows if int(r["round"]) > 0), f"{name}: updates lost"
if metric == "train":  # the clients' own models, as they train each round
    acc = {int(r["round"]): float(r["train_accuracy"]) for r in rows if int(r["round"]) > 0}
    assert acc[3] >= least and acc[3] > acc[1] + 0.05, f"{name}: clients did not learn: {acc}"
else:
    assert acc[3] >= least and acc[3] > acc[0] + 0.2, f"{name}: did not learn: {acc}"
print(f"ok: {name:14s} accuracy by round: " + " ".join(f"{acc[k]:.3f}" for k in sorted(acc)))
PY
}
run_with fedavg 0.6 ""
run_with builtin 0.6 ""
run_with fedavgm 0.6 "" "momentum = 0.5"
run_with fedadam 0.5 "" "server-learning-rate = 0.01"
run_with fedyogi 0.5 "" "server-learning-rate = 0.01"
run_with median 0.5 ""
run_with trimmed-mean 0.5 "" "trim-fraction = 0.2"
run_with krum 0.4 "" "byzantine = 1" "multi = 2"
LORA='[lora]\nrank = 8\nalpha = 16.0\ntargets = ["fc1", "fc2", "fc3"]'
# Adapters at alpha/r = 2 need a smaller step than full weights (0.05 diverges).
LR=0.02 run_with fedit 0.4 "$LORA"
LR=0.05 run_with ffa-lora 0.35 "$LORA\nfreeze-a = true"
LR=0.01 run_with flexlora 0.4 "$LORA\nranks = [4, 8, 16, 4, 8]"
LR=0.02 run_with fedex-lora 0.4 "$LORA"
LR=0.02 run_with flora 0.4 "$LORA\nranks = [4, 8, 16, 4, 8]"
METRIC=train LR=0.02 run_with fedsa-lora 0.4 "$LORA"
# The study's recommendation: full weights trained with GaLore, averaged by fedavg.
OPTIMIZER=galore-adamw LR=0.003 run_with fedavg 0.6 "[training.options]\nrank = 16\nupdate-interval = 10"
echo "PASS"

#!/usr/bin/env bash
# An aggregator, an evaluator and three clients, each its own process, over TCP on
# 127.0.0.1: the run completes, every process exits 0, and test accuracy rises over rounds.
source "$(dirname "$0")/lib.bash"
PORT=$(free_port)
sed "s/PORT/$PORT/" "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"
EP="tcp://127.0.0.1:$PORT"

"$FLOTILLA" aggregator "$WORK/run.toml" --output "$WORK/out" > "$WORK/aggregator.out" 2> "$WORK/aggregator.err" &
AGG=$!; PIDS+=("$AGG")
"$FLOTILLA" evaluator "$WORK/run.toml" --connect "$EP" 2> "$WORK/evaluator.err" &
EVAL=$!; PIDS+=("$EVAL")
CLIENTS=()
for id in 0 1 2; do
  "$FLOTILLA" client "$WORK/run.toml" --id "$id" --connect "$EP" 2> "$WORK/client-$id.err" &
  CLIENTS+=($!); PIDS+=($!)
done

status=0
wait "$AGG" || status=$?
cat "$WORK/aggregator.out"
[ "$status" -eq 0 ] || { cat "$WORK/aggregator.err"; fail "aggregator exited $status"; }
for i in 0 1 2; do
  wait "${CLIENTS[$i]}" || { cat "$WORK/client-$i.err"; fail "client $i exited non-zero"; }
done
wait "$EVAL" || { cat "$WORK/evaluator.err"; fail "evaluator exited non-zero"; }

CSV="$WORK/out/rounds.csv"
[ -f "$CSV" ] || fail "no $CSV"
python3 - "$CSV" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
acc = {int(r["round"]): float(r["eval_accuracy"]) for r in rows if r["eval_accuracy"]}
print("accuracy by round:", {k: round(v, 4) for k, v in sorted(acc.items())})
assert 0 in acc and 4 in acc, f"rounds 0 and 4 must be evaluated, got {sorted(acc)}"
assert all(int(r["updates"]) == 3 for r in rows if int(r["round"]) > 0), "every client's update counts"
assert acc[4] > acc[0] + 0.3, f"accuracy did not rise: {acc[0]:.3f} -> {acc[4]:.3f}"
assert acc[4] >= max(acc[r] for r in (1, 2)) - 0.05, f"accuracy fell back late: {acc}"
PY
grep -q "final accuracy" "$WORK/aggregator.out" || fail "no final summary"
echo "PASS"

#!/usr/bin/env bash
# `flotilla run` (the quick start's path): every role in one process, over inproc:// and
# ipc://; each run completes, prints a line per round and the summary, and learns.
source "$(dirname "$0")/lib.bash"
for listen in "inproc://flotilla-e2e" "ipc://$WORK/aggregator.sock"; do
  sed "s|tcp://127.0.0.1:PORT|$listen|; s/rounds = 4/rounds = 3/" "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"
  rm -rf "$WORK/out"
  timeout 300 "$FLOTILLA" --log-level warn run "$WORK/run.toml" --output "$WORK/out" > "$WORK/run.out" 2> "$WORK/run.err" \
    || { cat "$WORK/run.out" "$WORK/run.err"; fail "flotilla run over $listen exited non-zero"; }
  cat "$WORK/run.out"
  [ "$(grep -c '^round ' "$WORK/run.out")" -eq 4 ] || fail "$listen: expected 4 progress lines (rounds 0-3)"
  grep -q "^done: 3 rounds (0 failed), model version 3" "$WORK/run.out" || fail "$listen: no summary"
  python3 - "$WORK/out/rounds.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
acc = {int(r["round"]): float(r["eval_accuracy"]) for r in rows if r["eval_accuracy"]}
assert sorted(acc) == [0, 1, 2, 3], f"every version evaluated: {sorted(acc)}"
assert acc[3] > acc[0] + 0.3, f"accuracy did not rise: {acc}"
PY
  echo "ok: $listen"
done
echo "PASS"

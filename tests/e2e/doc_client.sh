#!/usr/bin/env bash
# A client written from docs/protocol.md alone (tests/protocol/doc_client.cpp: Cap'n Proto and
# libzmq, none of Flotilla's code) joins a real federation over TCP on 127.0.0.1 next to two
# Flotilla clients: the run completes, every process exits 0, the doc client's update counts in
# every round, and it answers every round's task without receiving a single Error.
source "$(dirname "$0")/lib.bash"
DOC_CLIENT="$(dirname "$FLOTILLA")/doc_client"
[ -x "$DOC_CLIENT" ] || fail "no doc_client next to $FLOTILLA"
PORT=$(free_port)
sed "s/PORT/$PORT/" "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"
EP="tcp://127.0.0.1:$PORT"

"$FLOTILLA" aggregator "$WORK/run.toml" --output "$WORK/out" > "$WORK/aggregator.out" 2> "$WORK/aggregator.err" &
AGG=$!; PIDS+=("$AGG")
"$FLOTILLA" evaluator "$WORK/run.toml" --connect "$EP" 2> "$WORK/evaluator.err" &
EVAL=$!; PIDS+=("$EVAL")
CLIENTS=()
for id in 0 1; do
  "$FLOTILLA" client "$WORK/run.toml" --id "$id" --connect "$EP" 2> "$WORK/client-$id.err" &
  CLIENTS+=($!); PIDS+=($!)
done
"$DOC_CLIENT" --connect "$EP" --id 2 > "$WORK/doc.out" 2> "$WORK/doc.err" &
DOC=$!; PIDS+=("$DOC")

status=0
wait "$AGG" || status=$?
cat "$WORK/aggregator.out"
[ "$status" -eq 0 ] || { cat "$WORK/aggregator.err"; fail "aggregator exited $status"; }
for i in 0 1; do
  wait "${CLIENTS[$i]}" || { cat "$WORK/client-$i.err"; fail "client $i exited non-zero"; }
done
wait "$EVAL" || { cat "$WORK/evaluator.err"; fail "evaluator exited non-zero"; }
status=0
wait "$DOC" || status=$?
cat "$WORK/doc.out"
[ "$status" -eq 0 ] || { cat "$WORK/doc.err"; fail "doc client exited $status"; }

grep -qx "doc-client: tasks 4 answered, errors 0, notRegistered 0, registrations 1" "$WORK/doc.out" \
  || { cat "$WORK/doc.err"; fail "the doc client must register once, answer all 4 rounds and get no Error"; }

CSV="$WORK/out/rounds.csv"
[ -f "$CSV" ] || fail "no $CSV"
python3 - "$CSV" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rounds = sorted(int(r["round"]) for r in rows if int(r["round"]) > 0)
assert rounds == [1, 2, 3, 4], f"rounds 1..4 must be recorded, got {rounds}"
bad = {int(r["round"]): r["updates"] for r in rows
       if int(r["round"]) > 0 and int(r["updates"]) != 3}
assert not bad, f"every round must count 3 updates (the doc client's too): {bad}"
print("updates by round:", {int(r["round"]): int(r["updates"]) for r in rows})
PY
echo "PASS"

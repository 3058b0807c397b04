#!/usr/bin/env bash
# The aggregator dies (kill -9) mid-run. The clients and the evaluator, idle between rounds,
# notice within aggregator.peer-timeout and say so; when a new aggregator (a new run) comes up
# on the same address it tells them they are not registered, they register again (with jitter)
# and the new run completes with all of them; every process exits 0. Client 2 is the client
# written from docs/protocol.md alone (tests/protocol/doc_client.cpp): it too must notice the
# silence and register with the new run.
source "$(dirname "$0")/lib.bash"
DOC_CLIENT="$(dirname "$FLOTILLA")/doc_client"
[ -x "$DOC_CLIENT" ] || fail "no doc_client next to $FLOTILLA"
PORT=$(free_port)
EP="tcp://127.0.0.1:$PORT"
sed "s/PORT/$PORT/; s/rounds = 4/rounds = 1000/" "$(dirname "$0")/lib_config.toml" > "$WORK/first.toml"
sed -i 's/^round-deadline = "60s"/round-deadline = "60s"\npeer-timeout = "2s"/' "$WORK/first.toml"
sed -i 's/^connect-timeout = "60s"/connect-timeout = "60s"\nheartbeat-interval = "500ms"/' "$WORK/first.toml"
# The second run: another name, 3 rounds.
sed 's/^name = "e2e"/name = "e2e-second"/; s/rounds = 1000/rounds = 3/' "$WORK/first.toml" > "$WORK/second.toml"
grep -q 'peer-timeout = "2s"' "$WORK/first.toml" || fail "config template changed"

"$FLOTILLA" aggregator "$WORK/first.toml" --output "$WORK/first" > "$WORK/first.out" 2> "$WORK/first.err" &
FIRST=$!; PIDS+=("$FIRST")
"$FLOTILLA" evaluator "$WORK/first.toml" --connect "$EP" 2> "$WORK/evaluator.err" &
EVAL=$!; PIDS+=("$EVAL")
CLIENTS=()
for id in 0 1; do
  "$FLOTILLA" client "$WORK/first.toml" --id "$id" --connect "$EP" 2> "$WORK/client-$id.err" &
  CLIENTS+=($!); PIDS+=($!)
done
"$DOC_CLIENT" --connect "$EP" --id 2 --peer-timeout 2 > "$WORK/client-2.out" 2> "$WORK/client-2.err" &
DOC=$!; PIDS+=("$DOC")
rows() { [ -f "$WORK/first/rounds.csv" ] && tail -n +2 "$WORK/first/rounds.csv" | wc -l || echo 0; }
for _ in $(seq 600); do [ "$(rows)" -ge 3 ] && break; sleep 0.1; done
[ "$(rows)" -ge 3 ] || { cat "$WORK/first.err"; fail "the first run did not get going"; }
kill -9 "$FIRST"
wait "$FIRST" 2>/dev/null || true
echo "killed the aggregator after $(rows) rounds"

# Idle peers notice the silence within peer-timeout (2 s) and say so.
for _ in $(seq 100); do
  n=$( (grep -l "no word from the aggregator" "$WORK"/client-*.err "$WORK/evaluator.err" 2>/dev/null || true) | wc -l)
  [ "$n" -ge 4 ] && break
  sleep 0.1
done
[ "$n" -ge 4 ] || { tail -5 "$WORK"/client-*.err "$WORK/evaluator.err"; fail "only $n of 4 peers said the aggregator went silent"; }

"$FLOTILLA" aggregator "$WORK/second.toml" --output "$WORK/second" > "$WORK/second.out" 2> "$WORK/second.err" &
SECOND=$!; PIDS+=("$SECOND")
status=0
wait "$SECOND" || status=$?
cat "$WORK/second.out"
[ "$status" -eq 0 ] || { cat "$WORK/second.err"; fail "the second aggregator exited $status"; }
for i in 0 1; do
  wait "${CLIENTS[$i]}" || { cat "$WORK/client-$i.err"; fail "client $i exited non-zero"; }
  grep -q "registered again with the aggregator (run e2e-second-3" "$WORK/client-$i.err" ||
    { cat "$WORK/client-$i.err"; fail "client $i did not register with the new run"; }
  grep -q "the aggregator at $EP answers again" "$WORK/client-$i.err" || fail "client $i: no 'answers again'"
done
status=0
wait "$DOC" || status=$?
cat "$WORK/client-2.out"
[ "$status" -eq 0 ] || { cat "$WORK/client-2.err"; fail "the doc client (client 2) exited $status"; }
grep -qE "^doc-client: tasks [0-9]+ answered, errors [0-9]+, notRegistered [1-9][0-9]*, registrations 2$" \
  "$WORK/client-2.out" ||
  { cat "$WORK/client-2.err"; fail "the doc client must be told it is not registered and register twice"; }
grep -q "registered again, welcomed to run 'e2e-second-3" "$WORK/client-2.err" ||
  { cat "$WORK/client-2.err"; fail "the doc client did not register with the new run"; }
grep -q "the aggregator at $EP answers again" "$WORK/client-2.err" || fail "doc client: no 'answers again'"
wait "$EVAL" || { cat "$WORK/evaluator.err"; fail "evaluator exited non-zero"; }
grep -q "registered again with the aggregator (run e2e-second-3" "$WORK/evaluator.err" ||
  fail "the evaluator did not register with the new run"
python3 - "$WORK/second/rounds.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
done = [r for r in rows if int(r["round"]) > 0]
assert len(done) == 3, f"the new run's rounds: {len(done)}"
assert all(int(r["updates"]) == 3 for r in done), [r["updates"] for r in done]
assert any(r["eval_accuracy"] for r in rows if int(r["round"]) == 3), "the last round is evaluated"
PY
echo "PASS"

#!/usr/bin/env bash
# Hot reload during a run: the aggregation plugin's file is replaced by a build that behaves
# observably differently (scaled-mean v1 averages, v2 doubles the average). The run switches
# to it without a restart, between rounds; no update is lost; the log records exactly one switch
# from v1 to v2 (restoring v2's file after the broken build below is itself a change the watcher
# may act on: a reload of v2 by v2, never a failure); the plugin's state (its count of versions)
# carries over. Then
# `flotilla admin status` and `flotilla admin reload` talk to the running aggregator on its admin
# endpoint (an owner-only ipc socket), and are refused on the clients' endpoint.
source "$(dirname "$0")/lib.bash"
BUILD=$(cd "$(dirname "$FLOTILLA")/.." && pwd)
PLUGINS="$WORK/plugins"
mkdir -p "$PLUGINS"
cp "$BUILD/test-plugins/scaled-mean-v1.so" "$PLUGINS/flotilla-scaled-mean.so"
PORT=$(free_port)
sed "s/PORT/$PORT/; s/rounds = 4/rounds = 80/; s/local-steps = 30/local-steps = 100/" \
  "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"
ADMIN="ipc://$WORK/admin.sock"
# v2 doubles the model every round: after a few dozen rounds the clients' training overflows to
# NaN, which update validation would (rightly) refuse; this test is about reloads, so it is off.
sed -i "s|^\[aggregator\]|[aggregator]\nstrategy = \"scaled-mean\"\nadmin-listen = \"$ADMIN\"\nupdate-validation = \"off\"|" "$WORK/run.toml"
sed -i "s|^\[run\]|[run]\nplugin-path = [\"$PLUGINS\"]|" "$WORK/run.toml"
sed -i "s|^min-updates = 2|min-updates = 3|" "$WORK/run.toml"

"$FLOTILLA" run "$WORK/run.toml" --output "$WORK/out" > "$WORK/run.out" 2> "$WORK/run.err" &
PIDS+=($!)
RUN=$!
rows() { [ -f "$WORK/out/rounds.csv" ] && tail -n +2 "$WORK/out/rounds.csv" | wc -l || echo 0; }
for _ in $(seq 600); do [ "$(rows)" -ge 2 ] && break; sleep 0.1; done
[ "$(rows)" -ge 2 ] || { cat "$WORK/run.err"; fail "the run did not get going"; }

# Any client can reach the clients' endpoint: commands sent there are refused, and say where to go.
if OUT=$("$FLOTILLA" admin reload --connect "tcp://127.0.0.1:$PORT" 2>&1); then
  fail "an admin command on the clients' endpoint was taken: $OUT"
fi
grep -q "not taken on the clients' endpoint; this aggregator takes them on $ADMIN" <<< "$OUT" ||
  fail "the refusal does not say why: $OUT"
[[ "$(stat -c %a "$WORK/admin.sock")" =~ ^[67]00$ ]] ||
  fail "the admin socket is not owner-only: $(stat -c %a "$WORK/admin.sock")"

STATUS=$("$FLOTILLA" admin status --connect "$ADMIN") || fail "admin status failed"
echo "$STATUS"
grep -q "aggregation scaled-mean 1.0.0" <<< "$STATUS" || fail "status does not name the plugin: $STATUS"

# A new build dropped in place of the running one (as `cp` or `make install` would).
cp "$BUILD/test-plugins/scaled-mean-v2.so" "$PLUGINS/flotilla-scaled-mean.so"
for _ in $(seq 100); do grep -q "plugin reloaded" "$WORK/run.err" && break; sleep 0.1; done
grep -q "plugin reloaded (file changed)" "$WORK/run.err" || { cat "$WORK/run.err"; fail "no reload logged"; }

# An explicit reload of a broken file is refused, and the running build stays.
cp "$BUILD/test-plugins/wrong-abi.so" "$PLUGINS/flotilla-scaled-mean.so.new"
mv "$PLUGINS/flotilla-scaled-mean.so" "$PLUGINS/good.so.keep"
mv "$PLUGINS/flotilla-scaled-mean.so.new" "$PLUGINS/flotilla-scaled-mean.so"
if OUT=$("$FLOTILLA" admin reload --connect "$ADMIN" 2>&1); then
  fail "admin reload of a wrong-ABI build succeeded: $OUT"
fi
echo "$OUT"
grep -q "built for plugin ABI 99.0" <<< "$OUT" || fail "admin reload did not say why: $OUT"
grep -q "still running scaled-mean 2.0.0" <<< "$OUT" || fail "admin reload did not keep v2: $OUT"
mv "$PLUGINS/good.so.keep" "$PLUGINS/flotilla-scaled-mean.so"

wait "$RUN" || { cat "$WORK/run.err"; fail "the run exited non-zero"; }
cat "$WORK/run.out"
[ "$(grep -c "plugin reloaded.*scaled-mean 1.0.0 .*-> scaled-mean 2.0.0" "$WORK/run.err")" -eq 1 ] \
  || fail "expected exactly one switch from v1 to v2 in the log"
[ "$(grep -c "plugin reloaded" "$WORK/run.err")" -le 2 ] || fail "more reloads than file changes"
# The broken build counts as a failed reload (the watcher may also have tried it: 1 or 2).
grep -Eq "aggregation plugin: [12] reload\(s\), [12] failed; now scaled-mean 2.0.0" "$WORK/run.out" \
  || fail "the summary does not count the reloads"
grep -q "^done: 80 rounds (0 failed)" "$WORK/run.out" || fail "rounds failed or missing"
# Nothing lost: every round took an update from each of the 3 clients.
python3 - "$WORK/out/rounds.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r["round"]) > 0]
assert len(rows) == 80, len(rows)
assert all(int(r["updates"]) == 3 and int(r["rejected"]) == 0 for r in rows), rows
PY
# v1 ran first, then v2, and v2 continued v1's count of versions (state carried over).
grep -q "scale 1, version 1$" "$WORK/run.err" || fail "v1 never ran"
V2=$(grep -o "scale 2, version [0-9]*" "$WORK/run.err" | head -1 | grep -o "[0-9]*$")
[ -n "$V2" ] && [ "$V2" -gt 3 ] || fail "v2 did not continue v1's state (first v2 version: '$V2')"
[ "$(grep -c "scale 1, version" "$WORK/run.err")" -eq $((V2 - 1)) ] || fail "a version was skipped or repeated"
echo "PASS"

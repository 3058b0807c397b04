#!/usr/bin/env bash
# security.mode = "curve" over real processes: keys made with `flotilla keygen`, the clients'
# public keys in the aggregator's authorized directory. Authorized clients train; a peer whose
# key is not authorized never gets in (the aggregator says so); a secret key others can read
# is refused with the reason; admin commands need a key in security.admins (an operator's
# works, a client's and a plaintext one do not).
source "$(dirname "$0")/lib.bash"
PORT=$(free_port)
K="$WORK/keys"
sed "s/PORT/$PORT/; s/^rounds = 4/rounds = 1000\nmax-time = \"15s\"/" "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"
sed -i "s|^\[aggregator\]|[aggregator]\nadmin-listen = \"ipc://$WORK/admin.sock\"|" "$WORK/run.toml"
printf '[security]\nmode = "curve"\nkey-dir = "%s"\n' "$K" >> "$WORK/run.toml"
grep -q 'max-time = "15s"' "$WORK/run.toml" || fail "config template changed"

for name in aggregator client-0 client-1 client-2 ops; do
  "$FLOTILLA" keygen "$name" --dir "$K" > /dev/null || fail "keygen $name"
done
"$FLOTILLA" keygen evaluator --dir "$WORK/stranger" > /dev/null
cp "$K/aggregator.pub" "$WORK/stranger/"
mkdir -p "$K/authorized" "$K/admins"
cp "$K"/client-*.pub "$K/authorized/"
cp "$K/ops.pub" "$K/admins/"
[ "$(stat -c %a "$K/client-0.key")" = 600 ] || fail "a secret key is not owner-only"
"$FLOTILLA" keygen client-0 --dir "$K" 2> "$WORK/again.err" && fail "keygen overwrote a key"
grep -q "not overwritten" "$WORK/again.err" || fail "keygen: no reason given"

# A secret key others can read: refused, with the fix.
mkdir -p "$WORK/loose"
cp "$K/client-0.key" "$K/aggregator.pub" "$WORK/loose/"
chmod 644 "$WORK/loose/client-0.key"
sed "s|^key-dir = .*|key-dir = \"$WORK/loose\"|" "$WORK/run.toml" > "$WORK/loose.toml"
code=0
timeout 30 "$FLOTILLA" client "$WORK/loose.toml" --id 0 --connect "tcp://127.0.0.1:$PORT" 2> "$WORK/loose.err" || code=$?
[ "$code" -ne 0 ] && [ "$code" -ne 124 ] || fail "a client with a world-readable key exited $code"
grep -q "chmod 600" "$WORK/loose.err" || { cat "$WORK/loose.err"; fail "no reason for refusing the key"; }

"$FLOTILLA" aggregator "$WORK/run.toml" > "$WORK/agg.out" 2> "$WORK/agg.err" &
AGG=$!; PIDS+=("$AGG")
CLIENTS=()
for id in 0 1 2; do
  "$FLOTILLA" client "$WORK/run.toml" --id "$id" --connect "tcp://127.0.0.1:$PORT" 2> "$WORK/client-$id.err" &
  CLIENTS+=($!); PIDS+=($!)
done
# A stranger: a valid key pair and the right aggregator key, but not authorized.
sed "s|^key-dir = .*|key-dir = \"$WORK/stranger\"|; s/^connect-timeout = \"60s\"/connect-timeout = \"3s\"/" \
  "$WORK/run.toml" > "$WORK/stranger.toml"
"$FLOTILLA" evaluator "$WORK/stranger.toml" --connect "tcp://127.0.0.1:$PORT" 2> "$WORK/stranger.err" &
STRANGER=$!; PIDS+=("$STRANGER")

# The admin endpoint is up once the aggregator says so (stderr is not buffered).
for _ in $(seq 300); do grep -q "admin commands on" "$WORK/agg.err" 2>/dev/null && break; sleep 0.1; done
grep -q "admin commands on" "$WORK/agg.err" || { cat "$WORK/agg.err"; fail "the aggregator did not start"; }
ADMIN="ipc://$WORK/admin.sock"
"$FLOTILLA" admin status --connect "$ADMIN" --key "$K/ops.key" --server-key "$K/aggregator.pub" \
  > "$WORK/admin.out" 2> "$WORK/admin.err" || { cat "$WORK/admin.err"; fail "the operator's admin command failed"; }
grep -q "run e2e-3" "$WORK/admin.out" || { cat "$WORK/admin.out"; fail "no status from the admin command"; }
echo "ok: operator: $(cut -c1-80 "$WORK/admin.out")"
"$FLOTILLA" admin status --connect "$ADMIN" --key "$K/client-1.key" --server-key "$K/aggregator.pub" \
  --timeout 2 > /dev/null 2> "$WORK/intruder.err" && fail "a client's key was taken for admin commands"
"$FLOTILLA" admin status --connect "$ADMIN" --timeout 2 > /dev/null 2> "$WORK/plain.err" &&
  fail "a plaintext admin command was taken"
echo "ok: a client's key and a plaintext admin command get no answer"

status=0
wait "$AGG" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/agg.err"; fail "the aggregator exited $status"; }
for i in 0 1 2; do
  wait "${CLIENTS[$i]}" || { tail -5 "$WORK/client-$i.err"; fail "client $i exited non-zero"; }
done
code=0
wait "$STRANGER" || code=$?
[ "$code" -ne 0 ] || { cat "$WORK/stranger.err"; fail "the stranger was let in"; }
grep -q "refused a connection .* to the clients endpoint: its key .* is not in $K/authorized" "$WORK/agg.err" ||
  { grep security "$WORK/agg.err"; fail "the aggregator did not say whom it refused"; }
grep -q "refused a connection .* to the admin endpoint" "$WORK/agg.err" ||
  { grep security "$WORK/agg.err"; fail "the aggregator did not say it refused the client's admin key"; }
grep -q "the aggregator refused this peer's key" "$WORK/stranger.err" ||
  { tail -5 "$WORK/stranger.err"; fail "the stranger was not told why"; }
rounds=$(grep -cE "^round +[0-9]+" "$WORK/agg.out" || true)
echo "ok: $rounds rounds over Curve; the stranger was refused: $(grep -m1 -o 'the aggregator refused this peer.s key' "$WORK/stranger.err")"
echo "PASS"

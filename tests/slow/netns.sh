#!/usr/bin/env bash
# An asynchronous run across network namespaces (root only): the aggregator and the evaluator in
# one namespace, two clients in each of two "host" namespaces, each host joined to the
# aggregator's namespace by its own veth pair (a /30 each; the aggregator's address is on its
# loopback, routed to from both hosts). Host 1's link is shaped with tc tbf in both directions
# (this kernel has tbf but no netem); latency and loss come from the fleet's link emulation
# ([[fleet.profile]] up/down latency and dropouts). Checks: a raw transfer over the shaped link
# is much slower than over the other; the run completes with every planned version; clients of
# both hosts registered and had updates accepted; the tbf qdiscs carried the run's traffic and
# held it back (overlimits). Skips (exit 0, "SKIP: ...") where namespaces cannot be made.
source "$(dirname "$0")/../e2e/lib.bash"

skip() { echo "SKIP: $*"; exit 0; }

[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces (running as uid $(id -u))"
if ! command -v ip > /dev/null || ! command -v tc > /dev/null; then
  # Debian's iproute2 has both; install it only where that is ours to do.
  if command -v apt-get > /dev/null &&
     DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 \
       > "$WORK/apt.log" 2>&1 &&
     command -v ip > /dev/null && command -v tc > /dev/null; then
    echo "installed iproute2 (ip, tc)"
  else
    skip "'ip' and 'tc' (Debian package iproute2) are missing and could not be installed"
  fi
fi

# Names carry this shell's pid, so runs side by side do not collide. The addresses are private
# (10.213.0.0/16) and live only inside this run's namespaces, never in the root namespace.
AGG_NS=flotilla-agg-$$ H1_NS=flotilla-h1-$$ H2_NS=flotilla-h2-$$
A1=fla1-$$ H1=flh1-$$ A2=fla2-$$ H2=flh2-$$   # veth ends: A* in the aggregator's namespace
AGG_IP=10.213.0.1 H1_IP=10.213.1.2 H2_IP=10.213.2.2
PORT=5555          # the namespace is this run's own: any port is free
RATE=4mbit         # host 1's link, each way: 4 Mbit/s = 500 kB/s
NAMESPACES=()

netns_cleanup() {
  local p _ alive
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do  # up to 5 s to exit on SIGTERM
    alive=0
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 1 ] || break
    sleep 0.1
  done
  PIDS=()
  # Anything still inside this run's namespaces was started by this script.
  for ns in "${NAMESPACES[@]:-}"; do
    [ -n "$ns" ] || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  # Deleting a namespace destroys its veth ends, and with them their peers in the other one.
  for ns in "${NAMESPACES[@]:-}"; do [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null || true; done
  cleanup
}
trap netns_cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

# Setting up the network is the environment's part: where it is refused, the test skips.
net() { "$@" 2> "$WORK/net.err" || skip "cannot set up the namespaces ($*): $(cat "$WORK/net.err")"; }
for ns in "$AGG_NS" "$H1_NS" "$H2_NS"; do
  ip netns add "$ns" 2> "$WORK/net.err" || skip "cannot create network namespaces: $(cat "$WORK/net.err")"
  NAMESPACES+=("$ns")
  net ip -n "$ns" link set lo up
done
net ip -n "$AGG_NS" addr add "$AGG_IP/32" dev lo
link() {  # link HOST_NS AGG_END HOST_END SUBNET(a.b.c, a /30: .1 aggregator's end, .2 host's end)
  net ip link add "$2" netns "$AGG_NS" type veth peer name "$3" netns "$1"
  net ip -n "$AGG_NS" addr add "$4.1/30" dev "$2"
  net ip -n "$AGG_NS" link set "$2" up
  net ip -n "$1" addr add "$4.2/30" dev "$3"
  net ip -n "$1" link set "$3" up
  net ip -n "$1" route add default via "$4.1"
}
link "$H1_NS" "$A1" "$H1" 10.213.1
link "$H2_NS" "$A2" "$H2" 10.213.2

# tbf on both ends of host 1's link: the host's end shapes uploads, the aggregator's downloads.
shape() { net tc -n "$1" qdisc add dev "$2" root tbf rate "$RATE" burst 32kb latency 500ms; }
shape "$H1_NS" "$H1"
shape "$AGG_NS" "$A1"
echo "[${SECONDS}s] namespaces $AGG_NS ($AGG_IP), $H1_NS ($H1_IP, tbf $RATE each way), $H2_NS ($H2_IP)"

tbf() {  # tbf NS DEV -> "SENT_BYTES OVERLIMITS"
  tc -n "$1" -s qdisc show dev "$2" |
    sed -nE 's/.*Sent ([0-9]+) bytes [0-9]+ pkt \(dropped [0-9]+, overlimits ([0-9]+).*/\1 \2/p' | head -1
}
dev_bytes() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3_bytes"; }

# --- The shaping works: 512 KiB from each host to the aggregator's namespace, timed. -----------
ip netns exec "$AGG_NS" python3 - "$AGG_IP" "$((PORT + 1))" > "$WORK/sink.out" 2>&1 <<'PY' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(2)
s.settimeout(60)
for _ in range(2):
    c, _ = s.accept()
    n = 0
    while (b := c.recv(1 << 16)):
        n += len(b)
    c.sendall(str(n).encode())
    c.close()
PY
SINK=$!; PIDS+=("$SINK")
send_time() {  # send_time NS -> seconds to push 512 KiB and hear back
  ip netns exec "$1" python3 - "$AGG_IP" "$((PORT + 1))" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no connection to the sink")
start = time.monotonic()
s.sendall(b"\0" * (512 << 10))
s.shutdown(socket.SHUT_WR)
got = s.recv(64)
assert got == str(512 << 10).encode(), got
print(f"{time.monotonic() - start:.3f}")
PY
}
T1=$(send_time "$H1_NS") || fail "no TCP path from $H1_NS to $AGG_IP"
T2=$(send_time "$H2_NS") || fail "no TCP path from $H2_NS to $AGG_IP"
echo "[${SECONDS}s] 512 KiB upload: shaped host ${T1}s, unshaped host ${T2}s"
python3 -c "import sys; t1, t2 = map(float, sys.argv[1:]); sys.exit(not (t1 > 0.5 and t1 > 4 * t2))" "$T1" "$T2" ||
  fail "tbf does not slow host 1's link: ${T1}s against ${T2}s"
wait "$SINK" || { cat "$WORK/sink.out"; fail "the sink failed"; }
read -r UP0 OVER_UP0 <<< "$(tbf "$H1_NS" "$H1")"
read -r DOWN0 OVER_DOWN0 <<< "$(tbf "$AGG_NS" "$A1")"
H2_TX0=$(dev_bytes "$H2_NS" "$H2" tx) H2_RX0=$(dev_bytes "$H2_NS" "$H2" rx)

# --- The federation: async, 4 clients (0, 1 on host 1; 2, 3 on host 2), 16 versions. -----------
VERSIONS=16
cat > "$WORK/run.toml" <<EOF
[run]
name = "netns"
seed = 7
versions = $VERSIONS
threads = 1
[data]
clients = 4
alpha = 0.5
[model]
name = "mlp"
hidden = 64
[training]
local-steps = 20
batch-size = 32
learning-rate = 0.05
momentum = 0.9
[aggregator]
schedule = "async"
max-concurrency = 4
task-deadline = "8s"
registration-timeout = "300s"
[client]
connect-timeout = "300s"
[evaluator]
examples = 2000
[[fleet.profile]]
name = "lossy-link"
up-latency = "60ms"
down-latency = "60ms"
dropout = 0.15
EOF
EP="tcp://$AGG_IP:$PORT"
ip netns exec "$AGG_NS" timeout 600 "$FLOTILLA" aggregator "$WORK/run.toml" --listen "$EP" \
  --output "$WORK/out" > "$WORK/aggregator.out" 2> "$WORK/aggregator.err" &
AGG=$!; PIDS+=("$AGG")
ip netns exec "$AGG_NS" timeout 600 "$FLOTILLA" evaluator "$WORK/run.toml" --connect "$EP" \
  2> "$WORK/evaluator.err" &
EVAL=$!; PIDS+=("$EVAL")
declare -A HOST_OF=([0]="$H1_NS" [1]="$H1_NS" [2]="$H2_NS" [3]="$H2_NS")
CLIENTS=()
for id in 0 1 2 3; do
  ip netns exec "${HOST_OF[$id]}" timeout 600 "$FLOTILLA" --log-level debug client "$WORK/run.toml" \
    --id "$id" --connect "$EP" 2> "$WORK/client-$id.err" &
  CLIENTS+=($!); PIDS+=($!)
done

dump() { for f in "$WORK"/aggregator.err "$WORK"/evaluator.err "$WORK"/client-*.err; do echo "--- $(basename "$f")"; tail -n 30 "$f"; done; }
status=0
wait "$AGG" || status=$?
echo "[${SECONDS}s] the aggregator exited $status"
grep -h "listening on\|registered with" "$WORK/aggregator.err" "$WORK/evaluator.err" "$WORK"/client-*.err || true
cat "$WORK/aggregator.out"
[ "$status" -eq 0 ] || { dump; fail "aggregator exited $status"; }
for id in 0 1 2 3; do
  wait "${CLIENTS[$id]}" || { dump; fail "client $id (in ${HOST_OF[$id]}) exited non-zero"; }
done
wait "$EVAL" || { dump; fail "evaluator exited non-zero"; }

# Every planned version, one accepted update each.
SUMMARY=$(grep "^done: " "$WORK/aggregator.out") || { dump; fail "no summary line"; }
[[ $SUMMARY =~ ^done:\ $VERSIONS\ versions\ \(0\ failed\),\ model\ version\ $VERSIONS,.*updates:\ ([0-9]+)\ accepted ]] ||
  { dump; fail "expected $VERSIONS versions, got: $SUMMARY"; }
[ "${BASH_REMATCH[1]}" -ge "$VERSIONS" ] || fail "only ${BASH_REMATCH[1]} updates accepted: $SUMMARY"
grep -q "^schedule async" "$WORK/aggregator.out" || fail "no async schedule line"
grep -q "final accuracy" "$WORK/aggregator.out" || fail "no final accuracy"

# Clients of both namespaces registered, as emulated devices, and had updates accepted. The
# aggregator logs every update it refuses (late, rejected, malformed) with the client's name,
# and a client has at most one update in flight when the run ends, so of the updates a client
# sent ("task N:" lines at debug; a dropout sends none), all but the refused ones and one
# were accepted.
for id in 0 1 2 3; do
  grep -q "registered client client-$id (.* as 'lossy-link')" "$WORK/aggregator.err" ||
    { dump; fail "the aggregator has no 'registered client client-$id' line naming its profile"; }
done
grep "registered client" "$WORK/aggregator.err"
sent() { grep -Ec "task [0-9]+: [0-9]+ steps" "$WORK/client-$1.err" || true; }
refused() {
  grep -Ec "(late|rejected) update from client-$1 |dropped a message from client-$1:" \
    "$WORK/aggregator.err" || true
}
for host in 1 2; do
  taken=0 report=""
  for id in $((2 * host - 2)) $((2 * host - 1)); do
    n=$(sent "$id") r=$(refused "$id")
    [ $((n - r - 1)) -le 0 ] || taken=$((taken + n - r - 1))
    report+=" client $id sent $n updates, $r refused;"
  done
  echo "host $host (${HOST_OF[$((2 * host - 1))]}):$report at least $taken accepted"
  [ "$taken" -ge 1 ] || { dump; fail "no update from host $host is known to have been accepted"; }
done
# Loss: the fleet's dropouts really dropped tasks, and the run went on without them.
grep -Eq "tasks sent, [1-9][0-9]* lost" "$WORK/aggregator.out" || fail "no task was lost to a dropout"
grep -h "emulated dropout" "$WORK"/client-*.err | head -3 || true

# The run's traffic went through host 1's tbf qdiscs (held back: overlimits) and host 2's link.
MODEL_BYTES=220000   # the mlp with hidden 64: 55,050 float parameters
read -r UP OVER_UP <<< "$(tbf "$H1_NS" "$H1")"
read -r DOWN OVER_DOWN <<< "$(tbf "$AGG_NS" "$A1")"
echo "tbf on $H1 (host 1 up):   Sent $((UP - UP0)) bytes in the run, overlimits $((OVER_UP - OVER_UP0))"
echo "tbf on $A1 (host 1 down): Sent $((DOWN - DOWN0)) bytes in the run, overlimits $((OVER_DOWN - OVER_DOWN0))"
tc -n "$H1_NS" -s qdisc show dev "$H1"
tc -n "$AGG_NS" -s qdisc show dev "$A1"
[ $((DOWN - DOWN0)) -ge $((2 * MODEL_BYTES)) ] || fail "host 1's downloads did not go through tbf"
[ $((UP - UP0)) -ge $((2 * MODEL_BYTES)) ] || fail "host 1's uploads did not go through tbf"
[ $((OVER_UP - OVER_UP0 + OVER_DOWN - OVER_DOWN0)) -gt 0 ] || fail "tbf never held the run's traffic back"
H2_TX=$(($(dev_bytes "$H2_NS" "$H2" tx) - H2_TX0)) H2_RX=$(($(dev_bytes "$H2_NS" "$H2" rx) - H2_RX0))
echo "host 2's link in the run: $H2_TX bytes up, $H2_RX bytes down"
if [ "$H2_RX" -lt $((2 * MODEL_BYTES)) ] || [ "$H2_TX" -lt $((2 * MODEL_BYTES)) ]; then
  fail "host 2's clients did not train over its link"
fi
echo "PASS (${SECONDS}s)"

#!/usr/bin/env bash
# scripts/fedscale-traces.py turns FedScale's device pickles into Flotilla's device and
# availability traces, and a simulated run reads what it writes.
source "$(dirname "$0")/lib.bash"
CONVERT="$(cd "$(dirname "$0")/../.." && pwd)/scripts/fedscale-traces.py"

# expect_file FILE <<'EOF' ... EOF: FILE's content, exactly.
expect_file() {
  cat > "$WORK/expected"
  diff -u "$WORK/expected" "$1" || fail "$1 differs from the expected content"
}

# Sparse ids, one spelled as a string, one with separate up/down bandwidths; behaviour patterns
# shorter than the horizon, an active list longer than the inactive one, a window touching the
# period's end, a client never online, one known only to the behaviour trace.
python3 - "$WORK" <<'EOF'
import pickle, sys
work = sys.argv[1]
capacity = {
    1: {'computation': 2.0, 'communication': 800.0},
    2: {'computation': 0.5, 'communication': 1500},
    7: {'computation': 4, 'communication': 80, 'up': 40, 'down': 160},
    '10': {'computation': 3.0, 'communication': 1000.0},
}
behaviour = {
    1: {'duration': 200, 'inactive': [100, 400], 'finish_time': 600, 'active': [0, 300],
        'model': 'x'},
    2: {'duration': 650, 'inactive': [200], 'finish_time': 1000, 'active': [50, 500],
        'model': 'x'},
    7: {'duration': 600, 'inactive': [300], 'finish_time': 1000, 'active': [0, 700],
        'model': 'x'},
    12: {'duration': 0, 'inactive': [], 'finish_time': 100, 'active': [], 'model': 'x'},
}
with open(f"{work}/capacity.pkl", "wb") as f: pickle.dump(capacity, f)
with open(f"{work}/behave.pkl", "wb") as f: pickle.dump(behaviour, f)
with open(f"{work}/bad.pkl", "wb") as f:
    pickle.dump({1: {'computation': 1.0, 'communication': 10}, 42: {'computation': 0, 'communication': 10}}, f)
with open(f"{work}/nokey.pkl", "wb") as f: pickle.dump({5: {'computation': 1.0}}, f)
with open(f"{work}/list.pkl", "wb") as f: pickle.dump([1, 2], f)
with open(f"{work}/named.pkl", "wb") as f:
    pickle.dump({'phone-a': {'computation': 1.0, 'communication': 10}}, f)
EOF

python3 "$CONVERT" --horizon 2450 "$WORK/capacity.pkl" "$WORK/behave.pkl" "$WORK/out" \
  > "$WORK/stdout" 2> "$WORK/stderr" || { cat "$WORK/stderr"; fail "conversion exited non-zero"; }
expect_file "$WORK/stdout" <<EOF
wrote $WORK/out/devices.csv: 4 clients
wrote $WORK/out/availability.csv: 4 clients, 18 windows
wrote $WORK/out/ids.csv: 5 clients
EOF
grep -q "1 client(s) never online before the horizon (12)" "$WORK/stderr" \
  || { cat "$WORK/stderr"; fail "no warning about client 12"; }
# speed = 1 ms / computation; bandwidth = kbit/s * 1000 / 8 bytes per second.
expect_file "$WORK/out/devices.csv" <<'EOF'
client,compute-speed,up-bandwidth,down-bandwidth
0,0.5,100000,100000
1,2,187500,187500
2,0.25,5000,20000
3,0.3333333333333333,125000,125000
EOF
# Client 0 (FedScale 1): [0,100) and [300,400) every 600 s, the last clipped at 2450.
# Client 1 (FedScale 2): [50,200) and [500, end of period) every 1000 s; 2500 is past 2450.
# Client 2 (FedScale 7): [0,300) and [700,1000) every 1000 s, touching windows merged.
# Client 4 (FedScale 12): never online, so one window at the horizon.
expect_file "$WORK/out/availability.csv" <<'EOF'
client,online,offline
0,0,100
0,300,400
0,600,700
0,900,1000
0,1200,1300
0,1500,1600
0,1800,1900
0,2100,2200
0,2400,2450
1,50,200
1,500,1000
1,1050,1200
1,1500,2000
1,2050,2200
2,0,300
2,700,1300
2,1700,2300
4,2450,2451
EOF
expect_file "$WORK/out/ids.csv" <<'EOF'
flotilla,fedscale
0,1
1,2
2,7
3,10
4,12
EOF
echo "ok: conversion"

# --keep-ids, --limit, the median device as the reference (1.25 ms of FedScale 1 and 2), a
# skipped input.
python3 "$CONVERT" --keep-ids --limit 2 --reference-ms-per-sample median \
  "$WORK/capacity.pkl" - "$WORK/kept" > "$WORK/stdout" 2> "$WORK/stderr" \
  || { cat "$WORK/stderr"; fail "--keep-ids exited non-zero"; }
grep -q "reference device: 1.25 ms per sample" "$WORK/stderr" || fail "no reference device line"
expect_file "$WORK/stdout" <<EOF
wrote $WORK/kept/devices.csv: 2 clients
EOF
expect_file "$WORK/kept/devices.csv" <<'EOF'
client,compute-speed,up-bandwidth,down-bandwidth
1,0.625,100000,100000
2,2.5,187500,187500
EOF
[ ! -e "$WORK/kept/ids.csv" ] && [ ! -e "$WORK/kept/availability.csv" ] \
  || fail "--keep-ids with '-' wrote ids.csv or availability.csv"
echo "ok: --keep-ids --limit --reference-ms-per-sample median"

expect_error() {  # expect_error "what" "pattern" args...
  local what=$1 pattern=$2; shift 2
  local code=0
  python3 "$CONVERT" "$@" > /dev/null 2> "$WORK/err" || code=$?
  [ "$code" -ne 0 ] || fail "$what: exit code 0"
  grep -q -- "$pattern" "$WORK/err" || { cat "$WORK/err"; fail "$what: no '$pattern' in stderr"; }
  echo "ok: $what -> $(head -n1 "$WORK/err")"
}
expect_error "zero computation" "bad.pkl: client 42: computation" "$WORK/bad.pkl" - "$WORK/bad"
[ ! -e "$WORK/bad/devices.csv" ] || fail "zero computation: devices.csv written"
expect_error "missing key" "nokey.pkl: client 5: record has no 'communication'" \
  "$WORK/nokey.pkl" - "$WORK/bad"
expect_error "not a dict" "list.pkl: expected a dict" "$WORK/list.pkl" - "$WORK/bad"
expect_error "missing file" "nope.pkl: cannot read" - "$WORK/nope.pkl" "$WORK/bad"
expect_error "named id kept" "client id 'phone-a' is not an integer" \
  --keep-ids "$WORK/named.pkl" - "$WORK/bad"

# A simulated run reads the traces.
if [ ! -x "$FLOTILLA" ]; then
  echo "skip: no flotilla binary at $FLOTILLA"
  echo "PASS"
  exit 0
fi
cat > "$WORK/sim.toml" <<EOF
[run]
mode = "simulate"
versions = 4
threads = 1
[data]
clients = 6
partition = "classes"
examples-per-client = 32
[model]
name = "mlp"
hidden = 16
[training]
local-steps = 3
[aggregator]
schedule = "async"
max-concurrency = 2
[evaluator]
examples = 200
[[fleet.profile]]
task-time = "lognormal"
task-median = "5s"
device-trace = "$WORK/out/devices.csv"
availability-trace = "$WORK/out/availability.csv"
EOF
code=0
timeout 120 "$FLOTILLA" run "$WORK/sim.toml" > "$WORK/sim.out" 2>&1 || code=$?
[ "$code" -eq 0 ] || { tail -n 20 "$WORK/sim.out"; fail "simulation exited $code"; }
grep -q '^simulated ' "$WORK/sim.out" || { tail -n 20 "$WORK/sim.out"; fail "no 'simulated' line"; }
echo "ok: simulation -> $(grep -m1 '^simulated ' "$WORK/sim.out")"
echo "PASS"

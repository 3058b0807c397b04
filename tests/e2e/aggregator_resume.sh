#!/usr/bin/env bash
# kill -9 of the aggregator, then `flotilla aggregator --resume DIR`, over real processes.
#  - sync, FedEx-LoRA (adapters; the method writes into the adapted layers' frozen base
#    weights, which then travel in tasks): everything killed mid-round (after 3 of 8 rounds:
#    the aggregator and its clients, as when the machine goes down), the aggregator resumed from
#    its checkpoint and the clients started afresh; the run ends with the same final model as an
#    uninterrupted run of the same config and seed (up to the order updates were summed in). The
#    fresh clients hold the initial base weights: the resumed aggregator must still send the ones
#    the method changed before the crash.
#  - buffered (FedBuff): killed at once after a scrape of its metrics, mid-buffer; resumed, it
#    starts with at least every update the killed one had counted as accepted (the journal
#    replayed), and ends with every accepted update in a version (accepted = K x versions).
source "$(dirname "$0")/lib.bash"

# CONFIG NAME: a config for this test (checkpoints in WORK/NAME, metrics on a port of its own).
make_config() {
  local port=$1 name=$2
  sed "s/PORT/$port/; s/^rounds = 4/rounds = 8/; s/^name = \"e2e\"/name = \"$name\"/" \
    "$(dirname "$0")/lib_config.toml" > "$WORK/$name.toml"
  sed -i 's/^min-updates = 2/min-updates = 3\nmin-clients = 3\npeer-timeout = "2s"/' "$WORK/$name.toml"
  sed -i 's/^connect-timeout = "60s"/connect-timeout = "60s"\nheartbeat-interval = "500ms"/' "$WORK/$name.toml"
  sed -i 's/^examples = 2000/enabled = false/' "$WORK/$name.toml"
  printf '[checkpoint]\ndir = "%s"\n' "$WORK/$name" >> "$WORK/$name.toml"
  grep -q 'peer-timeout = "2s"' "$WORK/$name.toml" || fail "config template changed"
}

# NAME PORT: starts 3 clients of config NAME in the background (their pids in CLIENTS).
start_clients() {
  CLIENTS=()
  for id in 0 1 2; do
    "$FLOTILLA" client "$WORK/$1.toml" --id "$id" --connect "tcp://127.0.0.1:$2" 2> "$WORK/$1-client-$id.err" &
    CLIENTS+=($!); PIDS+=($!)
  done
}

wait_clients() {  # NAME
  for i in 0 1 2; do
    wait "${CLIENTS[$i]}" || { tail -20 "$WORK/$1-client-$i.err"; fail "$1: client $i exited non-zero"; }
  done
}

rows() { [ -f "$1" ] && tail -n +2 "$1" | wc -l || echo 0; }

lora() {  # NAME: FedEx-LoRA on rank-4 adapters of every layer (alpha/r = 2: 4 diverges at this rate)
  sed -i 's/^\[aggregator\]/[aggregator]\nstrategy = "fedex-lora"/; s/^learning-rate = 0.05/learning-rate = 0.02/' "$WORK/$1.toml"
  printf '[lora]\nrank = 4\nalpha = 8.0\ntargets = ["fc1", "fc2", "fc3"]\n' >> "$WORK/$1.toml"
}

# --- sync: the uninterrupted reference run ---
PORT=$(free_port)
make_config "$PORT" reference
lora reference
"$FLOTILLA" aggregator "$WORK/reference.toml" --output "$WORK/reference-out" > /dev/null 2> "$WORK/reference.err" &
AGG=$!; PIDS+=("$AGG")
start_clients reference "$PORT"
wait "$AGG" || { cat "$WORK/reference.err"; fail "the reference aggregator failed"; }
wait_clients reference

# --- sync: the same run, killed mid-round and resumed ---
PORT=$(free_port)
make_config "$PORT" killed
lora killed
"$FLOTILLA" aggregator "$WORK/killed.toml" --output "$WORK/killed-out" > /dev/null 2> "$WORK/killed.err" &
AGG=$!; PIDS+=("$AGG")
start_clients killed "$PORT"
for _ in $(seq 600); do [ "$(rows "$WORK/killed-out/rounds.csv")" -ge 3 ] && break; sleep 0.05; done
[ "$(rows "$WORK/killed-out/rounds.csv")" -ge 3 ] || { cat "$WORK/killed.err"; fail "the run did not get going"; }
kill -9 "$AGG" "${CLIENTS[@]}"
for pid in "$AGG" "${CLIENTS[@]}"; do wait "$pid" 2>/dev/null || true; done
echo "sync: killed the aggregator and its clients after $(rows "$WORK/killed-out/rounds.csv") rounds"
"$FLOTILLA" aggregator "$WORK/killed.toml" --resume "$WORK/killed" --output "$WORK/resumed-out" \
  > /dev/null 2> "$WORK/resumed.err" &
AGG=$!; PIDS+=("$AGG")
start_clients killed "$PORT"
status=0
wait "$AGG" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/resumed.err"; fail "the resumed aggregator exited $status"; }
wait_clients killed
grep -E "resumed at round [3-8], model version [3-8]" "$WORK/resumed.err" ||
  { cat "$WORK/resumed.err"; fail "the aggregator did not resume from round 3 or later"; }
python3 - "$WORK/reference/checkpoint-000000000008/model.safetensors" \
  "$WORK/killed/checkpoint-000000000008/model.safetensors" <<'PY'
import json, struct, sys, array
def load(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__": continue
        assert t["dtype"] == "F32", t
        b, e = t["data_offsets"]
        out[name] = array.array("f", data[8 + n + b:8 + n + e])
    return out
ref, res = load(sys.argv[1]), load(sys.argv[2])
assert ref.keys() == res.keys(), (ref.keys(), res.keys())
worst = max(abs(a - b) for k in ref for a, b in zip(ref[k], res[k]))
scale = max(abs(a) for k in ref for a in ref[k])
print(f"sync: final models differ by at most {worst:.2e} (largest weight {scale:.2f})")
assert worst < 1e-4, f"the resumed run ended with another model: max difference {worst}"
PY

# --- buffered: killed mid-buffer, no accepted update lost ---
PORT=$(free_port)
METRICS=$(free_port)
make_config "$PORT" buffered
sed -i "s/^\[aggregator\]/[aggregator]\nschedule = \"buffered\"\nbuffer-size = 4/" "$WORK/buffered.toml"
sed -i "s/^rounds = 8/rounds = 8\nversions = 30/; s/^local-steps = 30/local-steps = 120/" "$WORK/buffered.toml"
"$FLOTILLA" aggregator "$WORK/buffered.toml" --metrics-listen "127.0.0.1:$METRICS" > /dev/null \
  2> "$WORK/buffered.err" &
AGG=$!; PIDS+=("$AGG")
start_clients buffered "$PORT"
scrape() {
  python3 - "$METRICS" <<'PY'
import sys, urllib.request
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
except OSError:
    print(-1); sys.exit()
for line in text.splitlines():
    if line.startswith("flotilla_aggregator_updates_accepted_total"):
        print(int(float(line.split()[-1]))); sys.exit()
print(-1)
PY
}
# Kill once a few versions exist and the buffer is not empty (accepted not a multiple of 4).
accepted=-1
for _ in $(seq 400); do
  accepted=$(scrape)
  [ "$accepted" -ge 9 ] && [ $((accepted % 4)) -ne 0 ] && break
  sleep 0.02
done
kill -9 "$AGG" 2>/dev/null || true
wait "$AGG" 2>/dev/null || true
[ "$accepted" -ge 9 ] || { tail -n 20 "$WORK/buffered.err" "$WORK"/buffered-client-0.err; fail "buffered: the run did not get going (accepted: $accepted)"; }
echo "buffered: killed the aggregator with $accepted updates counted as accepted"
"$FLOTILLA" aggregator "$WORK/buffered.toml" --resume "$WORK/buffered" > /dev/null 2> "$WORK/buffered-resumed.err" &
AGG=$!; PIDS+=("$AGG")
status=0
wait "$AGG" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/buffered-resumed.err"; fail "the resumed buffered aggregator exited $status"; }
wait_clients buffered
line=$(grep -E "resumed at version [0-9]+, model version [0-9]+: [0-9]+ updates accepted so far \([0-9]+ replayed" \
  "$WORK/buffered-resumed.err") || { cat "$WORK/buffered-resumed.err"; fail "buffered: no resume line"; }
echo "buffered: ${line#*] }"
python3 - "$accepted" "$line" "$WORK/buffered/checkpoint-000000000030/state.json" <<'PY'
import json, re, sys
killed = int(sys.argv[1])
m = re.search(r"(\d+) updates accepted so far \((\d+) replayed", sys.argv[2])
resumed, replayed = int(m.group(1)), int(m.group(2))
assert resumed >= killed, f"the resumed aggregator knows {resumed} accepted updates, the killed one counted {killed}"
assert replayed > 0, "killed mid-buffer, yet nothing was replayed from the journal"
c = json.load(open(sys.argv[3]))["counters"]
assert c["rounds_completed"] == 30, c
assert c["updates_accepted"] == 4 * 30, f"accepted {c['updates_accepted']} != 4 x 30 versions: {c}"
PY
echo "PASS"

#!/usr/bin/env bash
# The metrics count what the run reports: `flotilla run` with 16 concurrent clients under
# FedAsync with a staleness bound (so updates are dropped), serving one /metrics endpoint for the
# whole process; after the run (metrics.hold keeps it up) every counter equals the run's own
# summary, and the fleet as the aggregator shows it equals the clients' own counters. The same
# config simulated on a virtual clock serves the same counters.
source "$(dirname "$0")/lib.bash"

scrape_and_compare() {  # NAME: compares WORK/NAME.out's summary with its /metrics
  local name=$1 url=""
  for _ in $(seq 600); do
    url=$(sed -n 's/^metrics: //p' "$WORK/$name.out" | head -1)
    grep -q "serving metrics" "$WORK/$name.out" && break
    sleep 0.2
  done
  grep -q "serving metrics" "$WORK/$name.out" || { cat "$WORK/$name.out" "$WORK/$name.err"; fail "$name: the run did not end"; }
  cat "$WORK/$name.out"
  python3 - "$url" "$WORK/$name.out" "$name" <<'PY'
import re, sys, urllib.request
url, out, name = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
text = urllib.request.urlopen(url, timeout=10).read().decode()
samples = {}
for line in text.splitlines():
    if line and not line.startswith("#"):
        series, value = line.rsplit(" ", 1)
        samples[series] = float(value)
def m(series):
    assert series in samples, f"{name}: no sample {series}"
    return samples[series]
def total(prefix):
    return sum(v for k, v in samples.items() if k.startswith(prefix + "{") or k == prefix)
done = re.search(r"done: (\d+) versions \((\d+) failed\), model version (\d+), .*updates: (\d+) accepted, (\d+) late, (\d+) rejected, (\d+) malformed", out)
sched = re.search(r"(\d+) tasks sent, (\d+) lost .*, (\d+) updates dropped as stale", out)
assert done and sched, f"{name}: no summary"
versions, failed, version, accepted, late, rejected, malformed = map(int, done.groups())
sent, lost, stale = map(int, sched.groups())
checks = {
    "flotilla_aggregator_model_version": version,
    "flotilla_aggregator_versions_produced_total": versions - failed,
    "flotilla_aggregator_versions_failed_total": failed,
    "flotilla_aggregator_updates_accepted_total": accepted,
    "flotilla_aggregator_updates_late_total": late,
    'flotilla_aggregator_updates_rejected_total{reason="stale"}': stale,
    "flotilla_aggregator_updates_stale_dropped_total": stale,
    "flotilla_aggregator_messages_refused_total": malformed,
    "flotilla_aggregator_tasks_sent_total": sent,
    "flotilla_aggregator_tasks_lost_total": lost,
    'flotilla_aggregator_clients{state="registered"}': 16,
    "flotilla_aggregator_updates_received_total": accepted + late + rejected,
    "flotilla_aggregator_update_staleness_versions_count": accepted,
}
for series, want in checks.items():
    assert m(series) == want, f"{name}: {series} = {m(series)}, the run says {want}"
assert total("flotilla_aggregator_updates_rejected_total") == late + rejected
assert stale > 0, f"{name}: no update was dropped as stale: the check proves little"
if name == "real":
    fleet, own = total("flotilla_fleet_tasks_completed_total"), total("flotilla_client_tasks_completed_total")
    # Every update the schedule took carried its sender's counters; tasks finished after the
    # run ended are on the clients' own endpoints only.
    assert fleet == accepted + late + rejected, f"fleet {fleet} tasks vs {accepted + late + rejected} updates"
    assert own >= fleet, f"the clients' own counters ({own}) are behind the fleet's ({fleet})"
    assert m("flotilla_evaluator_model_version") == version
print(f"{name}: {len(checks) + 1} counters equal the run's summary ({accepted} accepted, {stale} stale, {sent} tasks)")
PY
}

PORT=$(free_port)
sed "s/PORT/$PORT/; s/^clients = 3/clients = 16/; s/^local-steps = 30/local-steps = 5/" \
  "$(dirname "$0")/lib_config.toml" > "$WORK/real.toml"
printf 'schedule = "async"\nalpha = 0.5\nmax-staleness = 3\nmax-concurrency = 16\n' |
  sed -i "/^\[aggregator\]/r /dev/stdin" "$WORK/real.toml"
printf 'versions = 120\n' | sed -i "/^\[run\]/r /dev/stdin" "$WORK/real.toml"
printf '[metrics]\nlisten = "127.0.0.1:0"\nhold = "20s"\n' >> "$WORK/real.toml"
"$FLOTILLA" --log-level warn run "$WORK/real.toml" > "$WORK/real.out" 2> "$WORK/real.err" &
PIDS+=($!)
scrape_and_compare real

sed 's/^\[run\]/[run]\nmode = "simulate"/' "$WORK/real.toml" > "$WORK/sim.toml"
"$FLOTILLA" --log-level warn run "$WORK/sim.toml" > "$WORK/sim.out" 2> "$WORK/sim.err" &
PIDS+=($!)
scrape_and_compare sim
echo "PASS"

#!/usr/bin/env bash
# Monitoring against the real thing: Debian's Prometheus server scrapes a federation of
# separate processes (aggregator, evaluator, three clients, each serving /metrics) while a
# hostile peer floods the aggregator's endpoint with garbage. Then, through Prometheus' query
# API: the model version and the accepted updates equal what the run itself reports, the fleet
# counters the aggregator shows equal the sum of the clients' own, and every query of the
# Grafana dashboard and of the alert rules returns data. promtool checks the shipped config and
# rules; the dashboard's JSON is checked for structure (Grafana is not packaged for Debian 12).
source "$(dirname "$0")/lib.bash"
ROOT=$(pwd)
command -v prometheus >/dev/null && command -v promtool >/dev/null ||
  fail "prometheus and promtool are needed (Debian package prometheus: scripts/install-deps.sh)"

promtool check config "$ROOT/monitoring/prometheus/prometheus.yml" || fail "promtool check config"
promtool check rules "$ROOT/monitoring/prometheus/alerts.yml" || fail "promtool check rules"
python3 "$ROOT/monitoring/check_queries.py" structure "$ROOT/monitoring/grafana/flotilla.json" ||
  fail "the dashboard's structure"

PORT=$(free_port); MA=$(free_port); ME=$(free_port); MC0=$(free_port); MC1=$(free_port); MC2=$(free_port)
PP=$(free_port)
sed "s/PORT/$PORT/; s/^rounds = 4/rounds = 20/; s/^local-steps = 30/local-steps = 100/" "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"
printf '[metrics]\nhold = "30s"\n' >> "$WORK/run.toml"
EP="tcp://127.0.0.1:$PORT"

cat > "$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["$ROOT/monitoring/prometheus/alerts.yml"]
scrape_configs:
  - job_name: flotilla-aggregator
    static_configs: [{targets: ["127.0.0.1:$MA"]}]
  - job_name: flotilla-evaluator
    static_configs: [{targets: ["127.0.0.1:$ME"]}]
  - job_name: flotilla-clients
    static_configs: [{targets: ["127.0.0.1:$MC0", "127.0.0.1:$MC1", "127.0.0.1:$MC2"]}]
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PP" > "$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
PROM="http://127.0.0.1:$PP"
# GET URL [QUERY]: the body (Python's urllib: no curl needed).
get() { python3 -c '
import sys, urllib.parse, urllib.request
url = sys.argv[1] + ("?" + urllib.parse.urlencode({"query": sys.argv[2]}) if len(sys.argv) > 2 else "")
sys.stdout.write(urllib.request.urlopen(url, timeout=10).read().decode())' "$@"; }
for _ in $(seq 100); do get "$PROM/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
get "$PROM/-/ready" >/dev/null 2>&1 || { cat "$WORK/prometheus.log"; fail "prometheus did not start"; }

"$FLOTILLA" aggregator "$WORK/run.toml" --metrics-listen "127.0.0.1:$MA" > "$WORK/aggregator.out" 2> "$WORK/aggregator.err" &
AGG=$!; PIDS+=("$AGG")
"$FLOTILLA" evaluator "$WORK/run.toml" --connect "$EP" --metrics-listen "127.0.0.1:$ME" > /dev/null 2> "$WORK/evaluator.err" &
PIDS+=($!)
MC=("$MC0" "$MC1" "$MC2")
for id in 0 1 2; do
  "$FLOTILLA" client "$WORK/run.toml" --id "$id" --connect "$EP" --metrics-listen "127.0.0.1:${MC[$id]}" \
    > /dev/null 2> "$WORK/client-$id.err" &
  PIDS+=($!)
done

# The hostile peer: garbage, oversized requests, idle connections and a burst of scrapes
# against the aggregator's endpoint for as long as the run goes.
python3 - "$MA" "$WORK/aggregator.out" > "$WORK/flood.out" 2>&1 <<'PY' &
import os, random, socket, sys, time
port, summary = int(sys.argv[1]), sys.argv[2]
rng = random.Random(1)
sent = ok = 0
idle = []
def alive():  # until the run's summary is out
    try: return "done:" not in open(summary).read()
    except OSError: return True
deadline = time.time() + 400  # a bound in case the run never ends
while alive() and time.time() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        kind = rng.randrange(4)
        if kind == 0: s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000))))
        elif kind == 1: s.sendall(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
        elif kind == 2: idle.append(s); idle = idle[-20:]; continue
        else:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"): ok += 1
        sent += 1
        s.close()
    except OSError:
        pass
    time.sleep(0.01)  # hostile, but not a second busy core on a 2-core machine
print(f"flood: {sent} requests, {ok} scrapes answered")
PY
FLOOD=$!; PIDS+=("$FLOOD")

# The run ends; the roles keep serving for metrics.hold. Wait for Prometheus to scrape the end.
wait "$FLOOD" || true
for _ in $(seq 100); do grep -q "serving metrics" "$WORK/aggregator.out" && break; sleep 0.2; done
grep -q "serving metrics" "$WORK/aggregator.out" || { cat "$WORK/aggregator.out" "$WORK/aggregator.err"; fail "the run did not end"; }
cat "$WORK/aggregator.out" "$WORK/flood.out"
grep -Eq "flood: [0-9]+ requests, [1-9][0-9]* scrapes answered" "$WORK/flood.out" ||
  fail "no scrape among the flood was answered"
sleep 4

query() {  # the one value of an instant query (fails on none or several)
  get "$PROM/api/v1/query" "$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
assert len(r) == 1, f"{len(r)} series for {sys.argv[1]}: {r}"
v = float(r[0]["value"][1]); print(int(v) if v == int(v) else v)' "$1"
}
version=$(sed -n 's/.*model version \([0-9]*\),.*/\1/p' "$WORK/aggregator.out" | tail -1)
accepted=$(sed -n 's/.*updates: \([0-9]*\) accepted.*/\1/p' "$WORK/aggregator.out" | tail -1)
[ -n "$version" ] && [ -n "$accepted" ] || fail "no summary line"
got_version=$(query 'flotilla_aggregator_model_version{job="flotilla-aggregator"}')
got_accepted=$(query 'flotilla_aggregator_updates_accepted_total{job="flotilla-aggregator"}')
echo "run: version $version, $accepted accepted; Prometheus: version $got_version, $got_accepted accepted"
[ "$got_version" = "$version" ] || fail "Prometheus has model version $got_version, the run says $version"
[ "$got_accepted" = "$accepted" ] || fail "Prometheus has $got_accepted accepted updates, the run says $accepted"
fleet=$(query 'sum(flotilla_fleet_tasks_completed_total)')
own=$(query 'sum(flotilla_client_tasks_completed_total)')
echo "tasks completed: $fleet as the aggregator shows the fleet, $own on the clients' own endpoints"
[ "$fleet" = "$own" ] && [ "$fleet" -ge "$accepted" ] || fail "fleet counters ($fleet) differ from the clients' own ($own)"
[ "$(query 'count(up{job=~"flotilla-.*"} == 1)')" = 5 ] || fail "not every role was scraped"
[ "$(query 'flotilla_aggregator_received_bytes_total > 0')" != "" ] || fail "no transport bytes"

python3 "$ROOT/monitoring/check_queries.py" run "$PROM" "$ROOT/monitoring/grafana/flotilla.json" \
  "$ROOT/monitoring/prometheus/alerts.yml" || fail "a dashboard or alert query returned no data"
get "$PROM/api/v1/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
bad = [r["name"] for r in rules if r.get("health") != "ok"]
assert rules and not bad, f"rules not healthy: {bad}"
print(f"{len(rules)} alert rules evaluated by Prometheus, all healthy")'

status=0; wait "$AGG" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/aggregator.err"; fail "aggregator exited $status"; }
echo "PASS"

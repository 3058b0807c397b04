#!/usr/bin/env bash
# Single-stream TCP loopback throughput (iperf3), the bound the transport bench is held to.
# Usage: bench/iperf3_loopback.sh [PORT] [SECONDS]; prints `iperf3 GBps=<receiver rate>`, or
# exits 1 with the reason on stderr (a caller skips the ratio instead of stopping).
set -euo pipefail

port="${1:-5299}"
seconds="${2:-3}"

# A server that stays up across attempts (a one-off `-s -1` server exits after a failed attempt
# and every retry then fails "unable to connect").
iperf3 -s -p "$port" -B 127.0.0.1 >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

# iperf3 -J reports errors as JSON ({"error": "unable to connect ..."}), sometimes with exit
# status 0: a result counts only when it parses and carries no "error".
rate() {
  python3 -c '
import json, sys
try:
    result = json.loads(sys.stdin.read())
    if "error" in result: sys.exit("iperf3: " + result["error"])
    print("%.2f" % (result["end"]["sum_received"]["bits_per_second"] / 8 / 1e9))
except (ValueError, KeyError) as e:
    sys.exit("iperf3: unreadable result (%s)" % e)
'
}

why="no iperf3 server answered on 127.0.0.1:$port"
for _ in $(seq 1 50); do
  json="$(iperf3 -c 127.0.0.1 -p "$port" -t "$seconds" -J 2>/dev/null || true)"
  if gbps="$(rate <<<"$json" 2>/tmp/iperf3_loopback.$$)"; then
    rm -f /tmp/iperf3_loopback.$$
    echo "iperf3 GBps=$gbps"
    exit 0
  fi
  why="$(cat /tmp/iperf3_loopback.$$)"
  sleep 0.1
done
rm -f /tmp/iperf3_loopback.$$
echo "iperf3_loopback: $why" >&2
exit 1

#!/usr/bin/env bash
# Single-stream TCP loopback throughput (iperf3), the bound the transport bench is held to.
# Usage: bench/iperf3_loopback.sh [PORT] [SECONDS]; prints `iperf3 GBps=<receiver rate>`.
set -euo pipefail

port="${1:-5299}"
seconds="${2:-3}"

iperf3 -s -1 -p "$port" -B 127.0.0.1 >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

# The server needs a moment to listen; retry the client instead of sleeping a fixed time.
json=""
for _ in $(seq 1 50); do
  if json="$(iperf3 -c 127.0.0.1 -p "$port" -t "$seconds" -J 2>/dev/null)"; then
    break
  fi
  json=""
  sleep 0.1
done
if [[ -z "$json" ]]; then
  echo "iperf3_loopback: no iperf3 server answered on 127.0.0.1:$port" >&2
  exit 1
fi

python3 -c '
import json, sys
result = json.loads(sys.stdin.read())
if "error" in result:
    sys.exit("iperf3_loopback: " + result["error"])
print("iperf3 GBps=%.2f" % (result["end"]["sum_received"]["bits_per_second"] / 8 / 1e9))
' <<<"$json"
wait "$server" 2>/dev/null || true

#!/usr/bin/env bash
# Churn benchmark: the scenario of tests/slow/churn.sh (CLIENTS client processes over TCP to one
# aggregator on 127.0.0.1; clients SIGKILLed, or frozen and replaced while their connection is
# still open, and restarted with the same --id at random while the run goes on), with a longer
# churn, once per schedule. For each it prints: versions/s before and during the churn, the
# kills and restarts, the time from a client's re-registration to its first task, how the
# counters add up, the aggregator's fd and RSS slopes over the churn (fds/min, KiB/min), and the
# memory the client processes take. It reports the test's thresholds as REPORT lines; it fails
# (after running every schedule) only when a run does not complete, or the clients do not fit in
# memory (the test's guard, which stops before the OOM killer would).
#   bench/churn.sh FLOTILLA [CLIENTS] [CHURN_SECONDS] [SCHEDULES]   default 100, 300, "async buffered"
set -euo pipefail
FLOTILLA=${1:?usage: $0 FLOTILLA [CLIENTS] [CHURN_SECONDS] [SCHEDULES]}
CLIENTS=${2:-100}
CHURN_SECONDS=${3:-300}
SCHEDULES=${4:-async buffered}
TEST="$(dirname "$0")/../tests/slow/churn.sh"
status=0
for schedule in $SCHEDULES; do
  echo "== churn: $CLIENTS client processes, schedule $schedule, ${CHURN_SECONDS} s of churn"
  start=$SECONDS
  rc=0
  CHURN_REPORT_ONLY=1 CHURN_CLIENTS=$CLIENTS CHURN_SECONDS=$CHURN_SECONDS CHURN_SCHEDULE=$schedule \
    bash "$TEST" "$FLOTILLA" || rc=$?
  echo "== churn ($schedule): $((SECONDS - start)) s in all$([ "$rc" -eq 0 ] || echo ", FAILED (exit $rc)")"
  status=$((status | rc))
done
exit "$status"

#!/usr/bin/env bash
# The asynchronous schedules end to end, over TCP: async (FedAsync) and buffered (FedBuff) each
# complete, print a line per version and a summary, and learn; buffered on a fleet whose devices
# drop a third of their tasks still finishes (lost tasks are given up on, never waited for);
# a strategy that declares it needs a cohort per version is refused under async with the reason.
source "$(dirname "$0")/lib.bash"

run() {  # run NAME AGGREGATOR_KEYS [RUN_KEYS] [EXTRA_TOML]
  local name=$1 keys=$2 run_keys=${3:-} extra=${4:-}
  local port; port=$(free_port)
  sed "s/PORT/$port/; s/rounds = 4/rounds = 3/; s/^min-updates = 2/min-updates = 1/" \
    "$(dirname "$0")/lib_config.toml" > "$WORK/$name.toml"
  printf '%b\n' "$keys" | sed -i "/^\[aggregator\]/r /dev/stdin" "$WORK/$name.toml"
  [ -z "$run_keys" ] || printf '%b\n' "$run_keys" | sed -i "/^\[run\]/r /dev/stdin" "$WORK/$name.toml"
  printf '%b\n' "$extra" >> "$WORK/$name.toml"
  timeout 300 "$FLOTILLA" --log-level warn run "$WORK/$name.toml" --output "$WORK/$name" \
    > "$WORK/$name.out" 2> "$WORK/$name.err" \
    || { cat "$WORK/$name.toml" "$WORK/$name.out" "$WORK/$name.err"; fail "$name: exited non-zero"; }
  cat "$WORK/$name.out"
}

check() {  # check NAME VERSIONS [stale]: every version reported, the last evaluated, accuracy rose
  python3 - "$WORK/$1/rounds.csv" "$2" "${3:-}" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
versions = int(sys.argv[2])
produced = sorted(int(r["model_version"]) for r in rows if int(r["updates"]) > 0)
assert produced == list(range(1, versions + 1)), f"versions reported: {produced}"
acc = {int(r["model_version"]): float(r["eval_accuracy"]) for r in rows if r["eval_accuracy"]}
assert 0 in acc and versions in acc, f"initial and last version evaluated: {sorted(acc)}"
assert acc[versions] > acc[0] + 0.25, f"accuracy did not rise: {acc}"
if sys.argv[3] == "stale":
    assert any(float(r["staleness_max"]) > 0 for r in rows), "no update was ever stale: not async"
PY
}

# async: 3 clients' work of 3 rounds = 9 versions, each update mixed in on arrival.
run async 'schedule = "async"\nalpha = 0.8'
[ "$(grep -c '^version ' "$WORK/async.out")" -eq 10 ] || fail "async: expected 10 progress lines (versions 0-9)"
grep -q "^done: 9 versions (0 failed), model version 9" "$WORK/async.out" || fail "async: no summary"
check async 9 stale
echo "ok: async"

# buffered: K = 2, 4 versions; every device drops a third of its tasks, which are given up on
# after 2 s, and the run still finishes.
run buffered 'schedule = "buffered"\nbuffer-size = 2\ntask-deadline = "2s"' 'versions = 4' \
  '[[fleet.profile]]\nname = "flaky"\ndropout = 0.34'
grep -q "^done: 4 versions (0 failed), model version 4" "$WORK/buffered.out" || fail "buffered: no summary"
grep -Eq "tasks sent, [1-9][0-9]* lost" "$WORK/buffered.out" || fail "buffered: no task was lost to a dropout"
check buffered 4
echo "ok: buffered with dropouts"

# async with a robust rule (declares it needs a cohort): refused at startup, naming the way out.
PORT=$(free_port)
sed "s/PORT/$PORT/" "$(dirname "$0")/lib_config.toml" > "$WORK/krum.toml"
printf 'schedule = "async"\nstrategy = "median"\n' | sed -i "/^\[aggregator\]/r /dev/stdin" "$WORK/krum.toml"
code=0
timeout 120 "$FLOTILLA" run "$WORK/krum.toml" > /dev/null 2> "$WORK/krum.err" || code=$?
[ "$code" -ne 0 ] && [ "$code" -ne 124 ] || fail "async + median was not refused (exit $code)"
grep -q "needs many updates per version" "$WORK/krum.err" || { cat "$WORK/krum.err"; fail "no reason given"; }
echo "ok: $(grep -m1 "needs many" "$WORK/krum.err")"
echo "PASS"

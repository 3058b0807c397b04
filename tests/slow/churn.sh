#!/usr/bin/env bash
# Churn: 100 client processes over TCP to one aggregator (and an evaluator) on 127.0.0.1 under the
# async schedule, with clients going at random while the run goes on, every 0.3-1 s one (whose
# process has registered): most are killed (SIGKILL) and restarted with the same --id 0.2-4 s later, some only after 12-20 s (longer
# than aggregator.peer-timeout, so they were set aside), and some are frozen (SIGSTOP) with their
# connection still open while a new process starts with the same id, so that the new connection
# has to take over the routing id "client-N" (the frozen one is SIGKILLed once the new one has
# registered). A restarted
# process loads the data again before it connects (~20 s on 2 busy cores). Checks:
#  - the run continues and ends normally: versions keep coming during the churn (no gap as long as
#    aggregator.task-deadline), the model learns, the aggregator exits 0, so does every client's
#    last process and the evaluator;
#  - nothing accepted is lost (counters add up): versions produced == accepted updates, no fold
#    failed, rounds.csv has one row per version 1..V and its `updates` add up to the accepted
#    count, and every task sent was accepted, rejected, lost at its deadline or still out at the end;
#  - rejoining clients get current work: every restarted process that lives 90 s registers
#    again (and the aggregator logs "re-registered client client-N"), gets a task within
#    task-deadline + 10 s, and that task's base version (from the rounds.csv row its update
#    produced: model_version - 1 - staleness) is at least the version its Welcome carried;
#  - no fd or memory growth in the aggregator: its /proc/PID/fd count, TCP connections and VmRSS
#    are sampled every second and the least-squares slopes over the churn (after a 20 s warm-up)
#    printed (all fds move with the clients coming and going); its fds other than TCP connections
#    may not grow by 3 or more over the churn, and with every client connected it must hold the
#    same fds (within 3) after the churn as before; its RSS may not grow by 32 MiB over the churn.
# The clients start in batches, each only if the rest will fit in memory (from what the running
# ones take): it fails, saying so with the figures, rather than letting the OOM killer loose. It
# prints the memory the client processes take (RSS, and PSS, which counts shared pages once).
# Knobs (environment; bench/churn.sh sets them): CHURN_CLIENTS (100), CHURN_SECONDS (150, the
# churn's length), CHURN_SCHEDULE (async | buffered), CHURN_CONCURRENCY (max-concurrency; a third
# of the clients), CHURN_BATCH (10 clients started at once), CHURN_SEED (1), CHURN_REPORT_ONLY (0;
# 1: print the figures and what would fail, and fail only if the run itself did not complete),
# CHURN_KEEP (a directory to copy the run's logs, rounds.csv and samples to), CHURN_HOSTILE (0;
# 1: a hostile peer, tests/protocol/hostile_peer.cpp, sends garbage under a new id every 50 ms
# all along: the malformed messages must then be counted, warned about at most every 5 s, and
# everything else hold the same).
#   bash tests/slow/churn.sh PATH/TO/flotilla
source "$(dirname "$0")/../e2e/lib.bash"

CLIENTS=${CHURN_CLIENTS:-100}
CHURN_SECONDS=${CHURN_SECONDS:-150}
SCHEDULE=${CHURN_SCHEDULE:-async}
CONC=${CHURN_CONCURRENCY:-$(((CLIENTS + 2) / 3))}
BATCH=${CHURN_BATCH:-10}
SEED=${CHURN_SEED:-1}
REPORT_ONLY=${CHURN_REPORT_ONLY:-0}
HOSTILE=${CHURN_HOSTILE:-0}
HOSTILE_PID=""
CALM_SECONDS=10      # the run without churn first: throughput and fds with everyone connected
MAX_DOWN=10          # clients down (killed, not restarted yet) at most at once
TASK_DEADLINE=5      # aggregator.task-deadline, s
PEER_TIMEOUT=10      # aggregator.peer-timeout, s
BUFFER=8             # buffered: aggregator.buffer-size
# The run ends on run.max-time: the calm phase, the churn, and 90 s for the clients still down
# at the end of the churn to come back (loading the data takes a restarted process ~20 s on 2
# busy cores) and every client to be connected again.
RUN_SECONDS=$((CALM_SECONDS + CHURN_SECONDS + 90))
START_TIME=$SECONDS

PORT=$(free_port)
EP="tcp://127.0.0.1:$PORT"
CONF="$WORK/run.toml"
mkdir -p "$WORK/clients"
{
  cat <<TOML
[run]
name = "churn"
seed = $SEED
versions = 1000000000
max-time = "${RUN_SECONDS}s"
threads = 1
[data]
clients = $CLIENTS
[model]
name = "mlp"
hidden = 32
[training]
local-steps = 2
batch-size = 16
learning-rate = 0.05
[aggregator]
listen = "$EP"
schedule = "$SCHEDULE"
max-concurrency = $CONC
task-deadline = "${TASK_DEADLINE}s"
peer-timeout = "${PEER_TIMEOUT}s"
min-clients = $CLIENTS
registration-timeout = "900s"
evaluate-every = 1000000000
evaluate-every-time = "15s"
evaluation-timeout = "30s"
TOML
  [ "$SCHEDULE" != buffered ] || echo "buffer-size = $BUFFER"
  cat <<TOML
[client]
heartbeat-interval = "1s"
connect-timeout = "120s"
[evaluator]
examples = 2000
TOML
} > "$CONF"

# What the run did, for the analysis: "EPOCH EVENT ID INCARNATION PID" per line.
CHURN_LOG="$WORK/churn.log"
: > "$CHURN_LOG"
declare -A CPID=() INC=() DUE=() FROZEN=() FROZEN_BY=() FROZEN_ID=()
STOPPED=()   # frozen processes: TERM (lib.bash's cleanup) does not reach them, KILL does
on_exit() {
  for p in "${STOPPED[@]:-}"; do [ -z "$p" ] || kill -9 "$p" 2>/dev/null || true; done
  # CHURN_KEEP=DIR keeps the logs, rounds.csv and samples of the run (they go with $WORK).
  [ -z "${CHURN_KEEP:-}" ] || { mkdir -p "$CHURN_KEEP" && cp -r "$WORK"/. "$CHURN_KEEP"/; }
  cleanup
}
trap on_exit EXIT
now() { NOW=$((${EPOCHREALTIME//[.,]/} / 1000)); }   # ms
event() { echo "$EPOCHREALTIME $1 $2 $3 $4" >> "$CHURN_LOG"; }
track() {  # the processes to clean up and to sample: the aggregator, the evaluator, the clients
  PIDS=("$AGG" "$EVAL" "$SAMPLER" "${CPID[@]}" "${STOPPED[@]:-}" $HOSTILE_PID)
  printf '%s\n' "${CPID[@]}" "${STOPPED[@]:-}" > "$WORK/clients.pids.new"
  mv "$WORK/clients.pids.new" "$WORK/clients.pids"
}
start_client() {  # start_client ID: its next incarnation, logging at debug (one line per task)
  local id=$1
  INC[$id]=$((${INC[$id]:--1} + 1))
  "$FLOTILLA" --log-level debug client "$CONF" --id "$id" --connect "$EP" \
    > /dev/null 2> "$WORK/clients/$id.${INC[$id]}.err" &
  CPID[$id]=$!
  event start "$id" "${INC[$id]}" "${CPID[$id]}"
}
reap() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
registered() {  # registered ID...: how many of these clients' current processes registered
  local n=0 id
  for id in "$@"; do
    grep -q "registered with the aggregator" "$WORK/clients/$id.${INC[$id]}.err" 2>/dev/null && n=$((n + 1))
  done
  echo "$n"
}
last_sample() { tail -n 1 "$WORK/samples.txt" 2>/dev/null || true; }

# Samples every second: the aggregator's fds, its TCP connections on the port (ESTABLISHED or
# CLOSE_WAIT: fds minus connections is what must stay flat), its RSS and threads; the clients'
# RSS; the machine's MemAvailable. The clients' PSS (it walks page tables: seconds for 100
# processes on a busy machine) is summed by a thread of its own into pss.txt.
cat > "$WORK/sample.py" <<'PY'
import os, sys, threading, time
agg, port, pidfile, out, pss_out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
def field(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0
def pids():
    try:
        return [int(p) for p in open(pidfile).read().split()]
    except (OSError, ValueError):
        return []
def connections():  # the aggregator's side of its TCP connections (it is the only listener on port)
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in open(table).readlines()[1:]:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] in ("01", "08"):
                    n += 1
        except OSError:
            pass
    return n
def pss_loop():
    with open(pss_out, "w", buffering=1) as o:
        while os.path.exists(f"/proc/{agg}"):
            t, total, n = time.time(), 0, 0
            for p in pids():
                try:
                    total += field(f"/proc/{p}/smaps_rollup", "Pss:")
                    n += 1
                except OSError:
                    pass
            o.write(f"{t:.3f} {n} {total}\n")
            time.sleep(5)
threading.Thread(target=pss_loop, daemon=True).start()
def threads_loop():  # the aggregator's threads twice a second: what each is doing, if it stalls
    with open(os.path.join(os.path.dirname(out), "threads.txt"), "w", buffering=1) as o:
        while os.path.exists(f"/proc/{agg}"):
            t = time.time()
            try:
                tids = os.listdir(f"/proc/{agg}/task")
            except OSError:
                break
            for tid in tids:
                try:
                    stat = open(f"/proc/{agg}/task/{tid}/stat").read()
                    name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
                    wchan = open(f"/proc/{agg}/task/{tid}/wchan").read().strip() or "-"
                except (OSError, ValueError):
                    continue
                # state, CPU ticks (utime + stime)
                o.write(f"{t:.3f} {tid} {name.replace(' ', '_')} {rest[0]} {wchan} {int(rest[11]) + int(rest[12])}\n")
            time.sleep(max(0.0, 0.5 - (time.time() - t)))
threading.Thread(target=threads_loop, daemon=True).start()
with open(out, "w", buffering=1) as o:
    while os.path.exists(f"/proc/{agg}"):
        t = time.time()
        try:
            fds = len(os.listdir(f"/proc/{agg}/fd"))
            rss = field(f"/proc/{agg}/status", "VmRSS:")
            threads = field(f"/proc/{agg}/status", "Threads:")
        except OSError:
            break
        crss, alive = 0, 0
        for p in pids():
            try:
                crss += int(open(f"/proc/{p}/statm").read().split()[1]) * page_kb
                alive += 1
            except (OSError, ValueError, IndexError):
                pass
        avail = field("/proc/meminfo", "MemAvailable:")
        o.write(f"{t:.3f} {fds} {rss} {threads} {alive} {crss} {connections()} {avail}\n")
        time.sleep(max(0.0, 1.0 - (time.time() - t)))
PY

"$FLOTILLA" --log-level info aggregator "$CONF" --output "$WORK/out" \
  > "$WORK/aggregator.out" 2> "$WORK/aggregator.err" &
AGG=$!
"$FLOTILLA" evaluator "$CONF" --connect "$EP" > /dev/null 2> "$WORK/evaluator.err" &
EVAL=$!
: > "$WORK/clients.pids"
python3 "$WORK/sample.py" "$AGG" "$PORT" "$WORK/clients.pids" "$WORK/samples.txt" "$WORK/pss.txt" &
SAMPLER=$!
if [ "$HOSTILE" = 1 ]; then
  HOSTILE_BIN="$(dirname "$FLOTILLA")/hostile_peer"
  [ -x "$HOSTILE_BIN" ] || fail "no hostile_peer next to $FLOTILLA"
  "$HOSTILE_BIN" --connect "$EP" --interval-ms 50 --seed "$SEED" > "$WORK/hostile.out" 2>&1 &
  HOSTILE_PID=$!
fi
track
echo "churn: $CLIENTS clients, schedule $SCHEDULE, max-concurrency $CONC, on $EP; work dir $WORK" \
  "$([ "$HOSTILE" = 1 ] && echo "; a hostile peer sends garbage all along")"

# Whether the clients still to start fit in memory, from what each running one takes for itself
# (its private pages, USS: what one more process adds, the shared libraries' pages being resident
# already; PSS would charge each of the first few a large share of LibTorch's) and what loading
# took them above that (VmHWM - VmRSS), plus room for a batch (two at least) loading at once and
# 1.5 GiB to spare. Prints the figures; fails rather than letting
# the kernel's OOM killer pick processes on a shared machine.
fits() {  # fits BATCH REMAINING
  python3 - "$1" "$2" "$WORK/clients.pids" <<'PY'
import sys
batch, remaining, pidfile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def status(path, keys):
    out = {}
    for line in open(path):
        k = line.split(":")[0]
        if k in keys:
            out[k] = int(line.split()[1])
    return out
pss, uss, extra = [], [], [0]
for p in open(pidfile).read().split():
    try:
        r = status(f"/proc/{p}/smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty"))
        st = status(f"/proc/{p}/status", ("VmHWM", "VmRSS"))
    except OSError:
        continue
    pss.append(r["Pss"]); uss.append(r["Private_Clean"] + r["Private_Dirty"])
    extra.append(st["VmHWM"] - st["VmRSS"])
avail = status("/proc/meminfo", ("MemAvailable",))["MemAvailable"]
each = sum(uss) / len(uss) if uss else 0
need = remaining * each + max(batch, 2) * max(extra) + 1.5 * 2**20
mib = lambda kb: f"{kb / 1024:.0f} MiB"
print(f"  memory: {len(pss)} client processes take {mib(sum(pss))} (PSS; {mib(each)} each of their own, "
      f"USS), loading took up to {mib(max(extra))} more each; the {remaining} still to start need "
      f"~{mib(need)}; MemAvailable {mib(avail)}")
if uss and need > avail:
    print(f"FAIL: {len(pss) + remaining} client processes do not fit in this machine's memory: "
          f"~{mib(each)} each is its own (USS: mostly LibTorch's relocated data, ~57 MiB in any process "
          f"that loads it), so the {remaining} still to start need ~{mib(need)} and {mib(avail)} is available")
    sys.exit(1)
PY
}

# Start the clients in batches (each reads the whole training set, ~250 MiB at its peak, before
# keeping its share), each batch once the one before has registered and if the rest fit in memory.
for ((first = 0; first < CLIENTS; first += BATCH)); do
  ids=($(seq "$first" $((first + BATCH < CLIENTS ? first + BATCH - 1 : CLIENTS - 1))))
  fits "${#ids[@]}" $((CLIENTS - first)) || exit 1
  for id in "${ids[@]}"; do start_client "$id"; done
  track
  deadline=$((SECONDS + 180))
  while [ "$(registered "${ids[@]}")" -lt "${#ids[@]}" ]; do
    kill -0 "$AGG" 2>/dev/null || { cat "$WORK/aggregator.err"; fail "the aggregator exited during startup"; }
    [ "$SECONDS" -lt "$deadline" ] || fail "clients ${ids[0]}-${ids[-1]} did not register within 180 s"
    sleep 0.5
  done
  read -r _ _ _ _ _ crss _ avail <<< "$(last_sample)"
  echo "  clients 0-${ids[-1]} registered after $((SECONDS - START_TIME)) s: clients' RSS" \
       "$((${crss:-0} / 1024)) MiB in all, MemAvailable $((${avail:-0} / 1024)) MiB"
done
event running - - -
echo "churn: all $CLIENTS clients registered after $((SECONDS - START_TIME)) s; the run started"
sleep "$CALM_SECONDS"

# The churn: every 0.3-1 s one client (chosen at random among those whose current process has
# registered, unless MAX_DOWN are down) goes: 6 in 10 are killed and restarted after 0.2-4 s, 2
# in 10 killed and restarted after 12-20 s (longer than peer-timeout), 2 in 10 frozen and a new
# process started at once; a frozen one is killed 2 s after its replacement registered (over the
# routing id its connection still held), or after 120 s.
RANDOM=$SEED
kills=0 lingers=0 long=0
event churn - - -
now; CHURN_END=$((NOW + CHURN_SECONDS * 1000))
while now && [ "$NOW" -lt "$CHURN_END" ]; do
  kill -0 "$AGG" 2>/dev/null || break
  sleep "0.$((300 + RANDOM % 700))"
  now
  for id in "${!DUE[@]}"; do
    if [ "${DUE[$id]}" -le "$NOW" ]; then unset "DUE[$id]"; start_client "$id"; fi
  done
  for p in "${!FROZEN[@]}"; do
    # FROZEN: when to kill it at the latest; FROZEN_BY: 1 once its replacement (FROZEN_ID) registered.
    if [ "${FROZEN_BY[$p]:-0}" = 0 ] && [ "$(registered "${FROZEN_ID[$p]}")" -eq 1 ]; then
      FROZEN_BY[$p]=1; FROZEN[$p]=$((NOW + 2000))
    fi
    if [ "${FROZEN[$p]}" -le "$NOW" ]; then
      unset "FROZEN[$p]" "FROZEN_BY[$p]" "FROZEN_ID[$p]"; reap "$p"; event reap-frozen - - "$p"
      for i in "${!STOPPED[@]}"; do [ "${STOPPED[$i]}" != "$p" ] || unset "STOPPED[$i]"; done
      STOPPED=("${STOPPED[@]:-}")
    fi
  done
  id=$((RANDOM % CLIENTS)) r=$((RANDOM % 10))
  # Only a client whose current process has registered goes (not one still loading its data).
  if [ "${#DUE[@]}" -lt "$MAX_DOWN" ] && [ -z "${DUE[$id]+x}" ] && [ "$(registered "$id")" -eq 1 ]; then
    pid=${CPID[$id]}
    if [ "$r" -lt 2 ]; then
      kill -STOP "$pid" 2>/dev/null || true
      event freeze "$id" "${INC[$id]}" "$pid"
      STOPPED+=("$pid"); FROZEN[$pid]=$((NOW + 120000)) FROZEN_ID[$pid]=$id; lingers=$((lingers + 1))
      start_client "$id"
    else
      reap "$pid"
      event kill "$id" "${INC[$id]}" "$pid"
      kills=$((kills + 1))
      if [ "$r" -lt 4 ]; then
        DUE[$id]=$((NOW + 12000 + RANDOM % 8000)); long=$((long + 1))
      else
        DUE[$id]=$((NOW + 200 + RANDOM % 3800))
      fi
    fi
  fi
  track
done
event churn-end - - -
echo "churn: $((kills + lingers)) clients went in ${CHURN_SECONDS} s: $kills killed ($long of them" \
     "back only after ${PEER_TIMEOUT}+ s), $lingers frozen and replaced while their connection was open"

# Everyone back: restart the clients still down, kill the frozen ones, wait for all to register.
for id in "${!DUE[@]}"; do unset "DUE[$id]"; start_client "$id"; done
for p in "${!FROZEN[@]}"; do unset "FROZEN[$p]"; reap "$p"; event reap-frozen - - "$p"; done
FROZEN_BY=() FROZEN_ID=()
STOPPED=()
track
deadline=$((SECONDS + 80))
until [ "$(registered $(seq 0 $((CLIENTS - 1))))" -eq "$CLIENTS" ] || [ "$SECONDS" -ge "$deadline" ]; do
  kill -0 "$AGG" 2>/dev/null || break
  sleep 0.5
done
event all-back - - -
echo "churn: $(registered $(seq 0 $((CLIENTS - 1))))/$CLIENTS clients registered again" \
     "$((SECONDS - START_TIME)) s after the start"
sleep 3
event all-back-settled - - -

# The run ends at run.max-time; then every last client process is told to shut down.
status=0
deadline=$((SECONDS + RUN_SECONDS + 120))
while kill -0 "$AGG" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
if [ -n "$HOSTILE_PID" ]; then kill -TERM "$HOSTILE_PID" 2>/dev/null || true; wait "$HOSTILE_PID" || true; fi
kill -0 "$AGG" 2>/dev/null && fail "the aggregator did not finish in time"
wait "$AGG" || status=$?
event finished - - -
grep -v '^version ' "$WORK/aggregator.out" || true
[ "$status" -eq 0 ] || { tail -20 "$WORK/aggregator.err"; fail "the aggregator exited $status"; }
deadline=$((SECONDS + 60))
: > "$WORK/last_exit.txt"
for id in "${!CPID[@]}" evaluator; do
  pid=${CPID[$id]:-$EVAL}
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$id ${INC[$id]:-0} still-running" >> "$WORK/last_exit.txt"; reap "$pid"
  else
    rc=0; wait "$pid" || rc=$?
    echo "$id ${INC[$id]:-0} $rc" >> "$WORK/last_exit.txt"
  fi
done
wait "$SAMPLER" || true

python3 - "$WORK" "$CLIENTS" "$SCHEDULE" "$CONC" "$TASK_DEADLINE" "$BUFFER" "$REPORT_ONLY" \
  "$((SECONDS - START_TIME))" "$HOSTILE" <<'PY'
import csv, os, re, sys, time
work, clients, schedule, conc, task_deadline, buffer_size, report_only, wall, hostile = sys.argv[1:10]
hostile = hostile == "1"
clients, conc, task_deadline, buffer_size, wall = int(clients), int(conc), float(task_deadline), int(buffer_size), int(wall)
report_only = report_only == "1"
problems = []
def check(ok, what):
    if not ok:
        problems.append(what)
        print("  NOT OK:", what)

def sod(epoch):  # seconds of the day, local time, as the logs print it
    lt = time.localtime(epoch)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (epoch % 1)

# --- what the script did
events = []
for line in open(os.path.join(work, "churn.log")):
    t, ev, cid, inc, pid = line.split()
    events.append((float(t), ev, cid, inc, pid))
mark = {ev: t for t, ev, *_ in events if ev in ("running", "churn", "churn-end", "all-back", "all-back-settled", "finished")}
started = {}   # (id, inc) -> start time
ended = {}     # (id, inc) -> time it was killed or frozen
for t, ev, cid, inc, pid in events:
    if ev == "start":
        started[(int(cid), int(inc))] = t
    elif ev in ("kill", "freeze"):
        ended[(int(cid), int(inc))] = t
kills = sum(1 for e in events if e[1] == "kill")
# Frozen processes (id, incarnation, pid, time) and when each was killed: the replacement took
# over the routing id while the old connection was open if it registered before that.
frozen = [(int(cid), int(inc), pid, t) for t, ev, cid, inc, pid in events if ev == "freeze"]
reaped = {pid: t for t, ev, cid, inc, pid in events if ev == "reap-frozen"}
freezes = sum(1 for e in events if e[1] == "freeze")
restarts = sum(1 for k in started if k[1] > 0)

# --- the aggregator's summary and rounds.csv
out = open(os.path.join(work, "aggregator.out")).read()
m = re.search(r"^done: (\d+) versions \((\d+) failed\), model version (\d+), ([\d.]+)s; updates: "
              r"(\d+) accepted, (\d+) late, (\d+) rejected, (\d+) malformed messages", out, re.M)
if not m:
    print(out[-3000:])
    sys.exit("FAIL: no summary line from the aggregator")
produced, failed, version, run_s, accepted, late, rejected, malformed = (
    int(m.group(i)) if i != 4 else float(m.group(i)) for i in range(1, 9))
m = re.search(r"(\d+) tasks sent, (\d+) lost", out)
tasks_sent, tasks_lost = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
reasons = re.search(r"^updates dropped by reason: (.*)$", out, re.M)
acc = re.search(r"^final accuracy ([\d.]+)%", out, re.M)
rows = list(csv.DictReader(open(os.path.join(work, "out", "rounds.csv"))))
vrows = [r for r in rows if int(r["updates"]) > 0]
evals = [(int(r["model_version"]), float(r["eval_accuracy"])) for r in rows if r["eval_accuracy"]]
agg_log = open(os.path.join(work, "aggregator.err"), errors="replace").read()
def count(pattern):
    return len(re.findall(pattern, agg_log, re.M))

print(f"run: {produced} versions ({failed} failed), model version {version}, {run_s:.1f} s; "
      f"updates {accepted} accepted, {late} late, {rejected} rejected, {malformed} malformed; "
      f"tasks {tasks_sent} sent, {tasks_lost} lost" + (f"; dropped: {reasons.group(1)}" if reasons else ""))
print(f"churn: {kills} SIGKILLs, {freezes} frozen-and-replaced, {restarts} restarts; aggregator log: "
      f"{count(r're-registered client client-')} re-registered, {count(r'considered gone')} set aside "
      f"(peer-timeout), {count(r'sent no update for task')} tasks lost, {count(r' is back$')} back, "
      f"{count(r'late update from')} late, {count(r'rejected update from')} rejected, "
      f"{count(r'dropped a message')} dropped messages")
if evals:
    print(f"evaluated: version {evals[0][0]} {100*evals[0][1]:.2f}% ... version {evals[-1][0]} {100*evals[-1][1]:.2f}% "
          f"({len(evals)} evaluations)")

# --- the run continues
print("checks:")
t_run = [float(r["elapsed_seconds"]) for r in vrows]
churn_from = mark["churn"] - mark["running"]
churn_to = mark["churn-end"] - mark["running"]
in_churn = sorted(t for t in t_run if churn_from <= t <= churn_to)
gaps = [b - a for a, b in zip(in_churn, in_churn[1:])]
calm = [t for t in t_run if 0 < t < churn_from]
print(f"  versions/s: {len(calm) / max(churn_from, 1e-9):.1f} before the churn, "
      f"{len(in_churn) / max(churn_to - churn_from, 1e-9):.1f} during it; longest gap between versions "
      f"during the churn {max(gaps, default=float('nan')):.2f} s")
check(len(in_churn) > 0, "no version was produced during the churn")
check(max(gaps, default=0) < task_deadline, f"versions stalled for {max(gaps, default=0):.1f} s during the churn")
if gaps and max(gaps) >= task_deadline:
    # What the aggregator's threads did in the longest gap: states seen (R running, S sleeping,
    # D in the kernel uninterruptibly), their commonest kernel wait, and the CPU they got.
    k = gaps.index(max(gaps))
    g0, g1 = mark["running"] + in_churn[k], mark["running"] + in_churn[k + 1]
    seen = {}
    for line in open(os.path.join(work, "threads.txt")):
        f = line.split()
        if len(f) == 6 and g0 <= float(f[0]) <= g1:
            e = seen.setdefault(f[1], {"name": f[2], "states": {}, "wchan": {}, "cpu": []})
            e["states"][f[3]] = e["states"].get(f[3], 0) + 1
            e["wchan"][f[4]] = e["wchan"].get(f[4], 0) + 1
            e["cpu"].append(int(f[5]))
    hz = os.sysconf("SC_CLK_TCK")
    print(f"  the aggregator's threads in that gap ({g1 - g0:.1f} s): thread: states, commonest wait, CPU")
    for tid, e in sorted(seen.items(), key=lambda kv: kv[1]["name"]):
        cpu = (max(e["cpu"]) - min(e["cpu"])) / hz
        print(f"    {e['name']} ({tid}): {' '.join(f'{s}x{n}' for s, n in sorted(e['states'].items()))}, "
              f"{max(e['wchan'], key=e['wchan'].get)}, {cpu:.2f} s")
exits = [line.split() for line in open(os.path.join(work, "last_exit.txt"))]
bad = [e for e in exits if e[2] != "0"]
check(not bad, f"last processes that did not exit 0 (id incarnation rc): {bad[:10]}")
check(len(evals) >= 2 and evals[-1][1] > evals[0][1] + 0.2,
      f"the model did not learn through the churn: {evals[:1]} -> {evals[-1:]}")

# --- counters add up
check(failed == 0, f"{failed} versions failed")
if hostile:
    sent = open(os.path.join(work, "hostile.out")).read().strip()
    print(f"hostile: {sent}; the aggregator counted {malformed} malformed messages")
    check(malformed > 0, "a hostile peer sent garbage all along, and no malformed message was counted")
    # Counted every one, said at most every 5 s (the log is not the hostile peer's to fill).
    said = [int(h) * 3600 + int(m) * 60 + float(sec) for h, m, sec in re.findall(
        r"^\[(\d\d):(\d\d):([\d.]+)\] warning \[aggregator\] dropped a message", agg_log, re.M)]
    closest = min(((b - a) % 86400 for a, b in zip(said, said[1:])), default=None)
    print(f"  warnings about dropped messages: {len(said)}"
          + (f", at least {closest:.2f} s apart" if closest is not None else ""))
    check(len(said) >= 1, "the aggregator never said it dropped a hostile peer's messages")
    # The throttle keeps steady time and the log's stamps are taken a moment later: a little slack.
    check(closest is None or closest >= 4.9,
          f"two warnings about dropped messages {closest:.2f} s apart (at most one per 5 s expected)")
else:
    check(malformed == 0, f"{malformed} malformed messages")
versions_in_csv = sorted(int(r["model_version"]) for r in vrows)
check(versions_in_csv == list(range(1, version + 1)),
      f"rounds.csv: versions {versions_in_csv[:3]}...{versions_in_csv[-3:]} ({len(versions_in_csv)}), not 1..{version}")
csv_updates = sum(int(r["updates"]) for r in vrows)
if schedule == "async":
    check(produced - failed == accepted and version == accepted,
          f"versions produced ({produced - failed}, model version {version}) != accepted updates ({accepted})")
    check(csv_updates == accepted, f"rounds.csv updates add up to {csv_updates}, not {accepted}")
    check(all(int(r["updates"]) == 1 for r in vrows), "an async version made of more than one update")
else:
    leftover = accepted - version * buffer_size
    print(f"  buffered: {version} versions x K {buffer_size} = {version * buffer_size} updates applied, "
          f"{leftover} accepted into the last, unfinished buffer")
    check(csv_updates == version * buffer_size, f"rounds.csv updates add up to {csv_updates}, not {version} x {buffer_size}")
    check(0 <= leftover < buffer_size, f"{accepted} accepted but {version} versions of {buffer_size}")
outstanding = tasks_sent - accepted - tasks_lost - rejected
print(f"  tasks: {tasks_sent} sent = {accepted} accepted + {tasks_lost} lost + {rejected} rejected + "
      f"{outstanding} out at the end (their updates late: {late})")
check(0 <= outstanding <= conc, f"tasks do not add up: {outstanding} out at the end (max-concurrency {conc})")

# --- rejoining clients get current work
line_re = re.compile(r"^(?:\x1b\[[0-9;]*m)?\[(\d\d):(\d\d):(\d\d)\.(\d{3})\] (\w+) \[client-\d+\](?:\x1b\[[0-9;]*m)? (.*)$")
reg_lines = {}
for cid in range(clients):
    reg_lines[cid] = len(re.findall(rf"re-registered client client-{cid} ", agg_log))
end_of_run = mark["finished"]
registered_restarts, checked, newer, latencies, stale_base = 0, 0, 0, [], []
held_lat, free_lat, load_times = [], [], []
lost_at = {}  # client id -> times (seconds of the day) the aggregator gave up on one of its tasks
for lm in re.finditer(r"^\[(\d\d):(\d\d):(\d\d)\.(\d{3})\] \w+ \[aggregator\] client-(\d+) sent no update for task", agg_log, re.M):
    lost_at.setdefault(int(lm.group(5)), []).append(
        int(lm.group(1)) * 3600 + int(lm.group(2)) * 60 + int(lm.group(3)) + int(lm.group(4)) / 1000)
never_registered, no_work, killed_early, unverified = [], [], 0, 0
rejoins_by_client = {}
for (cid, inc), t0 in sorted(started.items()):
    if inc == 0:
        continue
    t_end = ended.get((cid, inc), end_of_run)
    path = os.path.join(work, "clients", f"{cid}.{inc}.err")
    reg = task = None
    lines = open(path, errors="replace").readlines() if os.path.exists(path) else []  # killed at once
    for line in lines:
        lm = line_re.match(line.rstrip("\n"))
        if not lm:
            continue
        t = int(lm.group(1)) * 3600 + int(lm.group(2)) * 60 + int(lm.group(3)) + int(lm.group(4)) / 1000
        if t < sod(t0) - 43200:
            t += 86400
        msg = lm.group(6)
        if reg is None:
            r = re.match(r"registered with the aggregator \(run \S+, model version (\d+)\)", msg)
            if r:
                reg = (t, int(r.group(1)))
        elif task is None:
            r = re.match(r"task (\d+): (?:model version (\d+))?", msg)
            if r:
                task = (t, int(r.group(1)), int(r.group(2)) if r.group(2) else None)
    lived = t_end - t0
    if reg is not None:
        load_times.append(reg[0] - sod(t0))
    if reg is None:
        if lived >= 90:
            never_registered.append((cid, inc, round(lived)))
        else:
            killed_early += 1
        continue
    registered_restarts += 1
    rejoins_by_client[cid] = rejoins_by_client.get(cid, 0) + 1
    t_reg_epoch = t0 + (reg[0] - sod(t0))
    if task is None:
        if t_end - t_reg_epoch >= task_deadline + 10 and t_reg_epoch < mark["churn-end"] + 30:
            no_work.append((cid, inc, round(t_end - t_reg_epoch, 1)))
        continue
    latencies.append(task[0] - reg[0])
    # Was the aggregator still holding a task of the killed process when this one registered?
    # (It gives a client no new task while it holds one, until the old one is lost at its deadline.)
    held = any(reg[0] <= t <= task[0] for t in lost_at.get(cid, []))
    (held_lat if held else free_lat).append(task[0] - reg[0])
    # The version the task carried, as the client logged it (rounds.csv's rows are versions, not
    # tasks: a row cannot say which task its update answered).
    base = task[2]
    if base is None:
        unverified += 1
        continue
    checked += 1
    if base >= reg[1]:
        newer += 1
    else:
        stale_base.append((cid, inc, reg[1], base))
latencies.sort(); held_lat.sort(); free_lat.sort(); load_times.sort()
handovers = 0
for cid, inc, pid, t in frozen:
    path = os.path.join(work, "clients", f"{cid}.{inc + 1}.err")
    for line in (open(path, errors="replace") if os.path.exists(path) else []):
        lm = line_re.match(line.rstrip("\n"))
        if lm and lm.group(6).startswith("registered with the aggregator"):
            t_reg = int(lm.group(1)) * 3600 + int(lm.group(2)) * 60 + int(lm.group(3)) + int(lm.group(4)) / 1000
            handovers += t_reg < sod(reaped.get(pid, end_of_run))
            break
def pq(xs, q):
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
pct = lambda q: pq(latencies, q)
print(f"  rejoins: {registered_restarts} of {restarts} restarted processes registered again "
      f"({killed_early} were killed before they could), process start to registration (loading the data "
      f"on a busy machine) median {pq(load_times, 0.5):.1f} s, max {pq(load_times, 1.0):.1f} s; "
      f"{len(latencies)} got a task, registration to first "
      f"task: median {pct(0.5):.2f} s, 90% {pct(0.9):.2f} s, max {pct(1.0):.2f} s")
print(f"  of which {len(held_lat)} rejoined while the aggregator still held the killed process's task "
      f"(first task after median {pq(held_lat, 0.5):.2f} s, max {pq(held_lat, 1.0):.2f} s: once that task was lost "
      f"at task-deadline) and {len(free_lat)} did not (median {pq(free_lat, 0.5):.2f} s, max {pq(free_lat, 1.0):.2f} s)")
if schedule == "async":
    print(f"  rejoins' first task based on a version >= the Welcome's: {newer} of {checked} checked "
          f"({unverified} without the version in their log line, not checked)")
print(f"  frozen and replaced: {handovers} of {len(frozen)} replacements registered while the frozen "
      f"process still held its connection (the routing id taken over)")
check(not frozen or handovers > 0, "no replacement registered while a frozen process held its connection")
check(not never_registered, f"restarted clients that never registered again (id, incarnation, s alive): {never_registered[:10]}")
check(not no_work, f"rejoined clients that got no task (id, incarnation, s since registering): {no_work[:10]}")
check(not stale_base, f"rejoined clients given work older than their Welcome (id, inc, welcome, base): {stale_base[:10]}")
check(schedule != "async" or checked >= registered_restarts // 4,
      f"only {checked} of {registered_restarts} rejoins could be checked")
missing = [(c, n, reg_lines[c]) for c, n in rejoins_by_client.items() if reg_lines[c] < n]
check(not missing, f"rejoins without a 're-registered client' line (id, rejoins, lines): {missing[:10]}")

# --- the aggregator's fds and memory (samples: time, fds, RSS KiB, threads, client processes,
# their RSS KiB, the aggregator's TCP connections, MemAvailable KiB)
samples = [list(map(float, l.split())) for l in open(os.path.join(work, "samples.txt")) if l.strip()]
def slope(points):
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0
def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")
lo, hi = mark["churn"] + 20, mark["churn-end"]
window = [s for s in samples if lo <= s[0] <= hi]
calm = [s for s in samples if mark["running"] + 2 <= s[0] <= mark["churn"]]
settled = [s for s in samples if mark["all-back-settled"] - 2 <= s[0] <= mark["all-back-settled"] + 3]
before, after = median([s[1] for s in calm]), median([s[1] for s in settled])
if len(window) >= 10:
    span = (window[-1][0] - window[0][0]) / 60
    fd_slope = slope([(s[0] / 60, s[1]) for s in window])
    other_slope = slope([(s[0] / 60, s[1] - s[6]) for s in window])  # fds that are not connections
    rss_slope = slope([(s[0] / 60, s[2]) for s in window])
    print(f"  aggregator fds: {before:.0f} with every client connected before the churn "
          f"({median([s[6] for s in calm]):.0f} TCP connections), {after:.0f} after it "
          f"({median([s[6] for s in settled]):.0f}); during it {min(s[1] for s in window):.0f}-"
          f"{max(s[1] for s in window):.0f} as clients come and go; slope over {span:.1f} min "
          f"({len(window)} samples): {fd_slope:+.3f} fds/min ({fd_slope * span:+.2f} in all), fds other than "
          f"connections {min(s[1] - s[6] for s in window):.0f}-{max(s[1] - s[6] for s in window):.0f}, "
          f"{other_slope:+.3f} /min ({other_slope * span:+.2f} in all)")
    print(f"  aggregator RSS: {median([s[2] for s in calm]) / 1024:.1f} MiB before the churn, "
          f"{median([s[2] for s in settled]) / 1024:.1f} MiB after it; during it "
          f"{min(s[2] for s in window) / 1024:.1f}-{max(s[2] for s in window) / 1024:.1f} MiB, slope "
          f"{rss_slope:+.1f} KiB/min ({rss_slope * span / 1024:+.2f} MiB in all); threads "
          f"{min(s[3] for s in window):.0f}-{max(s[3] for s in window):.0f}")
    check(abs(other_slope * span) < 3, f"the aggregator's fds other than connections grew by {other_slope * span:.1f} over the churn")
    check(abs(after - before) <= 3, f"aggregator fds with every client connected: {before:.0f} before the churn, {after:.0f} after")
    # RSS: after the warm-up the aggregator's memory is the model, its folds and the ZeroMQ pipes
    # of connected peers (a few hundred KiB each, freed when a connection goes; glibc keeps freed
    # heaps mapped on purpose, see runtime/net/transport.cpp). 32 MiB over the churn is far above
    # that noise and below what leaking one model (~100 KiB) per version, or 0.3 MiB per kill,
    # would add.
    check(rss_slope * span < 32 * 1024, f"aggregator RSS grew by {rss_slope * span / 1024:.1f} MiB over the churn")
else:
    check(False, f"only {len(window)} samples in the churn window")
pss = [list(map(float, l.split())) for l in open(os.path.join(work, "pss.txt")) if l.strip()]
peak = max(samples, key=lambda s: s[5])
peak_pss = max(pss, key=lambda s: s[2]) if pss else [0, 0, 0]
steady_pss = median([p[2] for p in pss if lo <= p[0] <= hi])
print(f"  clients' memory: peak sum of RSS {peak[5] / 1024:.0f} MiB ({peak[4]:.0f} processes), peak sum of PSS "
      f"{peak_pss[2] / 1024:.0f} MiB ({peak_pss[1]:.0f}); during the churn {median([s[5] for s in window]) / 1024:.0f} "
      f"MiB RSS / {steady_pss / 1024:.0f} MiB PSS in all; MemAvailable at least {min(s[7] for s in samples) / 1024:.0f} MiB")
print(f"wall time {wall} s")
# What the logs say about the clients that did not come back or got no work.
for cid, inc, _ in (never_registered + no_work)[:3]:
    print(f"--- client {cid}, process {inc}: the end of its log")
    print("".join(open(os.path.join(work, "clients", f"{cid}.{inc}.err"), errors="replace").readlines()[-8:]), end="")
    print(f"--- the aggregator's lines about client-{cid}")
    print("".join(l for l in agg_log.splitlines(True) if f"client-{cid} " in l or f"client-{cid}:" in l
                  or l.rstrip().endswith(f"client-{cid}"))[-2000:], end="")
if problems:
    print(("REPORT: " if report_only else "FAIL: ") + "; ".join(problems))
    sys.exit(0 if report_only else 1)
PY
if [ "$REPORT_ONLY" = 1 ]; then echo "done (report only)"; else echo "PASS"; fi

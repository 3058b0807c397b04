#!/usr/bin/env bash
# Mistakes a user makes get one line naming the problem and a non-zero exit code.
source "$(dirname "$0")/lib.bash"
PORT=$(free_port)
sed "s/PORT/$PORT/" "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"

expect_error() {  # expect_error "what" "pattern" command...
  local what=$1 pattern=$2; shift 2
  local code=0
  timeout 120 "$@" > "$WORK/out.txt" 2> "$WORK/err.txt" || code=$?
  [ "$code" -ne 0 ] || fail "$what: exit code 0"
  [ "$code" -ne 124 ] || fail "$what: hung"
  grep -q -- "$pattern" "$WORK/err.txt" || { cat "$WORK/err.txt"; fail "$what: no '$pattern' in stderr"; }
  echo "ok: $what -> $(grep -m1 -- "$pattern" "$WORK/err.txt")"
}

printf '[run]\nrounds = "ten"\n' > "$WORK/bad.toml"
expect_error "bad value" "run.rounds" "$FLOTILLA" run "$WORK/bad.toml"
printf '[aggregator]\nclients-per-rnd = 3\n' > "$WORK/typo.toml"
expect_error "unknown key" "unknown key 'aggregator.clients-per-rnd'" "$FLOTILLA" run "$WORK/typo.toml"
expect_error "missing config" "CONFIG" "$FLOTILLA" run "$WORK/nope.toml"
sed 's|^\[data\]|[data]\npath = "/nonexistent/fashion"|' "$WORK/run.toml" > "$WORK/nodata.toml"
expect_error "unreadable dataset" "/nonexistent/fashion" "$FLOTILLA" run "$WORK/nodata.toml"

# Admin commands never share the clients' endpoint, nor an abstract socket anyone can reach.
expect_error "admin on the clients' endpoint" "is the clients' endpoint" \
  "$FLOTILLA" aggregator "$WORK/run.toml" --admin-listen "tcp://127.0.0.1:$PORT"
expect_error "abstract admin socket" "abstract ipc socket" \
  "$FLOTILLA" aggregator "$WORK/run.toml" --admin-listen "ipc://@flotilla-admin-$PORT"

# A port in use: hold it with a listening socket.
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$PORT)); s.listen(); time.sleep(60)" &
PIDS+=($!)
sleep 0.5
expect_error "port in use" "address already in use" "$FLOTILLA" aggregator "$WORK/run.toml"

# An aggregator nobody runs.
sed 's/connect-timeout = "60s"/connect-timeout = "2s"/' "$WORK/run.toml" > "$WORK/short.toml"
DEAD=$(free_port)
expect_error "unreachable aggregator" "no answer from the aggregator" \
  "$FLOTILLA" client "$WORK/short.toml" --id 0 --connect "tcp://127.0.0.1:$DEAD"
expect_error "client id out of range" "out of range" \
  "$FLOTILLA" client "$WORK/short.toml" --id 7 --connect "tcp://127.0.0.1:$DEAD"
echo "PASS"

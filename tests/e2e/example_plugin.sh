#!/usr/bin/env bash
# The README's "plugin of your own" path: install Flotilla, build examples/plugins/ out of tree
# against the installed header, list it, and run a federation with it (by path, with an option).
source "$(dirname "$0")/lib.bash"
BUILD=$(cd "$(dirname "$FLOTILLA")/.." && pwd)
cmake --install "$BUILD" --prefix "$WORK/prefix" > "$WORK/install.log" || { cat "$WORK/install.log"; fail "install"; }
[ -f "$WORK/prefix/include/flotilla/plugin.h" ] || fail "plugin.h not installed"
ls "$WORK/prefix/lib/flotilla/plugins/flotilla-fedavg.so" > /dev/null || fail "built-in plugins not installed"
cmake -S examples/plugins -B "$WORK/ex" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$WORK/prefix" > "$WORK/ex.log" 2>&1 || { cat "$WORK/ex.log"; fail "configure the example"; }
cmake --build "$WORK/ex" > "$WORK/ex.log" 2>&1 || { cat "$WORK/ex.log"; fail "build the example"; }
"$WORK/prefix/bin/flotilla" plugins list "$WORK/ex" | tee "$WORK/list.out"
grep -q "uniform-mean *aggregator 1.0.0 *ABI 1\.[0-9]" "$WORK/list.out" || fail "plugins list does not show it"
# (Output to a file first: `grep -q` closing a pipe early would fail the pipeline under pipefail.)
"$WORK/prefix/bin/flotilla" plugins list > "$WORK/builtin.out" || fail "plugins list of the built-in plugins failed"
grep -q "fedavg" "$WORK/builtin.out" || fail "the installed CLI does not find the built-in plugins"

sed "s|tcp://127.0.0.1:PORT|inproc://example|; s/rounds = 4/rounds = 3/" "$(dirname "$0")/lib_config.toml" > "$WORK/run.toml"
sed -i "s|^\[aggregator\]|[aggregator]\nstrategy = \"$WORK/ex/flotilla-uniform-mean.so\"|" "$WORK/run.toml"
printf '[aggregator.options]\nmin-updates = 3\n' >> "$WORK/run.toml"
"$WORK/prefix/bin/flotilla" --log-level warn run "$WORK/run.toml" --output "$WORK/out" > "$WORK/run.out" 2> "$WORK/run.err" \
  || { cat "$WORK/run.out" "$WORK/run.err"; fail "the run with the example plugin failed"; }
cat "$WORK/run.out"
python3 - "$WORK/out/rounds.csv" <<'PY'
import csv, sys
acc = {int(r["round"]): float(r["eval_accuracy"]) for r in csv.DictReader(open(sys.argv[1])) if r["eval_accuracy"]}
assert acc[3] > acc[0] + 0.3, f"accuracy did not rise: {acc}"
PY
# A misspelt option is refused at startup, naming it and the plugin's options.
sed -i 's/^min-updates = 3/min-update = 3/' "$WORK/run.toml"
if "$WORK/prefix/bin/flotilla" run "$WORK/run.toml" > /dev/null 2> "$WORK/bad.err"; then fail "a bad option was accepted"; fi
grep -q "unknown option 'min-update' for plugin 'uniform-mean' (its options: min-updates)" "$WORK/bad.err" \
  || { cat "$WORK/bad.err"; fail "no clear error for a bad option"; }
echo "PASS"

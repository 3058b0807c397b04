#!/usr/bin/env bash
# `flotilla experiment` end to end on a tiny text study: a base language model pretrained on a
# file of its own, then two methods (full fine-tuning of up_proj averaged, FedEx-LoRA) with two
# seeds each, judged by held-out perplexity and ROUGE-L. The table, runs.csv, the curves and the
# PNG plots must be there; a second invocation must reuse every finished run; a typo in
# --methods must be refused by name.
source "$(dirname "$0")/lib.bash"
python3 - "$WORK" <<'PY'
import json, random, sys
random.seed(3)
words = ["cat", "dog", "sun", "tree", "blue", "fish", "moon", "star"]
def rec(i):
    w = random.choice(words) + random.choice(words)
    if i % 2 == 0:
        return {"instruction": f"reverse {w}", "response": w[::-1], "category": "reverse"}
    return {"instruction": f"upper {w}", "response": w.upper(), "category": "upper"}
for name, n in (("pretrain", 200), ("finetune", 300)):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as out:
        for i in range(n):
            out.write(json.dumps(rec(i)) + "\n")
PY
cat > "$WORK/study.toml" <<TOML
[experiment]
name = "tiny-text"
seeds = [1, 2]
methods = ["full-up", "fedex-lora"]
metric = "perplexity"
rouge-samples = 4
rouge-max-tokens = 12
[experiment.pretrain]
steps = 30
batch-size = 16
learning-rate = 0.003
data = "$WORK/pretrain.jsonl"
[run]
rounds = 2
threads = 1
[data]
dataset = "instructions"
path = "$WORK/finetune.jsonl"
max-length = 40
clients = 2
held-out = 0.1
[model]
name = "llama"
hidden-size = 32
intermediate-size = 64
layers = 1
heads = 2
kv-heads = 1
max-positions = 64
[training]
optimizer = "adamw"
local-steps = 10
batch-size = 16
learning-rate = 0.003
[lora]
alpha = 16.0
targets = ["up_proj"]
[aggregator]
listen = "inproc://tiny-text"
[evaluator]
examples = 20
[experiment.method.full-up]
model = { trainable = ["up_proj"] }
aggregator = { strategy = "fedavg" }
[experiment.method.fedex-lora]
lora = { rank = 4 }
aggregator = { strategy = "fedex-lora" }
TOML
timeout 300 "$FLOTILLA" experiment "$WORK/study.toml" --output "$WORK/out" > "$WORK/first.out" 2>&1 ||
  { cat "$WORK/first.out"; fail "the study failed"; }
cat "$WORK/first.out"
grep -q "pretrained base: 200 examples" "$WORK/first.out" || fail "no pretraining line"
grep -q "\[####################\] 4/4  fedex-lora seed 2: perplexity" "$WORK/first.out" || fail "no progress line for the last run"
for f in summary.md runs.csv plots.gp curves/full-up.dat curves/fedex-lora.dat metric_by_round.png metric_by_upload.png \
         pretrained.safetensors runs/full-up-s1/config.toml runs/fedex-lora-s2/rounds.csv; do
  [ -s "$WORK/out/$f" ] || fail "$f is missing or empty"
done
python3 - "$WORK/out" <<'PY'
import csv, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/runs.csv")))
assert [(r["method"], r["seed"], r["ok"]) for r in rows] == [("full-up", "1", "1"), ("full-up", "2", "1"),
                                                          ("fedex-lora", "1", "1"), ("fedex-lora", "2", "1")], rows
for r in rows:
    assert 1 < float(r["final_perplexity"]) < 259, r
    assert 0 <= float(r["rouge_l"]) <= 1, r
up = {r["method"]: float(r["upload_per_round"]) for r in rows}
assert up["fedex-lora"] < up["full-up"], f"LoRA on up_proj sends less than up_proj itself: {up}"
table = open(f"{out}/summary.md").read()
assert "| full-up |" in table and "| fedex-lora |" in table and "ROUGE-L F1" in table, table
print("ok: runs.csv and summary.md", up)
PY
timeout 120 "$FLOTILLA" experiment "$WORK/study.toml" --output "$WORK/out" > "$WORK/second.out" 2>&1 ||
  { cat "$WORK/second.out"; fail "the second invocation failed"; }
[ "$(grep -c "done earlier" "$WORK/second.out")" = 4 ] || { cat "$WORK/second.out"; fail "finished runs were run again"; }
grep -q "already made with these settings" "$WORK/second.out" || fail "the base model was pretrained again"
if "$FLOTILLA" experiment "$WORK/study.toml" --output "$WORK/out" --methods full-up,fedx-lora > "$WORK/typo.out" 2>&1; then
  fail "an unknown method was accepted"
fi
grep -q -- '--methods: "fedx-lora" is not one of' "$WORK/typo.out" || { cat "$WORK/typo.out"; fail "the typo is not named"; }
echo "PASS"

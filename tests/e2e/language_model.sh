#!/usr/bin/env bash
# A federated fine-tuning of the LLaMA-layout language model, end to end: Dolly-shaped
# instruction data (written here: three categories of small tasks, split non-IID across three
# clients), byte tokens, LoRA on q/v/up/down projections, FedEx-LoRA (which writes into the
# adapted layers' base weights, sent in the tasks) and FedIT. The held-out loss per token must
# fall and the next-token accuracy rise.
source "$(dirname "$0")/lib.bash"
python3 - "$WORK/data.jsonl" <<'PY'
import json, random, sys
random.seed(1)
words = ["cat", "dog", "sun", "tree", "blue", "fish", "moon", "star", "rain", "lamp", "rock", "wind"]
with open(sys.argv[1], "w") as out:
    for i in range(900):
        w = random.choice(words) + random.choice(words)
        if i % 3 == 0:
            rec = {"instruction": f"reverse {w}", "context": "", "response": w[::-1], "category": "reverse"}
        elif i % 3 == 1:
            rec = {"instruction": f"upper {w}", "context": "", "response": w.upper(), "category": "upper"}
        else:
            a, b = random.randint(0, 50), random.randint(0, 49)
            rec = {"instruction": f"add {a} {b}", "context": "", "response": str(a + b), "category": "add"}
        out.write(json.dumps(rec) + "\n")
PY
run() {  # STRATEGY
  cat > "$WORK/$1.toml" <<TOML
[run]
name = "lm-$1"
seed = 2
rounds = 4
threads = 1
[data]
dataset = "instructions"
path = "$WORK/data.jsonl"
max-length = 48
clients = 3
partition = "dirichlet"
alpha = 0.3
[model]
name = "llama"
vocab-size = 259
hidden-size = 64
intermediate-size = 128
layers = 2
heads = 4
kv-heads = 2
max-positions = 64
[training]
optimizer = "adamw"
local-steps = 40
batch-size = 16
learning-rate = 0.003
[lora]
rank = 8
alpha = 16.0
targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
[aggregator]
listen = "inproc://lm-$1"
strategy = "$1"
min-updates = 3
[evaluator]
examples = 90
TOML
  timeout 300 "$FLOTILLA" --log-level warn run "$WORK/$1.toml" --output "$WORK/out-$1" > "$WORK/$1.out" 2> "$WORK/$1.err" ||
    { cat "$WORK/$1.out" "$WORK/$1.err"; fail "$1: the run failed"; }
  python3 - "$WORK/out-$1/rounds.csv" "$1" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["eval_loss"]]
loss = [float(r["eval_loss"]) for r in rows]
acc = [float(r["eval_accuracy"]) for r in rows]
name = sys.argv[2]
assert len(rows) == 5, f"{name}: every version evaluated: {len(rows)}"
assert loss[-1] < loss[0] - 0.4, f"{name}: held-out loss per token did not fall: {loss}"
assert acc[-1] > acc[0] + 0.3, f"{name}: next-token accuracy did not rise: {acc}"
print(f"ok: {name:10s} held-out loss/token " + " ".join(f"{x:.3f}" for x in loss) +
      "; next-token accuracy " + " ".join(f"{x:.3f}" for x in acc))
PY
}
run fedex-lora
run fedit
echo "PASS"

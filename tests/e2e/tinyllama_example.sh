#!/usr/bin/env bash
# examples/study/tinyllama-dolly.toml, the study's own setting for a GPU machine, run here on a
# tiny checkpoint written in TinyLlama's format: a transformers config.json, bf16 weights in a
# safetensors file with Hugging Face's names, a SentencePiece BPE tokenizer.model (spm_train,
# LLaMA's settings), and Dolly-shaped JSON lines. Only the paths, the device and the budget are
# changed (two methods, one seed, two rounds).
source "$(dirname "$0")/lib.bash"
command -v spm_train >/dev/null || fail "spm_train is missing: install Debian's sentencepiece (scripts/install-deps.sh does)"
mkdir -p "$WORK/tinyllama" "$WORK/dolly"
python3 - "$WORK" <<'PY'
import json, random, struct, sys
work = sys.argv[1]
random.seed(5)
cats = {"open_qa": ("What is {}?", "{} is a thing people talk about."),
        "brainstorming": ("List uses of {}.", "You can eat {}, sell {} or paint {}."),
        "summarization": ("Summarize: {} is here.", "{} is here.")}
words = ["apple", "river", "engine", "violin", "garden", "planet", "candle", "bridge"]
with open(f"{work}/dolly/databricks-dolly-15k.jsonl", "w") as out, open(f"{work}/text.txt", "w") as text:
    for i in range(300):
        cat = list(cats)[i % 3]
        w = random.choice(words)
        ins, resp = cats[cat]
        rec = {"instruction": ins.format(w), "context": "", "response": resp.format(w, w, w), "category": cat}
        out.write(json.dumps(rec) + "\n")
        text.write(rec["instruction"] + "\n" + rec["response"] + "\n")
V, H, I, L, NH, KV = 300, 32, 64, 2, 4, 2
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": KV,
           "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "rope_scaling": None, "bos_token_id": 1,
           "eos_token_id": 2}, open(f"{work}/tinyllama/config.json", "w"))
hd = H // NH
shapes = {"model.embed_tokens.weight": [V, H]}
for l in range(L):
    p = f"model.layers.{l}."
    shapes.update({p + "self_attn.q_proj.weight": [H, H], p + "self_attn.k_proj.weight": [KV * hd, H],
                   p + "self_attn.v_proj.weight": [KV * hd, H], p + "self_attn.o_proj.weight": [H, H],
                   p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H], p + "mlp.down_proj.weight": [H, I],
                   p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H]})
shapes.update({"model.norm.weight": [H], "lm_head.weight": [V, H]})
header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
for name, shape in shapes.items():
    n = 1
    for d in shape: n *= d
    norm = name.endswith("norm.weight")
    # bf16: the upper half of each float32
    data = b"".join(struct.pack("<f", 1.0 if norm else random.gauss(0, 0.05))[2:] for _ in range(n))
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(f"{work}/tinyllama/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
spm_train --input="$WORK/text.txt" --model_prefix="$WORK/tinyllama/tokenizer" --model_type=bpe --vocab_size=300 \
  --byte_fallback=true --normalization_rule_name=identity --remove_extra_whitespaces=false \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 > "$WORK/spm.log" 2>&1 || { cat "$WORK/spm.log"; fail "spm_train failed"; }
EXAMPLE="$(dirname "$0")/../../examples/study/tinyllama-dolly.toml"
sed -e "s|\"tinyllama/|\"$WORK/tinyllama/|g; s|= \"tinyllama\"|= \"$WORK/tinyllama\"|; s|\"dolly/|\"$WORK/dolly/|" \
    -e 's/^device = "cuda"/device = "cpu"/; s/^rounds = 20/rounds = 2/; s/^rouge-samples = 100/rouge-samples = 2/; s/^threads = 4/threads = 1/' \
    "$EXAMPLE" > "$WORK/study.toml"
for changed in "device = \"cpu\"" "rounds = 2" "$WORK/tinyllama/config.json" "checkpoint = \"$WORK/tinyllama\""; do
  grep -qF "$changed" "$WORK/study.toml" || fail "the example no longer has the line this test changes: $changed"
done
timeout 300 "$FLOTILLA" experiment "$WORK/study.toml" --output "$WORK/out" --methods fedit,galore --seeds 1 \
  > "$WORK/out.log" 2>&1 || { cat "$WORK/out.log"; fail "the example failed"; }
cat "$WORK/out.log"
python3 - "$WORK/out/runs.csv" <<'PY'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [(r["method"], r["ok"]) for r in rows] == [("galore", "1"), ("fedit", "1")], rows
for r in rows:
    assert math.isfinite(float(r["final_perplexity"])) and float(r["final_perplexity"]) < 3000, r  # ~vocabulary: a random base
up = {r["method"]: float(r["upload_per_round"]) for r in rows}
# fedit sends rank-16 adapters of 2 up_proj (64x32): 2 x (16x32 + 64x16) floats; galore the 2 up_proj themselves.
assert up == {"galore": 2 * 64 * 32 * 4, "fedit": 2 * (16 * 32 + 64 * 16) * 4}, up
print("ok:", up)
PY
echo "PASS"

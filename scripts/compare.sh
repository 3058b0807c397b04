#!/usr/bin/env bash
# The study's comparison on the quick-start task (Fashion-MNIST, 8 clients, Dirichlet 0.5, the
# same MLP, data, schedule and seed for every method): FedAvg of full weights (SGD), FedAvg of
# full weights trained with GaLore, and the LoRA methods FedIT, FFA-LoRA, FlexLoRA, FedEx-LoRA,
# FLoRA and FedSA-LoRA (judged by its clients' own models: their training accuracy).
# Prints each method's final and best accuracy and what each client uploads per round.
#   scripts/compare.sh [METHOD ...]      default: fedavg galore fedit ffa-lora flexlora fedex-lora flora fedsa-lora
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS=("$@"); [ ${#METHODS[@]} -eq 0 ] && METHODS=(fedavg galore fedit ffa-lora flexlora fedex-lora flora fedsa-lora)
bash scripts/install-deps.sh
bash scripts/build.sh flotilla flotilla_plugins
OUT=$(mktemp -d /tmp/flotilla-compare.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
for m in "${METHODS[@]}"; do
  echo "== $m (examples/$m.toml)"
  "${FLOTILLA_BUILD_DIR:-build}/bin/flotilla" --log-level warn run "examples/$m.toml" \
    --output "$OUT/$m" | grep -E "^(done|final)"
done
python3 - "$OUT" "${METHODS[@]}" <<'PY'
import csv, sys, os
out, methods = sys.argv[1], sys.argv[2:]
print(f"\n{'method':10s} {'final':>7s} {'best':>7s} {'clients (train)':>16s} {'upload/client/round':>20s}")
for m in methods:
    rows = [r for r in csv.DictReader(open(os.path.join(out, m, "rounds.csv"))) if int(r["round"]) > 0]
    acc = [float(r["eval_accuracy"]) for r in rows if r["eval_accuracy"]]
    train = float(rows[-1]["train_accuracy"])  # the clients' own models, as they trained the last round
    up = sum(float(r["bytes_per_client"]) for r in rows) / len(rows)
    print(f"{m:10s} {100*acc[-1]:6.2f}% {100*max(acc):6.2f}% {100*train:15.2f}% {up/1024:16.1f} KiB")
PY

#!/usr/bin/env bash
# The study, on this machine, in one command: the image study (a ViT pretrained on five
# Fashion-MNIST classes, fine-tuned on ten) and the text study (a LLaMA-layout LM pretrained on an
# offline corpus made from Debian packages, fine-tuned on instruction data split by category),
# each with FedAvg and GaLore (full fine-tuning of the target modules) and six LoRA methods, three
# seeds each. Tables, per-run CSVs and plots under OUT (default study/). An interrupted study
# resumes where it stopped when run again.
#   scripts/study.sh [--out DIR] [--only image|text] [--seeds 1,2] [--methods a,b]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=study
ONLY=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --seeds|--methods) EXTRA+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "study.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|image|text) ;; *) echo "study.sh: --only takes image or text" >&2; exit 2 ;; esac
bash scripts/install-deps.sh
bash scripts/build.sh flotilla flotilla_plugins
FLOTILLA="${FLOTILLA_BUILD_DIR:-build}/bin/flotilla"
START=$(date +%s)
if [ "$ONLY" != text ]; then
  echo "== image study: examples/study/image.toml -> $OUT/image"
  "$FLOTILLA" experiment examples/study/image.toml --output "$OUT/image" "${EXTRA[@]}"
fi
if [ "$ONLY" != image ]; then
  # The text study's data, made offline from Debian packages (examples/study/text.toml reads corpus/).
  python3 scripts/demo-corpus.py corpus
  echo "== text study: examples/study/text.toml -> $OUT/text"
  "$FLOTILLA" experiment examples/study/text.toml --output "$OUT/text" "${EXTRA[@]}"
fi
echo "study done in $(( ($(date +%s) - START) / 60 )) min: $OUT/*/summary.md, $OUT/*/metric_by_round.png"

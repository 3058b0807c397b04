#!/usr/bin/env python3
"""Builds the text study's offline instruction data from Debian packages, in Dolly's JSON-lines
shape (instruction, context, response, category), one source per category:

  define    wordnet-base: 'Define "WORD".' -> its gloss
  example   wordnet-base: 'Use "WORD" in a sentence.' -> an example sentence from its entry
  verse     bible-kjv: 'Continue the verse.' + the first half of a verse (Proverbs, Psalms,
            Ecclesiastes) -> the rest of it
  saying    fortunes: 'Finish the saying.' + the first half of a short fortune -> the rest

Writes OUT/pretrain.jsonl (the base model's mix) and OUT/finetune.jsonl (the federated
fine-tuning's records: other records of the same sources), shuffled with --seed.
  scripts/demo-corpus.py OUT [--per-category N] [--max-chars 60] [--seed 1]
"""
import argparse
import glob
import json
import os
import random
import re
import subprocess
import sys

WORDNET = "/usr/share/wordnet"
FORTUNES = "/usr/share/games/fortunes"


def wordnet(max_chars):
    """(word, gloss, example) for every synset with a short gloss."""
    out = []
    for pos in ("noun", "verb", "adj"):
        path = os.path.join(WORDNET, "data." + pos)
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # the licence header
                fields, gloss = line.split("|", 1)
                parts = fields.split()
                word = parts[4].replace("_", " ")
                if not re.fullmatch(r"[a-z][a-z ]{2,20}", word):
                    continue
                pieces = [p.strip() for p in gloss.strip().split(";")]
                definition = pieces[0]
                examples = [p.strip('"') for p in pieces[1:] if p.startswith('"') and word in p]
                if 10 <= len(definition) <= max_chars:
                    out.append((word, definition, examples[0] if examples and len(examples[0]) <= max_chars else None))
    return out


def halves(text):
    words = text.split()
    cut = len(words) // 2
    return " ".join(words[:cut]), " ".join(words[cut:])


def verses(max_chars):
    out = []
    for span in ("Pr1:1-Pr31:31", "Ps1:1-Ps150:6", "Ec1:1-Ec12:14"):
        text = subprocess.run(["bible", "-f", span], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            verse = line.split(" ", 1)[1].strip() if " " in line else ""
            if 30 <= len(verse) <= 2 * max_chars and len(verse.split()) >= 6:
                out.append(verse)
    return out


def sayings(max_chars):
    out = []
    for path in sorted(glob.glob(os.path.join(FORTUNES, "*"))):
        if path.endswith(".dat") or os.path.islink(path) or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for item in f.read().split("\n%\n"):
                text = " ".join(item.split())
                if 30 <= len(text) <= 2 * max_chars and len(text.split()) >= 6 and text.isascii():
                    out.append(text)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--per-category", type=int, default=1500, help="records per category and file")
    ap.add_argument("--max-chars", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    for need, package in ((WORDNET, "wordnet-base"), (FORTUNES, "fortunes"), ("/usr/bin/bible", "bible-kjv-text")):
        if not os.path.exists(need):
            sys.exit(f"demo-corpus: {need} is missing: install the Debian package {package} (scripts/install-deps.sh does)")
    rng = random.Random(a.seed)
    words = wordnet(a.max_chars)
    rng.shuffle(words)
    records = {"define": [], "example": [], "verse": [], "saying": []}
    for word, gloss, example in words:
        records["define"].append({"instruction": f'Define "{word}".', "context": "", "response": gloss})
        if example:
            records["example"].append({"instruction": f'Use "{word}" in a sentence.', "context": "", "response": example})
    for text in verses(a.max_chars):
        head, tail = halves(text)
        records["verse"].append({"instruction": "Continue the verse.", "context": head, "response": tail})
    for text in sayings(a.max_chars):
        head, tail = halves(text)
        records["saying"].append({"instruction": "Finish the saying.", "context": head, "response": tail})
    os.makedirs(a.out, exist_ok=True)
    files = {"pretrain": [], "finetune": []}
    for category, items in records.items():
        rng.shuffle(items)
        n = min(a.per_category, len(items) // 2)
        for r in items[:n]:
            files["pretrain"].append({**r, "category": category})
        for r in items[n:2 * n]:
            files["finetune"].append({**r, "category": category})
        print(f"demo-corpus: {category:8s} {len(items):6d} available, {n} to each file")
    for name, rows in files.items():
        rng.shuffle(rows)
        path = os.path.join(a.out, name + ".jsonl")
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"demo-corpus: {path}: {len(rows)} records")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cuts the bundled sample corpus (data/sample/) from ../shared/corpora. Deterministic: rerunning it
gives byte-identical files. Run from the repository root: python3 data/make_sample.py"""
import json
import pathlib

CORPORA = pathlib.Path("../shared/corpora")
OUT = pathlib.Path("data/sample")
SEP = "<|endoftext|>"
OUT.mkdir(parents=True, exist_ok=True)

# prose.txt: every 20th document of prose/train.txt plus every 5th of prose/val.txt, separators kept.
def docs(path):
    text = path.read_text(encoding="utf-8")
    return [d.strip("\n") for d in text.split("\n" + SEP + "\n") if d.strip()]

train = docs(CORPORA / "prose/train.txt")[::20]
val = docs(CORPORA / "prose/val.txt")[::5]
(OUT / "prose.txt").write_text(("\n" + SEP + "\n").join(train + val) + "\n" + SEP + "\n", encoding="utf-8")

# tiny_shakespeare.txt: the first 120,000 bytes of tiny_shakespeare/input.txt, cut at a line end
# (a text source without separator: the whole file is one document).
raw = (CORPORA / "tiny_shakespeare/input.txt").read_bytes()[:120_000]
(OUT / "tiny_shakespeare.txt").write_bytes(raw[: raw.rfind(b"\n") + 1])

# jargon.jsonl: every 10th Jargon File entry of prose/documents.jsonl, only {source, title, text}.
with open(CORPORA / "prose/documents.jsonl", encoding="utf-8") as f:
    rows = [json.loads(l) for l in f]
jargon = [r for r in rows if r["source"].startswith("jargon")][::10]
with open(OUT / "jargon.jsonl", "w", encoding="utf-8") as f:
    for r in jargon:
        f.write(json.dumps({"source": r["source"], "title": r["title"], "text": r["text"]}, ensure_ascii=False) + "\n")

# bfcl_sample.jsonl: tool-calling rows, unchanged. Every 8th row of each category of
# tool_calling/bfcl_single_turn.jsonl (so every kind of task, irrelevance rows included, is present).
with open(CORPORA / "tool_calling/bfcl_single_turn.jsonl", encoding="utf-8") as f:
    bfcl = [l for l in f if l.strip()]
seen = {}
with open(OUT / "bfcl_sample.jsonl", "w", encoding="utf-8") as f:
    for l in bfcl:
        cat = json.loads(l)["category"]
        seen[cat] = seen.get(cat, 0) + 1
        if (seen[cat] - 1) % 8 == 0:
            f.write(l if l.endswith("\n") else l + "\n")

# gsm_sample.jsonl: every 8th row of cot/gsm_symbolic.jsonl, unchanged.
with open(CORPORA / "cot/gsm_symbolic.jsonl", encoding="utf-8") as f:
    gsm = [l for l in f if l.strip()][::8]
with open(OUT / "gsm_sample.jsonl", "w", encoding="utf-8") as f:
    for l in gsm:
        f.write(l if l.endswith("\n") else l + "\n")

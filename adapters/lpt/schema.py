"""A small typed schema for JSON read from untrusted files: each field has a type, bounds and
allowed values, and `check` reports every problem at once (never raises on odd input).

    problems = check({"layer": Int(0, 1023), "task": Text(200)}, raw, where="config")

Written by hand so that lpt needs nothing beyond torch/transformers/safetensors/numpy.
"""
from __future__ import annotations

import json
import math
import re
import reprlib

import numpy as np

SHOWN_PROBLEMS = 20       # e.g. at most this many unknown keys are named one by one


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlong, r.maxlist, r.maxdict, r.maxlevel = 50, 50, 40, 6, 4, 2
    return r


_REPR = _short_repr()


def show(value: object) -> str:
    """repr(value), cut short: problems quote what was sent without echoing a megabyte back."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"   # repr of a huge int is slow, even refused
    return _REPR.repr(value)


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text: bytes) -> int:
    """How deeply arrays/objects nest in a JSON text, found without parsing it (json.loads
    recurses and overflows the stack on deep input). Brackets inside strings are ignored."""
    a = np.frombuffer(_STRINGS.sub(b'""', text), dtype=np.uint8)
    step = ((a == ord("[")) | (a == ord("{"))).astype(np.int32) - ((a == ord("]")) | (a == ord("}")))
    return int(np.cumsum(step).max(initial=0))


class Spec:
    """One field's rule: `want` says what a value must be, `ok` tests one."""

    want = ""

    def ok(self, value: object) -> bool:
        raise NotImplementedError

    def problems(self, name: str, value: object) -> list[str]:
        return [] if self.ok(value) else [f"{name} must be {self.want}, got {show(value)}"]


class Int(Spec):
    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.want = f"an integer in [{lo}, {hi}]"

    def ok(self, value):
        # bool is an int in Python: refused explicitly, `true` is not a layer number
        return isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi


class Number(Spec):
    """A finite int or float in [lo, hi) (hi excluded)."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.want = f"a number in [{lo}, {hi})"

    def ok(self, value):
        return is_number(value) and self.lo <= value < self.hi


class Text(Spec):
    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.want = f"a string of 1 to {max_chars} characters"

    def ok(self, value):
        return isinstance(value, str) and 1 <= len(value) <= self.max_chars


class Choice(Spec):
    def __init__(self, choices: tuple[str, ...]):
        self.choices = choices
        self.want = "one of " + ", ".join(map(repr, choices))

    def ok(self, value):
        return isinstance(value, str) and value in self.choices


class List(Spec):
    """A list of `min_items` to `max_items` items, each passing `item`."""

    def __init__(self, item: Spec, min_items: int, max_items: int, distinct: bool = False):
        self.item, self.min_items, self.max_items, self.distinct = item, min_items, max_items, distinct
        self.want = f"a list of {min_items} to {max_items} {'distinct ' if distinct else ''}items, each {item.want}"

    def ok(self, value):
        return (isinstance(value, list) and self.min_items <= len(value) <= self.max_items
                and all(self.item.ok(v) for v in value)
                and (not self.distinct or len(set(value)) == len(value)))


class FiniteNumber(Spec):
    want = "a finite number"

    def ok(self, value):
        return is_number(value)


class Nullable(Spec):
    """`spec`, or null."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.want = f"null or {spec.want}"

    def ok(self, value):
        return value is None or self.spec.ok(value)


class Object(Spec):
    """A JSON object with the fields of its own table; each problem is named `outer.inner`."""

    def __init__(self, fields: dict[str, Spec], required: tuple[str, ...] = ()):
        self.fields, self.required = fields, required
        self.want = "an object"

    def ok(self, value):
        return isinstance(value, dict) and not check(self.fields, value, self.required)

    def problems(self, name: str, value: object) -> list[str]:
        if not isinstance(value, dict):
            return [f"{name} must be an object, got {show(value)}"]
        return check(self.fields, value, self.required, where=name, prefix=name + ".")


def check(fields: dict[str, Spec], raw: dict, required: tuple[str, ...] = (), where: str = "object",
          prefix: str = "") -> list[str]:
    """Every problem of the object `raw` (called `where`) against the table `fields`: unknown
    keys, missing ones, bad values. Field names in problems are prefixed with `prefix`."""
    unknown = [k for k in raw if k not in fields]
    problems = [f"unknown {where} key {show(k)}" for k in unknown[:SHOWN_PROBLEMS]]
    if len(unknown) > SHOWN_PROBLEMS:
        problems.append(f"... and {len(unknown) - SHOWN_PROBLEMS} more unknown {where} keys")
    problems += [f"{where} is missing {k!r}" for k in required if k not in raw]
    for name, spec in fields.items():
        if name in raw:
            problems += spec.problems(prefix + name, raw[name])
    return problems


def is_number(value: object) -> bool:
    """A JSON number that is finite (bool excluded; ints are always finite, and may be too big
    for math.isfinite)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


MAX_JSON_DEPTH = 8        # an adapter header nests 3 deep, its config 3: room to spare, no more


def load_json(text: bytes | str, what: str, lone_surrogates: bool = False) -> tuple[object, str | None]:
    """json.loads for untrusted text: (value, None), or (None, why not). Nesting is bounded
    before parsing; numbers too long for int() are refused, not raised. A string holding a lone
    surrogate is refused too, unless `lone_surrogates` (the caller checks its strings itself)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        return None, f"{what} nests {depth} levels deep, at most {MAX_JSON_DEPTH} are allowed"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{what} is not valid JSON: {e.msg} at character {e.pos}"
    except (UnicodeDecodeError, ValueError):      # e.g. an integer of more than 4300 digits
        return None, f"{what} is not valid JSON text (bad UTF-8, or a number too long to read)"
    try:      # JSON's \ud800-style escapes can make a string that is no text: no response could carry it
        if not lone_surrogates:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, f"{what} holds a string with a lone surrogate (a \\ud800-\\udfff escape): not valid text"
    return value, None

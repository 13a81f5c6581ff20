"""Shared by the benchmarks: interleaved repeats, medians with spread, results files, plots."""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(methods: dict[str, Callable[[], object]], repeats: int, desc: str = "repeats",
                warmup: int = 1) -> dict[str, list[float]]:
    """Time every method once per repeat, in turn, so machine noise hits them alike. Seconds."""
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in tqdm(range(repeats), desc=desc, file=sys.stderr, leave=False):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median_iqr_ms(xs: list[float]) -> dict:
    qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": round(statistics.median(xs) * 1e3, 3), "q1": round(qs[0] * 1e3, 3),
            "q3": round(qs[2] * 1e3, 3), "n": len(xs)}


def write_json(target: str | Path, result: dict) -> Path:
    """result as indented JSON at a path, or under bench/results/ as NAME.json; returns the path."""
    path = target if isinstance(target, Path) else RESULTS / f"{target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def command_line() -> str:
    return "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])

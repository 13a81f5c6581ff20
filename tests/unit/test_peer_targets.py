"""bench/peer.py judges its run against the request-path targets: each at its own task count,
the memory one on the each-page-once measure, a task count the run skipped as not measured."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import peer  # noqa: E402

pytestmark = pytest.mark.unit


def _ratios(throughput: float, p99: float, memory: float, rss: float) -> dict:
    one = lambda x: {"of_medians": x}                                          # noqa: E731
    return {"peak_rss": one(rss), "peak_memory": one(memory), "serving_s": one(0.5),
            "uniform": {"throughput": one(throughput), "p99": one(p99)},
            "skewed": {"throughput": one(1.0), "p99": one(1.0)}}


def test_each_target_is_judged_at_its_own_task_count_and_measure():
    got = peer.check_targets({"16": _ratios(3.2, 0.3, 0.2, 0.9), "64": _ratios(4.9, 0.2, 0.1, 0.4)})
    assert {k: t["met"] for k, t in got.items()} == {
        "throughput_16": True, "p99_16": False, "peak_memory_16": True, "throughput_64": False}
    assert got["peak_memory_16"]["value"] == 0.2           # each page once, not VmHWM's 0.9
    assert got["throughput_64"] == {"tasks": 64, "target": ">= 5.0", "value": 4.9, "met": False}
    assert peer.check_targets({"16": _ratios(2.9, 0.25, 0.26, 0.1)})["p99_16"]["met"] is True   # the bound itself


def test_a_task_count_not_run_is_not_measured():
    got = peer.check_targets({"16": _ratios(3.2, 0.3, 0.2, 0.9)})
    assert got["throughput_64"]["met"] is None and got["throughput_64"]["value"] is None
    assert got["throughput_16"]["met"] is True

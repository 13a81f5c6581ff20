"""How the model's CPU threads are shared out: engine workers x torch threads each.

    thread_plan(settings)                    # ThreadPlan(workers=2, torch_threads=1, budget=2) on 2 cores
    plan(threads=4, workers=0, device="cpu")  # ThreadPlan(workers=4, torch_threads=1, budget=4)

A small model's operators are too small to keep several OpenMP threads busy: on two cores, two
workers of one thread each, each running its own batch, served 1.31-1.35x the requests of one
worker with two threads (bench/README.md, http-workers.json). So on a CPU the default is one
worker per thread of the budget (at most MAX_AUTO_WORKERS; past that, workers get several
threads each). On a GPU one worker feeds the device, and torch gets the whole budget for the
host-side work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class ThreadPlan:
    workers: int          # engine worker threads: batches run at once
    torch_threads: int    # torch intra-op threads (process-wide: each worker's operators use this many)
    budget: int           # CPU threads meant for the model in all


def cpu_budget(threads: int, environ: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """`threads` if set, else OMP_NUM_THREADS if it is a positive integer, else the usable cores."""
    if threads > 0:
        return threads
    env = os.environ if environ is None else environ
    try:
        omp = int(env.get("OMP_NUM_THREADS", ""))
    except ValueError:
        omp = 0
    if omp > 0:
        return omp
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


def thread_plan(settings) -> ThreadPlan:
    """The plan for a server's settings (threads, workers, device) in this process's environment."""
    return plan(settings.threads, settings.workers, settings.device)


def plan(threads: int, workers: int, device: str, environ: Mapping[str, str] | None = None,
         cores: int | None = None) -> ThreadPlan:
    """threads, workers: as set (0: choose); device: the model's device."""
    budget = cpu_budget(threads, environ, cores)
    if device.split(":")[0] != "cpu":
        return ThreadPlan(workers or 1, budget, budget)
    n = workers or min(budget, MAX_AUTO_WORKERS)
    return ThreadPlan(n, max(1, budget // n), budget)

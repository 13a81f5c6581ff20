"""Where a mixed batch's time goes on the device: the engine's wall time against the time its
kernels keep the device busy, and how many kernels it launches, at 1 and at `tasks` adapters.

For the base-size BERT in the plan's fastest dtype, at the smallest and the largest batch: a
call's wall time (median of the plan's repeats), then one call under torch.profiler: kernels
launched, device-busy time (the kernels' own time, summed), and the ops that take the most host
and device time. Wall time well above device-busy time means the device waits on the host
(launches, Python); a kernel count that grows with the adapters says where the host time goes.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

PROFILE_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}


def _device_us(e) -> float:
    return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)


def _is_kernel(e) -> bool:
    return str(getattr(e, "device_type", "")).split(".")[-1] in ("CUDA", "PrivateUse1")


def one_call(engine, rows, device: torch.device, repeats: int) -> dict:
    def call():
        engine.logits(rows)
        if device.type == "cuda":
            torch.cuda.synchronize()

    call()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        call()
    averages = prof.key_averages()
    kernels = [e for e in averages if _is_kernel(e)]
    by_host = sorted((e for e in averages if not _is_kernel(e)), key=lambda e: e.self_cpu_time_total, reverse=True)
    by_device = sorted(averages, key=_device_us, reverse=True)
    return {"wall_ms": round(statistics.median(walls) * 1e3, 3),
            "kernels": int(sum(e.count for e in kernels)),
            "aten_calls": int(sum(e.count for e in averages if e.key.startswith("aten::"))),
            "device_busy_ms": round(sum(_device_us(e) for e in kernels) / 1e3, 3),
            "top_host_ops": [{"op": e.key, "calls": e.count, "self_host_ms": round(e.self_cpu_time_total / 1e3, 3)}
                             for e in by_host[:12]],
            "top_device_ops": [{"op": e.key[:80], "calls": e.count, "device_ms": round(_device_us(e) / 1e3, 3)}
                               for e in by_device[:12] if _device_us(e) > 0]}


def two_callers(engine, rows, device: torch.device, calls: int) -> dict:
    """Rows/s of `calls` engine calls made by one thread, then shared by two threads (as two
    engine workers would): the second thread's host work can run while the first waits for the
    device."""
    import threading

    def work(n):
        with torch.inference_mode():     # a thread's own: the mode is per thread
            for _ in range(n):
                engine.logits(rows)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(threads: int) -> float:
        ts = [threading.Thread(target=work, args=(calls // threads,)) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return len(rows) * (calls // threads) * threads / (time.perf_counter() - t0)

    work(1)
    one, two = timed(1), timed(2)
    return {"one_thread_rows_per_s": round(one, 1), "two_threads_rows_per_s": round(two, 1),
            "two_over_one": round(two / one, 3)}


def profile_runs(kit, plan, texts, load_model, make_adapters, encoded_rows) -> list[dict]:
    dtype = PROFILE_DTYPE[plan.device]
    bb = load_model(plan.base, kit, plan, dtype)
    from lpt import Engine

    out = []
    for tasks in sorted({1, plan.tasks}):
        adapters = make_adapters(bb, tasks, layer=bb.num_layers // 2)
        for batch in (min(plan.batches), max(plan.batches)):
            rows = encoded_rows(adapters, texts, batch, plan.tokens_per_row)
            with torch.inference_mode():
                found = one_call(Engine(bb, cache_entries=0), rows, bb.device, plan.repeats)
            found = {"model": plan.base, "dtype": dtype, "tasks": tasks, "batch": batch, **found}
            if tasks == plan.tasks:
                found["callers"] = two_callers(Engine(bb, cache_entries=0), rows, bb.device, 2 * plan.repeats)
                print(f"  {found['callers']}", flush=True)
            out.append(found)
            print(f"profile {plan.base} {dtype} tasks {tasks:3d} batch {batch:5d}: wall {found['wall_ms']:.2f} ms, "
                  f"device busy {found['device_busy_ms']:.2f} ms, {found['kernels']} kernels, {found['aten_calls']} aten calls", flush=True)
    return out

"""A server's memory over a long run: its memory after each block of requests, with the caches of
compiled kernels at their library defaults and at the server's own bound, in one run.

    python bench/memory.py                       # 16 adapters, 8 blocks of 400 one-tweet requests
    python bench/memory.py --dtype bfloat16 --json bench/results/memory-bf16.json
    python bench/memory.py --engine-cpu 3        # and what the bound costs the engine, per row

oneDNN (GELU's kernel in float32, matrix products in bfloat16) compiles a kernel per input shape;
oneDNN's own cache and the one torch's bfloat16 matrix products go through keep 1,024 each by
default, and a server's batches bring a new token count nearly every time. Both servers are `lpt
serve` on the embedded model with the same adapters and the same distinct tweets (none asked
twice), a closed loop of 32 clients, default threads and layer-k cache; the baseline sets
ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 and LRU_CACHE_CAPACITY=1024 (the libraries' defaults, what the
server ran with before it set bounds), the other leaves them to the server. After each block: the
server's memory (its process tree's, each page once: loadgen.tree_memory_mb) and the block's
req/s; at the end, the same after a few seconds without requests (idle engine workers give freed
memory back). Writes bench/results/memory.json and memory.png.

--engine-cpu N: the engine alone (`Engine.predict`, one thread, batches of 4-16 distinct tweets
for 16 adapters) in N pairs of fresh processes, one per setting, alternating: CPU ms per row
after a warm-up, the bound's cost over the library defaults.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import distinct_texts  # noqa: E402
from gpu_http import requests_for  # noqa: E402
from http_load import lpt_command, lpt_env, make_adapters, upload_adapters  # noqa: E402
from loadgen import ServerProcess, closed_loop, send_each, tree_memory_mb  # noqa: E402
from timing import RESULTS, command_line, pyplot, write_json  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lpt_server.runtime import KERNEL_CACHE_ENTRIES, KERNEL_CACHES  # noqa: E402

LIBRARY_DEFAULTS = dict.fromkeys(KERNEL_CACHES, "1024")
CONFIGS = {"library defaults (1,024 kernels)": LIBRARY_DEFAULTS, "lpt serve's bound": {}}


def run_server(env_extra: dict[str, str], adapters: dict[str, bytes], texts: list[str], args, tmp: Path) -> dict:
    tasks = sorted(adapters)
    env = {k: v for k, v in lpt_env().items() if k not in KERNEL_CACHES} | env_extra
    server = ServerProcess(lpt_command(args.model, tmp / "store", ["--dtype", args.dtype]), tmp / "server.log",
                           env=env)
    out: dict = {"env": env_extra, "blocks": []}
    try:
        server.wait_ready("/ready", 180)
        upload_adapters(server.url, adapters)
        asyncio.run(send_each(server.url, requests_for(tasks, ["warm up"], len(tasks), 1)))
        out["memory_mb_ready"] = round(tree_memory_mb(server.pid), 1)
        for b in range(args.blocks):
            block = texts[b * args.requests:(b + 1) * args.requests]
            res = asyncio.run(closed_loop(server.url, requests_for(tasks, block, len(block), 1), args.concurrency,
                                          args.time_limit, server))
            res["requests_so_far"] = (b + 1) * args.requests
            res["memory_mb"] = round(tree_memory_mb(server.pid), 1)
            out["blocks"].append(res)
            print(f"  block {b + 1}: {res['req_per_s']:6.1f} req/s, memory {res['memory_mb']:6.0f} MB "
                  f"({res['errors']} errors)", flush=True)
        out["peak_memory_mb"] = round(server.peak_memory_mb(), 1)
        time.sleep(args.idle_s)                   # idle workers give the allocator's free pages back
        out["memory_mb_idle"] = round(tree_memory_mb(server.pid), 1)
        print(f"  after {args.idle_s:g} s idle: memory {out['memory_mb_idle']:6.0f} MB", flush=True)
    finally:
        out["exit_code"] = server.stop()
    return out


ENGINE_CHILD = r"""
import random, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from data import distinct_texts
from http_load import make_adapters
from lpt import Backbone, Engine, Row, load_adapter
bb = Backbone.load("minilm", dtype=sys.argv[2])
adapters = [load_adapter(b, bb) for b in make_adapters("minilm", 16).values()]
texts, rng, engine, i = distinct_texts("tweets", 4000), random.Random(0), Engine(bb, cache_entries=0), 0

def run(rows_wanted):
    global i
    c0, n = time.process_time(), 0
    while n < rows_wanted:
        b = rng.randint(4, 16)
        engine.predict([Row(adapters[(i + j) % 16], texts[(i + j) % len(texts)]) for j in range(b)])
        i, n = i + b, n + b
    return (time.process_time() - c0) / n * 1000

run(400)                                        # warm-up: first calls, allocator, kernels
print(run(1600))
"""


def engine_cpu_ms_per_row(pairs: int, dtype: str) -> dict:
    """CPU ms per row of the engine alone, each setting in its own process, alternating."""
    import subprocess

    capacity = {"1024": "1024", "server bound": str(KERNEL_CACHE_ENTRIES)}   # result key -> the bounds
    out: dict[str, list[float]] = {name: [] for name in capacity}
    here = str(Path(__file__).resolve().parent)
    for _ in tqdm(range(pairs), desc="engine CPU pairs", file=sys.stderr):
        for name, entries in capacity.items():
            env = {**lpt_env(), **dict.fromkeys(KERNEL_CACHES, entries)}
            r = subprocess.run([sys.executable, "-c", ENGINE_CHILD, here, dtype], env=env, capture_output=True,
                               text=True)
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            out[name].append(round(float(r.stdout.split()[-1]), 3))
    ratios = [b / a for a, b in zip(out["1024"], out["server bound"])]
    return {"cpu_ms_per_row": out, "bound_over_default": [round(x, 3) for x in ratios],
            "median_ratio": round(statistics.median(ratios), 3)}


def plot(out: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in out["runs"].items():
        xs = [0] + [b["requests_so_far"] for b in run["blocks"]]
        ax.plot(xs, [run["memory_mb_ready"]] + [b["memory_mb"] for b in run["blocks"]], marker="o", label=name)
    ax.set_xlabel("requests served (distinct tweets, 16 adapters)")
    ax.set_ylabel("memory (process tree, each page once), MB")
    ax.set_title(f"lpt serve's memory over a run ({out['dtype']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400, help="per block")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per block (upper bound)")
    ap.add_argument("--idle-s", type=float, default=3.0, help="idle time before the last reading")
    ap.add_argument("--engine-cpu", type=int, default=0, metavar="PAIRS",
                    help="also the engine's CPU per row with each setting, PAIRS alternating processes")
    ap.add_argument("--json", type=Path, default=None, help="default: memory.json (float32), memory-bf16.json")
    args = ap.parse_args(argv)
    args.json = args.json or RESULTS / ("memory.json" if args.dtype == "float32" else "memory-bf16.json")
    adapters = make_adapters(args.model, args.tasks)
    texts = distinct_texts("tweets", args.blocks * args.requests)
    out = {"command": command_line(), "tasks": args.tasks, "dtype": args.dtype, "requests_per_block": args.requests,
           "concurrency": args.concurrency, "runs": {}}
    for name, env_extra in CONFIGS.items():
        print(f"{name}:", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out["runs"][name] = run_server(env_extra, adapters, texts, args, Path(tmp))
    base, ours = (out["runs"][n] for n in CONFIGS)
    grow = {n: r["blocks"][-1]["memory_mb"] - r["blocks"][0]["memory_mb"] for n, r in out["runs"].items()}
    out["summary"] = {
        "growth_after_first_block_mb": {n: round(g, 1) for n, g in grow.items()},
        "final_memory_ratio": round(ours["blocks"][-1]["memory_mb"] / base["blocks"][-1]["memory_mb"], 3),
        "peak_memory_ratio": round(ours["peak_memory_mb"] / base["peak_memory_mb"], 3),
        "req_per_s_ratio": round(sum(b["req_per_s"] for b in ours["blocks"])
                                 / sum(b["req_per_s"] for b in base["blocks"]), 3)}
    if args.engine_cpu:
        out["engine"] = engine_cpu_ms_per_row(args.engine_cpu, args.dtype)
        e = out["engine"]
        print(f"engine CPU ms per row, 1,024 kernels {e['cpu_ms_per_row']['1024']}, the bounds "
              f"{e['cpu_ms_per_row']['server bound']}: bound / default {e['median_ratio']:.3f} (median of pairs)")
    s = out["summary"]
    print("growth after the first block: " + ", ".join(f"{n} {g:+.0f} MB" for n, g in grow.items()))
    print(f"bound / default: final memory {s['final_memory_ratio']:.2f}x, peak {s['peak_memory_ratio']:.2f}x, "
          f"req/s {s['req_per_s_ratio']:.2f}x")
    write_json(args.json, out)
    plot(out, args.json.with_suffix(".png"))
    print(f"wrote {args.json}")
    return 1 if any(b["errors"] for r in out["runs"].values() for b in r["blocks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())

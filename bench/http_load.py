"""HTTP load benchmark: batched mixed-task serving vs the same server unbatched.

    python bench/http_load.py                          # 300 requests per config, concurrency 32
    python bench/http_load.py --requests 600 --concurrency 64 --tasks 1 8 64
    python bench/http_load.py --tasks 16 --server-args="--threads 2" --baseline-args="--workers 1" --baseline-name one-worker

Starts `lpt serve` twice on loopback (a temp store, the real model): once with the default
batching, once with `--max-batch-rows 1` (every request its own forward pass: the baseline;
`--baseline-args` names another, `--server-args` go to both).
For 1, 8 and 64 tasks it runs a closed loop (each of `concurrency` clients sends its next
request when the last one is answered; one text and one task per request, tasks round-robin,
every text distinct so the layer-k cache cannot help), bounded by a request count and a time
limit. Reports req/s, latency p50/p95/p99 and the server's peak RSS; writes
bench/results/http.json. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import ServerProcess, closed_loop as _closed_loop, send_each  # noqa: E402
from timing import write_json  # noqa: E402

ADMIN = "bench-admin"
WORDS = ("the film was long slow and yet strangely moving great acting terrible plot service food market bank "
         "rates rose again on thursday team won the match late goal new phone battery lasts all day I would "
         "not recommend it to anyone loved every minute of this bad weather ruined our trip").split()


def make_adapters(model: str, n: int) -> dict[str, bytes]:
    """n seeded adapter files, task00..., with 2 to 5 labels."""
    from common import adapter_file

    from lpt import Backbone

    bb = Backbone.load(model)
    return {f"task{i:02d}": adapter_file(bb, f"task{i:02d}", i, [f"label{j}" for j in range(2 + i % 4)])
            for i in range(n)}


def lpt_command(model: str, store: Path, extra: list[str], launcher: list[str] | None = None) -> list[str]:
    """`lpt serve` on loopback with a fresh store, writes allowed with ADMIN; `{port}` filled in
    later. launcher: what runs `serve ...` (default: `lpt`, else `python -m lpt_server`)."""
    if launcher is None:
        lpt = shutil.which("lpt")
        launcher = [lpt] if lpt else [sys.executable, "-m", "lpt_server"]
    return launcher + [
        "serve", "--model", model, "--port", "{port}", "--store", str(store), "--no-demo-adapters",
        "--admin-key", ADMIN, "--log-level", "warning", *extra]


def lpt_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LPT_")}


class Server(ServerProcess):
    """`lpt serve` with a fresh store (see lpt_command)."""

    def __init__(self, model: str, store: Path, log: Path, extra: list[str]):
        super().__init__(lpt_command(model, store, extra), log, env=lpt_env())

    def wait_ready(self, timeout=180) -> float:
        return super().wait_ready("/ready", timeout)


def texts(n: int, seed: int, words: tuple[int, int] = (4, 40)) -> list[str]:
    """Distinct texts of words[0]..words[1] words (about 1.2 tokens per word, plus 2 special)."""
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for i in range(n)]


async def warm_up(url: str, tasks: list[str]) -> None:
    """Every adapter loaded (and the model's first-call costs paid) before any clock starts."""
    await send_each(url, [("/v1/classify", {"inputs": "warm up", "task": t}) for t in tasks])


async def closed_loop(url: str, tasks: list[str], bodies: list[str], concurrency: int, time_limit: float) -> dict:
    """One text per request, tasks round-robin (loadgen.closed_loop does the rest)."""
    requests = [("/v1/classify", {"inputs": b, "task": tasks[i % len(tasks)]}) for i, b in enumerate(bodies)]
    return await _closed_loop(url, requests, concurrency, time_limit)


def upload_adapters(url: str, adapters: dict[str, bytes]) -> None:
    """PUT /v1/adapters/{name} for each, as the admin."""
    for task, data in adapters.items():
        r = httpx.put(f"{url}/v1/adapters/{task}", content=data, headers={"Authorization": f"Bearer {ADMIN}"},
                      timeout=60)
        r.raise_for_status()


def start_servers(args, adapters: dict[str, bytes], workdir: Path) -> dict[str, Server]:
    """Both servers up and loaded with every adapter before any clock starts."""
    both = shlex.split(args.server_args)
    modes = {"batched": both, args.baseline_name: both + shlex.split(args.baseline_args)}
    servers = {name: Server(args.model, workdir / f"store-{name}", workdir / f"server-{name}.log", extra)
               for name, extra in modes.items()}
    for name, server in servers.items():
        server.wait_ready()
        print(f"{name}: lpt serve {' '.join(modes[name]) or '(default batching)'} on {server.url}", flush=True)
        upload_adapters(server.url, adapters)
    return servers


def batch_stats(server: Server) -> dict:
    metrics = httpx.get(server.url + "/metrics").text
    stats = {x.split()[0]: float(x.split()[1]) for x in metrics.splitlines()
             if x.startswith(("lpt_batch_rows_sum", "lpt_batch_rows_count", "lpt_batch_tasks_sum",
                              "lpt_batch_tasks_count", "lpt_inference_duration_seconds_sum"))}
    if not stats.get("lpt_batch_rows_count"):
        return {}
    return {"batch_rows_sum": stats["lpt_batch_rows_sum"], "batches": stats["lpt_batch_rows_count"],
            "batch_tasks_sum": stats["lpt_batch_tasks_sum"],
            "inference_s": stats.get("lpt_inference_duration_seconds_sum", 0.0)}


def run(args, adapters: dict[str, bytes], workdir: Path) -> dict:
    """For each task count, the batched and the unbatched server back to back (the machine's
    load drifts; interleaving keeps each pair of numbers comparable)."""
    servers = start_servers(args, adapters, workdir)
    results = {name: {} for name in servers}
    names = sorted(adapters)
    try:
        for n_tasks in args.tasks:
            bodies = texts(args.requests, seed=n_tasks, words=tuple(args.words))
            for name, server in servers.items():
                asyncio.run(warm_up(server.url, names[:n_tasks]))
                before = batch_stats(server)
                res = asyncio.run(closed_loop(server.url, names[:n_tasks], bodies, args.concurrency,
                                              args.time_limit))
                after = batch_stats(server)
                if after and after["batches"] > before.get("batches", 0):
                    n = after["batches"] - before.get("batches", 0)
                    res["mean_batch_rows"] = round((after["batch_rows_sum"] - before.get("batch_rows_sum", 0)) / n, 2)
                    res["mean_batch_tasks"] = round((after["batch_tasks_sum"] - before.get("batch_tasks_sum", 0)) / n, 2)
                res["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
                res["load_avg_1m"] = round(os.getloadavg()[0], 2)
                results[name][str(n_tasks)] = res
                print(f"  {name:9s} tasks={n_tasks:<3d} {res['req_per_s']:8.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                      f"p95 {res['p95_ms']:7.1f}  p99 {res['p99_ms']:7.1f}  batch {res.get('mean_batch_rows', 0):5.1f} rows "
                      f"/ {res.get('mean_batch_tasks', 0):4.1f} tasks  rss {res['server_peak_rss_mb']:.0f} MB  "
                      f"({res['requests']} ok, {res['errors']} errors, load {res['load_avg_1m']})", flush=True)
    finally:
        for name, server in servers.items():
            results[name]["exit_code"] = server.stop()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--requests", type=int, default=300, help="requests per config (upper bound)")
    p.add_argument("--time-limit", type=float, default=30.0, help="seconds per config (upper bound)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--words", type=int, nargs=2, default=[4, 40], metavar=("MIN", "MAX"),
                   help="words per text (uniform); shorter texts favour batching more")
    p.add_argument("--server-args", default="", help="extra `lpt serve` flags for both servers (split as a shell would)")
    p.add_argument("--baseline-args", default="--max-batch-rows 1", help="`lpt serve` flags of the baseline")
    p.add_argument("--baseline-name", default="unbatched")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "http.json")
    args = p.parse_args(argv)
    base = args.baseline_name

    print(f"making {max(args.tasks)} adapters on {args.model} ...", flush=True)
    adapters = make_adapters(args.model, max(args.tasks))
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, adapters, Path(tmp))

    print(f"\n{'tasks':>5} | {'batched req/s':>13} | {base + ' req/s':>15} | {'ratio':>5} | "
          f"{'p50 b/u ms':>15} | {'p99 b/u ms':>15}")
    ratios = {}
    for n in map(str, args.tasks):
        b, u = results["batched"][n], results[base][n]
        ratios[n] = round(b["req_per_s"] / u["req_per_s"], 2) if u["req_per_s"] else None
        print(f"{n:>5} | {b['req_per_s']:13.1f} | {u['req_per_s']:15.1f} | {ratios[n]:5.2f} | "
              f"{b['p50_ms']:6.1f} / {u['p50_ms']:6.1f} | {b['p99_ms']:6.1f} / {u['p99_ms']:6.1f}")
    out = {"model": args.model, "concurrency": args.concurrency, "requests_per_config": args.requests,
           "words_per_text": args.words, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "server_args": args.server_args, "baseline": {"name": base, "args": args.baseline_args},
           "time_limit_s": args.time_limit, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                        "python": platform.python_version()},
           "results": results, f"throughput_ratio_batched_over_{base}": ratios,
           "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(args.out, out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

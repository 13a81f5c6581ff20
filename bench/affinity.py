"""Task-affinity routing vs least connections: adapter loads and tail latency behind nginx.

    OMP_NUM_THREADS=1 python bench/affinity.py                  # 2,000 adapters, 500 resident per replica
    OMP_NUM_THREADS=1 python bench/affinity.py --requests 1000  # a quicker look

Two real `lpt serve` replicas (one torch thread each) share one adapter store holding `--adapters`
seeded adapters (the embedded model, k=3, L=5, 2 labels), each replica keeping at most
`--resident` of them (LPT_MAX_RESIDENT_ADAPTERS). A real nginx runs docker/nginx.conf in front of
them, rendered twice: as shipped (task affinity: consistent hash on the task of
/v1/tasks/{task}/classify) and with affinity off (every request to the least busy replica).

Each mode gets fresh replicas (empty LRUs), then the same request list: one short text per
request to /v1/tasks/{task}/classify, the task drawn from a Zipf distribution (exponent
`--zipf`) over the adapters, `--concurrency` closed-loop clients. The first `--warmup` requests
fill the LRUs off the clock; then `--requests` are measured: adapter loads per 1,000 requests
(every replica's lpt_adapter_load_duration_seconds_count), p50/p99 latency, and each replica's
share of the requests (affinity puts a hot task's whole traffic on one replica). Writes
bench/results/affinity.json.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))      # nginx_conf.py: docker/nginx.conf made runnable
from http_load import Server, texts  # noqa: E402
from loadgen import closed_loop, free_port, http_get  # noqa: E402
from nginx_conf import find_nginx, nginx_args, write  # noqa: E402
from timing import command_line, write_json  # noqa: E402

MODES = {"least_conn": False, "affinity": True}


def fill_store(store: Path, model: str, n: int, distinct: int = 16) -> list[str]:
    """n adapters written straight into the store (no replica loads them on the way). `distinct`
    seeded files shared out among the names: a replica loads each name on its own all the same
    (its LRU is by name), and making 2,000 adapters would take longer than the benchmark."""
    from common import adapter_file

    from lpt import Backbone
    from lpt_server.store import Store

    bb = Backbone.load(model)
    files = [adapter_file(bb, f"seed{i}", i) for i in range(distinct)]
    s = Store(store)
    names = [f"t{i:04d}" for i in range(n)]
    for i, name in enumerate(names):
        s.put(name, files[i % distinct])
    return names


def zipf_tasks(names: list[str], n: int, exponent: float, seed: int) -> list[str]:
    """n task names, rank r drawn with weight 1 / r**exponent (rank order shuffled: no name is hot by position)."""
    rng = random.Random(seed)
    ranked = names[:]
    rng.shuffle(ranked)
    weights = [1 / (r + 1) ** exponent for r in range(len(ranked))]
    return rng.choices(ranked, weights=weights, k=n)


def scrape(port: int) -> dict[str, float]:
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics on {port}: {status}")
    text = body.decode()

    def value(pattern: str) -> float:
        return sum(float(v) for v in re.findall(pattern + r" (\S+)$", text, re.M))

    return {"loads": value(r"^lpt_adapter_load_duration_seconds_count"),
            "load_s": value(r"^lpt_adapter_load_duration_seconds_sum"),
            "resident": value(r"^lpt_adapters_resident"),
            "answered": value(r'^lpt_requests_total\{[^}]*status="200"[^}]*\}')}


class Nginx:
    def __init__(self, upstreams: list[str], workdir: Path, affinity: bool):
        nginx = find_nginx()
        if nginx is None:
            raise SystemExit("nginx is not installed (scripts/install.sh --test installs it)")
        self.port = free_port()
        conf = write(upstreams, self.port, workdir, nginx=nginx, affinity=affinity)
        self.proc = subprocess.Popen(nginx_args(nginx, conf, workdir), stdout=subprocess.DEVNULL,
                                     stderr=(workdir / "stderr.log").open("wb"))
        deadline = time.monotonic() + 20
        while http_get(self.port, "/health")[0] != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"nginx did not start; see {workdir}/error.log")
            time.sleep(0.1)

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(10)


def run_mode(args, affinity: bool, store: Path, tasks: list[str], bodies: list[str], workdir: Path) -> dict:
    extra = ["--max-resident-adapters", str(args.resident), "--threads", "1", "--max-wait-ms", "2"]
    replicas = [Server(args.model, store, workdir / f"replica-{n}.log", extra) for n in "ab"]
    try:
        for r in replicas:
            r.wait_ready()
        lb = Nginx([f"127.0.0.1:{r.port}" for r in replicas], workdir / "nginx", affinity)
        try:
            reqs = [(f"/v1/tasks/{t}/classify", {"inputs": b}) for t, b in zip(tasks, bodies)]
            warm = asyncio.run(closed_loop(f"http://127.0.0.1:{lb.port}", reqs[:args.warmup], args.concurrency, 600))
            before = [scrape(r.port) for r in replicas]
            res = asyncio.run(closed_loop(f"http://127.0.0.1:{lb.port}", reqs[args.warmup:], args.concurrency, 600))
            after = [scrape(r.port) for r in replicas]
        finally:
            lb.stop()
    finally:
        for r in replicas:
            r.stop()
    loads = sum(a["loads"] - b["loads"] for a, b in zip(after, before))
    load_s = sum(a["load_s"] - b["load_s"] for a, b in zip(after, before))
    answered = [a["answered"] - b["answered"] for a, b in zip(after, before)]
    return {**res, "warmup_errors": warm["errors"],
            "adapter_loads": int(loads),
            "adapter_loads_per_1000_requests": round(1000 * loads / max(1, res["requests"]), 1),
            "adapter_load_ms_mean": round(1000 * load_s / loads, 2) if loads else None,
            "resident_after": [int(a["resident"]) for a in after],
            "share_per_replica": [round(x / max(1, sum(answered)), 3) for x in answered]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--adapters", type=int, default=2000)
    p.add_argument("--resident", type=int, default=500, help="LPT_MAX_RESIDENT_ADAPTERS of each replica")
    p.add_argument("--zipf", type=float, default=1.0, help="exponent of the task distribution")
    p.add_argument("--warmup", type=int, default=4000, help="requests before the clock starts")
    p.add_argument("--requests", type=int, default=2000, help="requests measured per mode")
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)

    n = args.warmup + args.requests
    # the store on tmpfs where there is one: writing 2,000 adapters costs an fsync each on a disk
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        names = fill_store(work / "store", args.model, args.adapters)
        print(f"{len(names)} adapters written in {time.perf_counter() - t0:.1f} s", flush=True)
        tasks = zipf_tasks(names, n, args.zipf, seed=1)
        bodies = texts(n, seed=2, words=(4, 8))
        distinct = len(set(tasks[args.warmup:]))
        results = {}
        for mode, affinity in MODES.items():
            results[mode] = run_mode(args, affinity, work / "store", tasks, bodies, work / mode)
            r = results[mode]
            print(f"{mode:10s} {r['adapter_loads_per_1000_requests']:6.1f} loads/1000 req  "
                  f"{r['req_per_s']:6.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                  f"share {r['share_per_replica']}  ({r['requests']} ok, {r['errors']} errors)", flush=True)
    out = {"command": command_line(), "model": args.model, "adapters": args.adapters,
           "resident_per_replica": args.resident, "replicas": 2, "zipf_exponent": args.zipf,
           "warmup_requests": args.warmup, "measured_requests": args.requests,
           "distinct_tasks_measured": distinct, "concurrency": args.concurrency, "words_per_text": [4, 8],
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "results": results,
           "loads_ratio_affinity_over_least_conn": round(
               results["affinity"]["adapter_loads_per_1000_requests"]
               / max(1e-9, results["least_conn"]["adapter_loads_per_1000_requests"]), 3),
           "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"wrote {write_json('affinity', out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a training job costs serving: classify latency with and without a job running.

    python bench/train_while_serving.py                      # 15 s per phase, concurrency 1 and 8
    python bench/train_while_serving.py --seconds 30 --concurrency 1 4 16
    python bench/train_while_serving.py --nice 0 --out train_while_serving-nice0   # the job at serving's priority

Starts one `lpt serve --threads 1 --train-threads 1` (the real model, 4 seeded adapters), then for
each concurrency runs a closed loop of single-text classify requests (tasks round-robin, every
text distinct, so the layer-k cache never helps) in three phases:

- idle: no training job;
- training: a job (`POST /v1/train`, the tweet sentiment training split, `lpt train` defaults,
  epochs enough to outlast the phase) is running and stepping; its steps per second are read
  from its progress;
- idle again: after the job was cancelled (DELETE), to see the machine did not drift.

Reports req/s and p50/p99 latency per phase and the training/idle ratios; writes
bench/results/train_while_serving.json. Not a test: numbers depend on the machine (a job takes a
core of its own: on a 2-core machine, serving and training share what is left).
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import export  # noqa: E402
from http_load import ADMIN, Server, closed_loop, make_adapters, texts, upload_adapters, warm_up  # noqa: E402
from timing import command_line, write_json  # noqa: E402

KEY = {"Authorization": f"Bearer {ADMIN}"}


def start_job(url: str, train_csv: Path, epochs: int) -> str:
    with open(train_csv, "rb") as f:
        r = httpx.post(f"{url}/v1/train", headers=KEY, data={"task": "bench-trained", "epochs": str(epochs)},
                       files={"data": ("train.csv", f.read())}, timeout=120)
    r.raise_for_status()
    return r.json()["id"]


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/train/{job_id}", headers=KEY, timeout=30).json()


def wait_stepping(url: str, job_id: str, timeout: float = 600) -> dict:
    """Until the job is past its start-up (imports, model load, the layer-k state cache) and steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = job(url, job_id)
        if j["state"] not in ("queued", "running"):
            raise RuntimeError(f"the job ended before the measurement: {j['state']} {j['error']}")
        if j["progress"]["step"] > 0:
            return j
        time.sleep(0.5)
    raise RuntimeError("the job did not start stepping in time")


async def phase(url: str, tasks: list[str], concurrency: int, seconds: float, seed: int) -> dict:
    bodies = texts(100_000, seed, (8, 30))
    return await closed_loop(url, tasks, bodies, concurrency, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase [15]")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="closed-loop clients [1 8]")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--epochs", type=int, default=50, help="epochs of the job (it is cancelled when measured) [50]")
    p.add_argument("--nice", type=int, default=10, help="the job's niceness (LPT_TRAIN_NICE) [10]")
    p.add_argument("--out", default="train_while_serving", help="results name under bench/results/")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lpt-bench-train-"))
    train_csv = export(work / "data", ["sentiment"])["sentiment"]["train"]
    adapters = make_adapters(args.model, args.tasks)
    server = Server(args.model, work / "store", work / "server.log", ["--threads", "1", "--train-threads", "1",
                                                                                  "--train-nice", str(args.nice)])
    results = {"command": command_line(), "machine": platform.processor() or platform.machine(),
               "seconds_per_phase": args.seconds, "train_nice": args.nice, "runs": []}
    try:
        server.wait_ready()
        upload_adapters(server.url, adapters)
        tasks = sorted(adapters)
        asyncio.run(warm_up(server.url, tasks))
        for c in args.concurrency:
            run = {"concurrency": c}
            run["idle"] = asyncio.run(phase(server.url, tasks, c, args.seconds, seed=c))
            job_id = start_job(server.url, train_csv, args.epochs)
            started = wait_stepping(server.url, job_id)
            t0, s0 = time.monotonic(), started["progress"]["step"]
            run["training"] = asyncio.run(phase(server.url, tasks, c, args.seconds, seed=100 + c))
            during = job(server.url, job_id)
            run["train_steps_per_s"] = round((during["progress"]["step"] - s0) / (time.monotonic() - t0), 2)
            httpx.delete(f"{server.url}/v1/train/{job_id}", headers=KEY, timeout=30).raise_for_status()
            time.sleep(2.0)                                      # the child stops at its next step
            run["idle_after"] = asyncio.run(phase(server.url, tasks, c, args.seconds, seed=200 + c))
            for q in ("p50_ms", "p99_ms"):
                run[f"{q}_ratio"] = round(run["training"][q] / run["idle"][q], 2)
            run["req_per_s_ratio"] = round(run["training"]["req_per_s"] / run["idle"]["req_per_s"], 2)
            results["runs"].append(run)
            print(f"concurrency {c}: " + "; ".join(
                f"{name} {run[name]['req_per_s']} req/s p50 {run[name]['p50_ms']} ms p99 {run[name]['p99_ms']} ms"
                for name in ("idle", "training", "idle_after"))
                + f"; training at {run['train_steps_per_s']} steps/s", flush=True)
    finally:
        server.stop()
    print(f"wrote {write_json(args.out, results)}")


if __name__ == "__main__":
    main()

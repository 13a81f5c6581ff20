"""Upload to first answer, over HTTP: how soon a freshly uploaded adapter serves.

    python bench/upload.py                  # 20 repeats, two replicas sharing one store
    python bench/upload.py --repeats 5      # a quick look

Starts two real `lpt serve` processes (A and B) on one adapter store, as replicas behind a load
balancer would be. Each repeat, with every text distinct (the layer-k cache never helps):

- same replica: PUT a new adapter to A; the clock starts when the PUT returns and stops when A
  answers a classify request for that task (target: < 200 ms);
- other replica: PUT another new adapter to A, then ask B, which has never seen it (B finds it in
  the store on its first request for the unknown name and loads it);
- replaced, other replica: PUT a new version (new labels) of an adapter B is already serving, then
  ask B every 20 ms until its answer carries the new labels. B re-reads a served name's pointer at
  most every 0.5 s (`recheck_s`), so this one is bounded by that, not by loading;
- baseline: the same request to an adapter already resident, in the same repeat.

Requests go one at a time on a keep-alive connection per server (http.client), so the numbers are
latencies, not throughput. Writes bench/results/upload.{json,png}.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import ADMIN, Server, texts  # noqa: E402
from timing import command_line, pyplot, write_json  # noqa: E402

TARGET_MS = 200.0


class Client:
    """One keep-alive connection to one server."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def request(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        return r.status, r.read()

    def put_adapter(self, name: str, data: bytes) -> None:
        status, body = self.request("PUT", f"/v1/adapters/{name}", data,
                                    {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/octet-stream"})
        if status not in (200, 201):
            raise RuntimeError(f"PUT {name}: {status} {body[:300]!r}")

    def classify(self, task: str, text: str) -> str:
        status, body = self.request("POST", "/v1/classify", json.dumps({"inputs": text, "task": task}).encode(),
                                    {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"classify {task}: {status} {body[:300]!r}")
        return json.loads(body)["results"][0][0]["label"]


def adapter_factory(model: str):
    """fn(name, seed, label_prefix) -> adapter bytes (k=3, L=5, 2 labels, random weights)."""
    from common import adapter_file

    from lpt import Backbone

    bb = Backbone.load(model)
    return lambda name, seed, prefix="label": adapter_file(bb, name, seed, [f"{prefix}0", f"{prefix}1"])


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def summary(xs: list[float]) -> dict:
    qs = statistics.quantiles(xs, n=20, method="inclusive") if len(xs) > 1 else [xs[0]] * 19
    return {"median_ms": round(statistics.median(xs), 2), "p5_ms": round(qs[0], 2), "p95_ms": round(qs[18], 2),
            "max_ms": round(max(xs), 2), "n": len(xs)}


def run(args, workdir: Path) -> dict[str, list[float]]:
    make = adapter_factory(args.model)
    store = workdir / "store"
    servers = [Server(args.model, store, workdir / f"server-{n}.log", []) for n in "AB"]
    try:
        for s in servers:
            s.wait_ready()
        a, b = (Client(s.url) for s in servers)
        a.put_adapter("warm", make("warm", 10_000))
        a.put_adapter("swap", make("swap", 10_001, "old"))
        words = texts(6 * args.repeats + 4, seed=7, words=(12, 12))   # one length: the rows cost alike
        for c in (a, b):                                                # first-call costs paid off the clock
            c.classify("warm", words.pop())
            c.classify("swap", words.pop())
        times: dict[str, list[float]] = {k: [] for k in ("upload", "same_replica", "warm_same", "other_replica",
                                                         "warm_other", "replaced_other")}

        def clock(key: str, fn, *fn_args) -> None:
            t0 = time.perf_counter()
            fn(*fn_args)
            times[key].append(ms_since(t0))

        for i in tqdm(range(args.repeats), desc="repeats", file=sys.stderr):
            data_a, data_b = make(f"new{i}", i), make(f"far{i}", 1000 + i)
            clock("upload", a.put_adapter, f"new{i}", data_a)
            clock("same_replica", a.classify, f"new{i}", words.pop())   # the clock starts as the PUT returned
            clock("warm_same", a.classify, "warm", words.pop())
            a.put_adapter(f"far{i}", data_b)
            clock("other_replica", b.classify, f"far{i}", words.pop())
            clock("warm_other", b.classify, "warm", words.pop())

            prefix = "new" if i % 2 == 0 else "old"                     # flip the labels each repeat
            a.put_adapter("swap", make("swap", 20_000 + i, prefix))
            t0 = time.perf_counter()
            text = words.pop()
            while b.classify("swap", text)[:3] != prefix:
                time.sleep(0.02)
            times["replaced_other"].append(ms_since(t0))
        return times
    finally:
        for s in servers:
            s.stop()


def plot(times: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(times)
    ax.boxplot([times[n] for n in names], orientation="horizontal", tick_labels=[n.replace("_", " ") for n in names])
    ax.axvline(TARGET_MS, color="red", linestyle="--", label=f"target {TARGET_MS:.0f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale)")
    ax.set_title("lpt serve: adapter upload, then first answer (two replicas, one store)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--name", default="upload", help="results file name under bench/results/")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lpt-bench-upload-") as tmp:
        times = run(args, Path(tmp))
    stats = {k: summary(v) for k, v in times.items()}
    print(f"\n{'':16} {'median ms':>10} {'p5':>8} {'p95':>8} {'max':>8}")
    for k, s in stats.items():
        print(f"{k:16} {s['median_ms']:10.1f} {s['p5_ms']:8.1f} {s['p95_ms']:8.1f} {s['max_ms']:8.1f}")
    met = stats["same_replica"]["p95_ms"] < TARGET_MS
    print(f"\nupload returned -> first answer, same replica: median {stats['same_replica']['median_ms']:.1f} ms, "
          f"p95 {stats['same_replica']['p95_ms']:.1f} ms (target < {TARGET_MS:.0f} ms at p95: "
          f"{'met' if met else 'MISSED'}); other replica: median {stats['other_replica']['median_ms']:.1f} ms")
    result = {"command": command_line(), "model": args.model, "repeats": args.repeats,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
              "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "target_ms": TARGET_MS, "target_met_p95": met,
              "summary": stats, "times_ms": {k: [round(x, 2) for x in v] for k, v in times.items()}}
    path = write_json(args.name, result)
    plot(times, path.with_suffix(".png"))
    print(f"wrote {path} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

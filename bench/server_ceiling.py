"""What the server itself costs: `lpt serve` with an engine that answers at once, against the
real engine on the same rows, in one run.

    python bench/server_ceiling.py                     # tweets and news, 1 and 32 texts per request
    python bench/server_ceiling.py --seconds 10 --json bench/results/server_ceiling-x.json

For each shape (text kind x texts per request; 16 seeded adapters, tasks round robin, every text
distinct):

  ceiling  bench/instant_serve.py (the real `lpt serve`: HTTP, JSON, tokenizing with each
           adapter's template, the batcher, the engine worker, the responses; only the model's
           forward replaced by an instant answer), a closed loop of 32 clients: rows/s, p50/p99,
           the server's CPU ms per request and per row;
  engine   lpt.Engine.predict on the same texts, already tokenized, in batches of 32 rows, in
           this process (the real model, one torch thread): rows/s.

ceiling rows/s over engine rows/s says how far the server's own work is from being the limit:
well above 1 on a CPU (the model is), near or under 1 where the engine is fast (a GPU): then the
server's per-request work is what to make cheaper. Texts: tweets (bench/data.py's sentiment
rows, short) and BBC news cut at 126 tokens (every row at the token limit: the truncation path).
Writes bench/results/server_ceiling.json.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import distinct_texts  # noqa: E402
from gpu_http import requests_for  # noqa: E402
from http_load import lpt_command, lpt_env, make_adapters, upload_adapters  # noqa: E402
from loadgen import ServerProcess, closed_loop, send_each  # noqa: E402
from timing import RESULTS, command_line, write_json  # noqa: E402

from lpt import Backbone, Engine, Row, load_adapter  # noqa: E402

TOKENS = 126                    # text tokens of a news row (128 with [CLS] and [SEP])
SHAPES = (("tweets", 1), ("tweets", 32), ("news", 1), ("news", 32))


def instant_server(model: str, store: Path, log: Path) -> ServerProcess:
    flags = ["--threads", "1", "--cache-entries", "0", "--max-input-tokens", str(TOKENS), "--max-batch-rows", "1024",
             "--max-batch-tokens", str(1024 * (TOKENS + 2)), "--queue-limit", "4096"]
    launcher = [sys.executable, str(Path(__file__).resolve().parent / "instant_serve.py")]
    return ServerProcess(lpt_command(model, store, flags, launcher), log, env=lpt_env())


def engine_rows_per_s(engine: Engine, adapters: list, texts: list[str], rows: int) -> float:
    """The real engine on `rows` of the texts (tokenized before the clock, as the server hands
    them over), 32 rows per call."""
    batch = [Row(adapters[i % len(adapters)], t, encoded=adapters[i % len(adapters)].encoder.encode(t, max_text_tokens=TOKENS))
             for i, t in enumerate(texts[:rows])]
    engine.predict(batch[:32])
    t0 = time.perf_counter()
    for i in range(0, len(batch), 32):
        engine.predict(batch[i:i + 32])
    return len(batch) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0, help="per shape")
    ap.add_argument("--engine-rows", type=int, default=128)
    ap.add_argument("--json", type=Path, default=RESULTS / "server_ceiling.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names_bytes = make_adapters(args.model, args.tasks)
    tasks = sorted(names_bytes)
    bb = Backbone.load(args.model)
    adapters = [load_adapter(names_bytes[t], bb) for t in tasks]
    engine = Engine(bb, cache_entries=0)
    pool = {kind: distinct_texts(kind, 4000) for kind in ("tweets", "news")}
    out = {"command": command_line(), "tasks": args.tasks, "concurrency": args.concurrency, "shapes": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = instant_server(args.model, Path(tmp) / "store", Path(tmp) / "server.log")
        try:
            server.wait_ready("/ready", 180)
            upload_adapters(server.url, names_bytes)
            asyncio.run(send_each(server.url, requests_for(tasks, pool["tweets"], len(tasks), 1)))
            for kind, per_request in SHAPES:
                texts = pool[kind]
                reqs = requests_for(tasks, texts, 100_000 // per_request, per_request)
                res = asyncio.run(closed_loop(server.url, reqs, args.concurrency, args.seconds, server))
                rows_per_s = res["req_per_s"] * per_request
                eng = engine_rows_per_s(engine, adapters, texts, args.engine_rows)
                shape = {"texts": kind, "per_request": per_request, **res, "rows_per_s": round(rows_per_s, 1),
                         "server_cpu_ms_per_row": round(res["server_cpu_ms_per_req"] / per_request, 3),
                         "engine_rows_per_s": round(eng, 1), "ceiling_over_engine": round(rows_per_s / eng, 2)}
                out["shapes"].append(shape)
                print(f"{kind:6} x{per_request:2d}: ceiling {res['req_per_s']:7.1f} req/s {rows_per_s:8.1f} rows/s "
                      f"(p50 {res['p50_ms']:.0f} p99 {res['p99_ms']:.0f} ms, {res['server_cpu_ms_per_req']:.2f} CPU ms/req, "
                      f"{shape['server_cpu_ms_per_row']:.3f} per row); engine {eng:7.1f} rows/s; "
                      f"ceiling / engine {shape['ceiling_over_engine']:.2f} ({res['errors']} errors)", flush=True)
        finally:
            out["server_exit_code"] = server.stop()
    write_json(args.json, out)
    print(f"wrote {args.json}")
    return 1 if any(s["errors"] for s in out["shapes"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The HTTP path of the GPU benchmark: `lpt serve` on the plan's device, requests of several texts.

One server per engine worker count of the plan (the kit's model, the layer-k cache off, batches
up to 1024 rows) with `tasks` adapters uploaded; for each concurrency a closed loop (loadgen.closed_loop) of requests of
`http_texts_per_request` texts for one task each, tasks round robin, texts cut to the plan's
tokens per row. Reports req/s, rows/s, p50/p99 and the server's mean batch.
"""
from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

from http_load import Server, batch_stats, make_adapters, upload_adapters
from loadgen import closed_loop, send_each

HTTP_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}


def server_flags(plan) -> list[str]:
    batch = max(plan.batches)
    in_flight = max(plan.http_concurrency) * plan.http_texts_per_request   # rows the clients can have queued
    return ["--device", plan.device, "--dtype", HTTP_DTYPE[plan.device], "--cache-entries", "0",
            "--max-batch-rows", str(batch), "--max-batch-tokens", str(batch * plan.tokens_per_row),
            "--max-input-tokens", str(plan.tokens_per_row - 2), "--queue-limit", str(max(4 * batch, 2 * in_flight))]


def requests_for(tasks: list[str], texts: list[str], n: int, per_request: int) -> list[tuple[str, dict]]:
    """n classify requests of per_request consecutive texts (cycling), tasks round robin."""
    out = []
    for i in range(n):
        start = (i * per_request) % len(texts)
        inputs = [texts[(start + j) % len(texts)] for j in range(per_request)]
        out.append(("/v1/classify", {"inputs": inputs, "task": tasks[i % len(tasks)]}))
    return out


def check_loopback() -> None:
    """Fail at once, saying why, where loopback is down (a fresh network namespace)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        try:
            socket.create_connection(srv.getsockname(), timeout=5).close()
        except OSError as e:
            raise RuntimeError(f"cannot connect on loopback ({e}): bring it up (ip link set lo up)") from e


def http_runs(kit: Path, plan, texts: list[str]) -> dict:
    check_loopback()
    model = str(kit / "minilm")
    adapters = make_adapters(model, plan.tasks)
    flags = server_flags(plan)
    out = {"model": "minilm", "dtype": HTTP_DTYPE[plan.device], "tasks": plan.tasks,
           "texts_per_request": plan.http_texts_per_request, "tokens_per_row": plan.tokens_per_row,
           "server_flags": flags, "runs": [], "servers": []}
    for workers in plan.http_workers:
        server_out = one_server(model, plan, texts, adapters, flags + ["--workers", str(workers)])
        out["servers"].append({k: v for k, v in server_out.items() if k != "runs"} | {"workers": workers})
        out["runs"] += [r | {"workers": workers} for r in server_out["runs"]]
    return out


def one_server(model: str, plan, texts: list[str], adapters: dict[str, bytes], flags: list[str]) -> dict:
    """One server, every concurrency of the plan."""
    tasks = sorted(adapters)
    out: dict = {"flags": flags, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(model, Path(tmp) / "store", Path(tmp) / "server.log", flags)
        try:
            out["ready_s"] = round(server.wait_ready(), 1)
            upload_adapters(server.url, adapters)
            asyncio.run(send_each(server.url, requests_for(tasks, texts, len(tasks), plan.http_texts_per_request)))
            for c in plan.http_concurrency:
                reqs = requests_for(tasks, texts, plan.http_requests, plan.http_texts_per_request)
                before = batch_stats(server)
                res = asyncio.run(closed_loop(server.url, reqs, c, plan.http_seconds, server))
                after = batch_stats(server)
                res["concurrency"] = c
                res["rows_per_s"] = round(res["req_per_s"] * plan.http_texts_per_request, 1)
                if after.get("batches", 0) > before.get("batches", 0):
                    res["mean_batch_rows"] = round((after["batch_rows_sum"] - before.get("batch_rows_sum", 0))
                                                   / (after["batches"] - before.get("batches", 0)), 1)
                out["runs"].append(res)
                print(f"http {flags[-2:]} concurrency {c:3d}: {res['req_per_s']:8.1f} req/s, {res['rows_per_s']:9.1f} "
                      f"rows/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, batch "
                      f"{res.get('mean_batch_rows', 0)} rows ({res['errors']} errors)", flush=True)
        finally:
            out["server_exit_code"] = server.stop()
            if any(r["errors"] for r in out["runs"]) or out["server_exit_code"] not in (0, -15):
                out["server_log_tail"] = (Path(tmp) / "server.log").read_text(errors="replace")[-3000:]
    return out

"""The real server app on a tiny random BERT, for in-process tests: adapter files, the app, a client.

A plain module with a unique name, not conftest.py: `from conftest import ...` resolves to
whichever conftest pytest imported last, which breaks when several test folders are collected
in one run (e.g. `pytest tests/integration tests/unit/client`).
"""
from __future__ import annotations

import asyncio
import json
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

import torch
from fastapi import FastAPI
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lpt import Backbone, new_adapter
from lpt.adapter import CONFIG_KEY, adapter_bytes
from lpt_server import Settings, create_app
from lpt_server.runtime import engine_for


ADMIN = "admin-secret"


def adapter_file(bb, task: str, labels=("neg", "pos"), seed: int = 0, layer: int = 2, prompt_length: int = 4,
                 **config) -> bytes:
    torch.manual_seed(seed)
    return adapter_bytes(new_adapter(bb, task=task, labels=list(labels), layer=layer, prompt_length=prompt_length,
                                     **config).eval())


class HookedEngine:
    """A real engine with a hook run before each batch (sleep, record, raise): fault injection."""

    def __init__(self, engine, before=None):
        self.engine, self.before = engine, before
        self.backbone, self.cache = engine.backbone, engine.cache
        self.batches: list[list] = []      # the rows of each batch the engine ran

    def predict(self, rows):
        self.batches.append(list(rows))
        if self.before is not None:
            self.before(rows)
        return self.engine.predict(rows)


@asynccontextmanager
async def running(tmp_path, bb, engine_factory=None, demo_dir=None, **overrides):
    """A started app (lifespan run) and a client for it. One engine worker unless `workers` is
    given: the tests that hold the engine busy to fill the queue count on one batch at a time."""
    settings = Settings(**{"store": tmp_path / "store", "demo_adapters": False, "admin_key": ADMIN, "workers": 1,
                           **overrides})
    factory = engine_factory or (lambda s: engine_for(bb, s))
    app = create_app(settings, engine_factory=factory, demo_dir=demo_dir)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lpt.test", timeout=30) as client:
            yield app, client


def admin(key: str = ADMIN) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def upload(client, name: str, data: bytes, key: str = ADMIN):
    return await client.put(f"/v1/adapters/{name}", content=data, headers=admin(key))


def with_config(data: bytes, **changes) -> bytes:
    """The same adapter file with its config (kept in the safetensors header) changed."""
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + header_len])["__metadata__"]
    config = {**json.loads(metadata[CONFIG_KEY]), **changes}
    return st_save(st_load(data), metadata={**metadata, CONFIG_KEY: json.dumps(config)})


def tiny_app(store: Path, bb: Backbone, **settings) -> FastAPI:
    """A complete app (not started) on `bb`, with an empty store and no demo adapters."""
    settings = Settings(**{"store": store, "demo_adapters": False, **settings})
    return create_app(settings, engine_factory=lambda s: engine_for(bb, s), demo_dir=None)


class Held:
    """A function made to wait in a worker thread until released (at most 5 s), to show that the
    event loop answers other requests meanwhile: `order` records what finished first."""

    def __init__(self, fn):
        self.fn, self.release, self.order = fn, threading.Event(), []

    def __call__(self, *args, **kwargs):
        self.release.wait(5)                      # on the event loop this would block /health for 5 s
        self.order.append("held call")
        return self.fn(*args, **kwargs)

    async def health_answers_meanwhile(self, client, request) -> httpx.Response:
        """Send `request` (a coroutine that reaches the held call), check that /health answers
        before the held call returns, then release it and return the request's response."""
        sent = asyncio.create_task(request)
        await asyncio.sleep(0.05)
        assert (await client.get("/health")).status_code == 200
        self.order.append("health")
        self.release.set()
        response = await sent
        assert self.order == ["health", "held call"]
        return response


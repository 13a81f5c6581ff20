"""Fixtures for the server's in-process tests: the app on a tiny random BERT (no LM head,
like minilm), a temp store, and an httpx client over ASGITransport (no sockets)."""
from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import pytest
import torch

from lpt import Engine, new_adapter
from lpt.adapter import adapter_bytes
from lpt_server import Settings, create_app
from tiny import make_backbone

ADMIN = "admin-secret"


@pytest.fixture(scope="session")
def tiny_bb():
    return make_backbone("bert", lm_head=False)


@pytest.fixture(scope="session")
def other_bb():
    """Same architecture and sizes, other weights: its adapters must be refused."""
    return make_backbone("bert", lm_head=False, seed=1)


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
    """A started app (lifespan run) and a client for it."""
    settings = Settings(**{"store": tmp_path / "store", "demo_adapters": False, "admin_key": ADMIN, **overrides})
    factory = engine_factory or (lambda s: Engine(bb, s.cache_entries))
    app = create_app(settings, engine_factory=factory, demo_dir=demo_dir)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lpt.test", timeout=30) as client:
            yield app, client


def admin(key: str = ADMIN) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def upload(client, name: str, data: bytes, key: str = ADMIN):
    return await client.put(f"/v1/adapters/{name}", content=data, headers=admin(key))

"""Each input is tokenized once, in the parse stage, and carried to the engine with its row."""
from __future__ import annotations

import threading

import pytest

from lpt.encoding import TextEncoder

from tiny_server import adapter_file, running, upload

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_inputs_are_encoded_once_per_distinct_encoder_and_never_on_the_engine_thread(
        tmp_path, tiny_bb, monkeypatch):
    calls = []
    real = TextEncoder.encode_many

    def counting(self, items, *args, **kwargs):
        calls.append((threading.current_thread().name, len(items), self.template))
        return real(self, items, *args, **kwargs)

    async with running(tmp_path, tiny_bb) as (app, c):
        for name in ("a", "b"):                                    # the same encoder (no template)
            assert (await upload(c, name, adapter_file(tiny_bb, name))).status_code == 201
        templated = adapter_file(tiny_bb, "c", template="review: {text}")
        assert (await upload(c, "c", templated)).status_code == 201
        monkeypatch.setattr(TextEncoder, "encode_many", counting)
        r = await c.post("/v1/classify", json={"inputs": ["one", "two", "three"], "tasks": ["a", "b", "c"]})
        assert r.status_code == 200, r.text
    assert sorted(n for _, n, _ in calls) == [3, 3], calls           # a+b share one call, c has its own
    assert {t for _, _, t in calls} == {None, "review: {text}"}
    assert not any(name == "lpt-engine" for name, _, _ in calls), calls

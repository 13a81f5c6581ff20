"""The adapter API and the store: upload, replace, delete, validation, names, replicas, startup."""
import asyncio
import io
import os
import pickle

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tiny_server import HookedEngine, adapter_file, admin, running, upload
from lpt import Engine, Row, load_adapter
from lpt_server.store import Store
from lpt_server.store_layout import MARKER, ROOT_MARKER

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def listing(root):
    """Every file under the store with its size (but the store's own root marker): what 'the
    store is unchanged' compares."""
    out = []
    for d, _, files in os.walk(root):
        out += [(os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f))) for f in files]
    return sorted(f for f in out if f[0] != ROOT_MARKER)


async def test_upload_list_get_replace_delete(tmp_path, tiny_bb):
    v1, v2 = adapter_file(tiny_bb, "sent", seed=1), adapter_file(tiny_bb, "sent", seed=2)
    async with running(tmp_path, tiny_bb) as (app, c):
        assert (await c.get("/v1/adapters")).json() == {"adapters": []}
        r = await upload(c, "sent", v1)
        assert r.status_code == 201
        info = r.json()
        assert info["name"] == "sent" and info["labels"] == ["neg", "pos"] and info["layer"] == 2
        assert info["prompt_length"] == 4 and info["head_kind"] == "linear" and info["generator"] == "npg"
        assert info["size_bytes"] == len(v1) and info["resident"] is True and len(info["version"]) == 64
        assert (await c.get("/v1/adapters/sent")).json() == info
        assert (await c.get("/v1/adapters")).json() == {"adapters": [info]}
        # same bytes again: still "replaced" (200), same version
        assert (await upload(c, "sent", v1)).status_code == 200
        r = await upload(c, "sent", v2)
        assert r.status_code == 200 and r.json()["version"] != info["version"]
        files = sorted(p.name for p in (tmp_path / "store" / "sent").iterdir())
        assert files == sorted([MARKER, "current", f"{info['version']}.safetensors", f"{r.json()['version']}.safetensors"])
        assert (await c.delete("/v1/adapters/sent", headers=admin())).status_code == 204
        assert (await c.get("/v1/adapters/sent")).status_code == 404
        assert (await c.delete("/v1/adapters/sent", headers=admin())).status_code == 404
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "sent"})).status_code == 404
        assert listing(tmp_path / "store") == []


async def test_admin_key_rules(tmp_path, tiny_bb):
    data = adapter_file(tiny_bb, "sent")
    async with running(tmp_path, tiny_bb, admin_key=None) as (app, c):
        r = await upload(c, "sent", data, key="anything")
        assert r.status_code == 403
        assert r.json()["error"]["type"] == "writes_disabled"      # no key helps: clients say so
        assert r.json()["error"]["message"].startswith("adapter writes are disabled: start the server with LPT_ADMIN_KEY")
    async with running(tmp_path, tiny_bb, api_key="inference") as (app, c):
        assert (await c.put("/v1/adapters/sent", content=data)).status_code == 401
        assert (await upload(c, "sent", data, key="wrong")).status_code == 403
        assert (await upload(c, "sent", data, key="inference")).status_code == 403   # the API key is not enough
        assert (await c.delete("/v1/adapters/sent")).status_code == 401
        assert listing(tmp_path / "store") == []
        assert (await upload(c, "sent", data)).status_code == 201
        assert (await c.delete("/v1/adapters/sent", headers=admin("wrong"))).status_code == 403


def _wrong_shape(bb):
    data = adapter_file(bb, "sent")
    tensors = st_load(data)
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3, 3)
    header = data[8:8 + int.from_bytes(data[:8], "little")]
    import json
    meta = json.loads(header)["__metadata__"]
    return st_save(tensors, metadata=meta)


def _torch_save(bb):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("case,status,words", [
    ("text", 400, "not a safetensors file"),
    ("empty", 400, "too short"),
    ("pickle", 400, "pickle"),
    ("torch_save", 400, "pickle"),
    ("plain_safetensors", 400, "not an lpt adapter"),
    ("wrong_shape", 400, "has shape [3, 3]"),
    ("other_base_model", 400, "base model weights differ"),
    ("oversized", 413, "LPT_MAX_ADAPTER_BYTES"),
])
async def test_bad_uploads_are_refused_and_store_unchanged(tmp_path, tiny_bb, other_bb, case, status, words):
    good = adapter_file(tiny_bb, "sent")
    bodies = {
        "text": b"hello, this is not an adapter",
        "empty": b"",
        "pickle": pickle.dumps({"w": [1, 2, 3]}),
        "torch_save": _torch_save(tiny_bb),
        "plain_safetensors": st_save({"w": torch.zeros(2)}),
        "wrong_shape": _wrong_shape(tiny_bb),
        "other_base_model": adapter_file(other_bb, "sent"),
        "oversized": good + b"\0" * 100,
    }
    async with running(tmp_path, tiny_bb, max_adapter_bytes=len(good) + 50) as (app, c):
        await upload(c, "existing", good)
        before = listing(tmp_path / "store")
        for name in ("existing", "newname"):
            r = await upload(c, name, bodies[case])
            assert r.status_code == status, r.text
            assert words in r.json()["error"]["message"], r.json()
            assert listing(tmp_path / "store") == before
        if case == "wrong_shape":
            assert r.json()["error"]["type"] == "invalid_adapter" and r.json()["error"]["problems"]
        # the existing adapter still serves, unchanged
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "existing"})).status_code == 200


@pytest.mark.parametrize("path", ["/v1/adapters/sent%0A", "/v1/adapters/sent%0D%0A", "/v1/adapters/sent%09",
                                  "/v1/tasks/sent%0A/classify", "/v1/train/job%7F"])
async def test_a_control_character_in_the_path_never_reaches_an_adapter_by_another_name(tmp_path, tiny_bb, path):
    """Starlette's `$` matches before a final newline: `DELETE /v1/adapters/sent%0A` reached the
    route as `sent` and deleted it. A path with a control character is a 400 for any method."""
    async with running(tmp_path, tiny_bb) as (app, c):
        assert (await upload(c, "sent", adapter_file(tiny_bb, "sent"))).status_code == 201
        before = listing(tmp_path)
        for method in ("GET", "PUT", "DELETE", "POST"):
            r = await c.request(method, path, content=adapter_file(tiny_bb, "sent"), headers=admin())
            assert r.status_code == 400, (method, r.text)
            assert "the request path holds a control character (%" in r.json()["error"]["message"]
        assert listing(tmp_path) == before
        assert (await c.get("/v1/adapters/sent")).status_code == 200


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "%2E%2E", "a%2Fb", "a%20b", "a$b", ".hidden", "-x", "x" * 65,
                                  "sent%00", "%C3%A9t%C3%A9"])
async def test_bad_adapter_names(tmp_path, tiny_bb, name):
    async with running(tmp_path, tiny_bb) as (app, c):
        before = listing(tmp_path)
        r = await c.put(f"/v1/adapters/{name}", content=adapter_file(tiny_bb, "x"), headers=admin())
        assert r.status_code in (400, 404), r.text
        if r.status_code == 400:      # a control character is refused before any route: bad_request
            assert r.json()["error"]["type"] == ("bad_request" if "%00" in name else "invalid_name")
        assert listing(tmp_path) == before
        assert (await c.get(f"/v1/adapters/{name}")).status_code in (400, 404)
        assert (await c.delete(f"/v1/adapters/{name}", headers=admin())).status_code in (400, 404)
        assert listing(tmp_path) == before


async def test_replacing_an_adapter_under_load_answers_old_or_new_never_an_error(tmp_path, tiny_bb):
    v1, v2 = adapter_file(tiny_bb, "sent", seed=1), adapter_file(tiny_bb, "sent", seed=2)
    texts = [f"great film w{i}" for i in range(40)]
    expect = {}
    for tag, data in (("v1", v1), ("v2", v2)):
        m = load_adapter(data, tiny_bb)
        for t, p in zip(texts, Engine(tiny_bb, 0).predict([Row(m, t) for t in texts])):
            expect[(tag, t)] = p.scores
    engine = HookedEngine(Engine(tiny_bb, 0), before=lambda rows: __import__("time").sleep(0.03))
    async with running(tmp_path, tiny_bb, engine_factory=lambda s: engine, max_batch_rows=4) as (app, c):
        await upload(c, "sent", v1)

        async def ask(t):
            return t, await c.post("/v1/classify", json={"inputs": t, "task": "sent", "raw_scores": True})

        first = [asyncio.create_task(ask(t)) for t in texts[:20]]
        await asyncio.sleep(0.02)                    # some answered, some in the engine, some queued
        assert (await upload(c, "sent", v2)).status_code == 200
        assert sum(not t.done() for t in first) > 0  # the replace happened with requests in flight
        tasks = first + [asyncio.create_task(ask(t)) for t in texts[20:]]
        seen = set()
        for t, r in await asyncio.gather(*tasks):
            assert r.status_code == 200, r.text
            scores = r.json()["results"][0][0]["scores"]
            match = [tag for tag in ("v1", "v2") if scores == pytest.approx(expect[(tag, t)], abs=1e-5)]
            assert match, f"{t}: answer matches neither version"
            seen.add(match[0])
        assert seen == {"v1", "v2"}
        r = await c.post("/v1/classify", json={"inputs": texts[0], "task": "sent", "raw_scores": True})
        assert r.json()["results"][0][0]["scores"] == pytest.approx(expect[("v2", texts[0])], abs=1e-5)


async def test_another_replica_sees_uploads_replacements_and_deletes(tmp_path, tiny_bb, monkeypatch):
    v1, v2 = adapter_file(tiny_bb, "sent", seed=1), adapter_file(tiny_bb, "sent", seed=2)
    async with running(tmp_path, tiny_bb) as (app1, one), running(tmp_path, tiny_bb) as (app2, two):
        body = {"inputs": "great film", "task": "sent", "raw_scores": True}
        assert (await two.post("/v1/classify", json=body)).status_code == 404
        r1 = await upload(one, "sent", v1)
        r = await two.post("/v1/classify", json=body)         # unknown name: checked at once
        assert r.status_code == 200
        assert (await two.get("/v1/adapters/sent")).json()["version"] == r1.json()["version"]
        r2 = await upload(one, "sent", v2)
        await asyncio.sleep(app2.state.runtime.registry.recheck_s + 0.1)
        assert (await two.get("/v1/adapters/sent")).json()["version"] == r2.json()["version"]
        want = Engine(tiny_bb, 0).predict([Row(load_adapter(v2, tiny_bb), "great film")])[0]
        r = await two.post("/v1/classify", json=body)
        assert r.json()["results"][0][0]["scores"] == pytest.approx(want.scores, abs=1e-5)
        assert [a["name"] for a in (await two.get("/v1/adapters")).json()["adapters"]] == ["sent"]
        assert (await one.delete("/v1/adapters/sent", headers=admin())).status_code == 204
        await asyncio.sleep(app2.state.runtime.registry.recheck_s + 0.1)
        assert (await two.post("/v1/classify", json=body)).status_code == 404
        assert (await two.get("/v1/adapters")).json() == {"adapters": []}


async def test_store_recheck_setting_bounds_how_stale_another_replica_is(tmp_path, tiny_bb):
    """LPT_STORE_RECHECK_MS: 0 re-reads the pointer on every request; a long one keeps serving the
    version it has (until the interval passes)."""
    v1, v2 = adapter_file(tiny_bb, "sent", labels=("a", "b"), seed=1), adapter_file(tiny_bb, "sent", labels=("c", "d"), seed=2)
    body = {"inputs": "great film", "task": "sent"}
    async with running(tmp_path, tiny_bb) as (_, one), \
            running(tmp_path, tiny_bb, store_recheck_ms=0) as (_, eager), \
            running(tmp_path, tiny_bb, store_recheck_ms=60_000) as (_, lazy):
        await upload(one, "sent", v1)
        for c in (eager, lazy):
            assert (await c.post("/v1/classify", json=body)).json()["results"][0][0]["label"] in ("a", "b")
        await upload(one, "sent", v2)
        assert (await eager.post("/v1/classify", json=body)).json()["results"][0][0]["label"] in ("c", "d")
        assert (await lazy.post("/v1/classify", json=body)).json()["results"][0][0]["label"] in ("a", "b")


async def test_startup_scan_skips_and_reports_bad_files(tmp_path, tiny_bb, other_bb):
    store = Store(tmp_path / "store")
    store.put("good", adapter_file(tiny_bb, "good"))
    store.put("foreign", adapter_file(other_bb, "foreign"))
    store.put("garbage", b"not an adapter at all")
    (tmp_path / "store" / "orphan").mkdir()                  # no pointer: ignored
    (tmp_path / "store" / "orphan" / "x.safetensors").write_bytes(b"x")
    async with running(tmp_path, tiny_bb) as (app, c):
        assert [a["name"] for a in (await c.get("/v1/adapters")).json()["adapters"]] == ["good"]
        problems = (await c.get("/info")).json()["adapters"]["problems"]
        assert set(problems) == {"foreign", "garbage"}
        assert any("base model weights differ" in p for p in problems["foreign"])
        r = await c.post("/v1/classify", json={"inputs": "x", "task": "garbage"})
        assert r.status_code == 404 and "cannot serve on this model" in r.json()["error"]["message"]
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "good"})).status_code == 200
        # a valid upload over a bad one fixes it
        assert (await upload(c, "garbage", adapter_file(tiny_bb, "garbage"))).status_code == 200
        assert "garbage" not in (await c.get("/info")).json()["adapters"]["problems"]


async def test_demo_adapters_seed_only_new_names(tmp_path, tiny_bb, other_bb):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo-sent.safetensors").write_bytes(adapter_file(tiny_bb, "demo-sent", seed=5))
    (demo / "kept.safetensors").write_bytes(adapter_file(tiny_bb, "kept", seed=6))
    (demo / "foreign.safetensors").write_bytes(adapter_file(other_bb, "foreign"))
    Store(tmp_path / "store").put("kept", adapter_file(tiny_bb, "kept", seed=7))
    kept_version = Store(tmp_path / "store").current("kept")
    async with running(tmp_path, tiny_bb, demo_adapters=True, demo_dir=demo) as (app, c):
        names = [a["name"] for a in (await c.get("/v1/adapters")).json()["adapters"]]
        assert names == ["demo-sent", "kept"]
        assert (await c.get("/v1/adapters/kept")).json()["version"] == kept_version
        assert (await c.get("/info")).json()["adapters"]["demo_seeded"] == ["demo-sent"]
    # no demo directory at all (none are shipped yet): fine
    async with running(tmp_path / "2", tiny_bb, demo_adapters=True, demo_dir=tmp_path / "missing") as (app, c):
        assert (await c.get("/v1/adapters")).json() == {"adapters": []}


async def test_resident_adapters_are_a_bounded_lru(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, max_resident_adapters=2) as (app, c):
        for i in range(3):
            await upload(c, f"t{i}", adapter_file(tiny_bb, f"t{i}", seed=i))
        for name in ("t0", "t1", "t2", "t0"):
            assert (await c.post("/v1/classify", json={"inputs": "x", "task": name})).status_code == 200
        resident = {a["name"]: a["resident"] for a in (await c.get("/v1/adapters")).json()["adapters"]}
        assert resident == {"t0": True, "t1": False, "t2": True}
        metrics = (await c.get("/metrics")).text
        assert "lpt_adapters_resident 2.0" in metrics and "lpt_adapters_registered 3.0" in metrics

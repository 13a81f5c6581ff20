"""The adapter store through the API: it owns only what it wrote, two replicas race on one name
without a 500 or a lie, a full disk is a 507 that changes nothing, leftovers are swept."""
import asyncio
import random

import pytest

from store_files import age, failing_fsync, kill_volume, tree
from tiny_server import adapter_file, admin, running, upload
from lpt_server import runtime as runtime_module
from lpt_server import store as store_module
from lpt_server.store import Store
from lpt_server.store_layout import GRACE_S, MARKER, NotAStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_a_name_whose_folder_the_store_did_not_write_is_refused_and_left_intact(tmp_path, tiny_bb):
    """`lpt serve --store ./adapters` from the repository root used to PUT then DELETE the library."""
    root = tmp_path / "store"
    Store(root)
    (root / "lpt").mkdir()
    (root / "lpt" / "__init__.py").write_text("the library\n")
    before = tree(root)
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await upload(c, "lpt", adapter_file(tiny_bb, "lpt"))
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_name"
        assert "did not write" in r.json()["error"]["message"] and "another name" in r.json()["error"]["message"]
        assert (await c.delete("/v1/adapters/lpt", headers=admin())).status_code == 404
        assert (await c.get("/v1/adapters")).json() == {"adapters": []}
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "lpt"})).status_code == 404
    assert tree(root) == before


async def test_names_differing_only_in_case_stay_apart_on_a_case_folding_volume(folding_volume, tiny_bb):
    """A store folder on macOS or a Docker Desktop bind mount: "SENTiment" opens the folder of
    "sentiment" there. It must not serve, replace or delete it, nor load a copy of it."""
    data = adapter_file(tiny_bb, "sentiment")
    async with running(folding_volume, tiny_bb) as (app, c):
        assert (await upload(c, "sentiment", data)).status_code == 201
        answer = (await c.post("/v1/classify", json={"inputs": "x", "task": "sentiment"})).json()
        before = tree(folding_volume / "store")
        for other in ("SENTiment", "Sentiment"):
            r = await c.post("/v1/classify", json={"inputs": "x", "task": other})
            assert r.status_code == 404 and "sentiment" in r.json()["error"]["message"], r.text
            assert (await c.get(f"/v1/adapters/{other}")).status_code == 404
            r = await upload(c, other, adapter_file(tiny_bb, other))
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_name", r.text
            assert "case" in r.json()["error"]["message"]
            assert (await c.delete(f"/v1/adapters/{other}", headers=admin())).status_code == 404
        assert tree(folding_volume / "store") == before
        registry = app.state.runtime.registry
        assert registry.registered == 1 and registry.resident_count == 1      # no copy under another spelling
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "sentiment"})).json() == answer


async def test_a_store_on_a_dead_mount_is_unavailable_and_loaded_adapters_keep_serving(folding_volume, tiny_bb):
    """A network or FUSE mount whose server dies answers ENOTCONN to everything: the store is a
    503 naming the error (never a 500), /info and the probe say it is down, and what is loaded
    keeps serving, as with an S3 store that cannot be reached."""
    async with running(folding_volume, tiny_bb, store_recheck_ms=0) as (app, c):
        assert (await upload(c, "sentiment", adapter_file(tiny_bb, "sentiment"))).status_code == 201
        answer = (await c.post("/v1/classify", json={"inputs": "x", "task": "sentiment"})).json()
        kill_volume(folding_volume)
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "sentiment"})).json() == answer
        for r in (await c.post("/v1/classify", json={"inputs": "x", "task": "other"}),
                  await c.get("/v1/adapters"),
                  await c.get("/v1/adapters/other"),
                  await upload(c, "sentiment", adapter_file(tiny_bb, "sentiment", seed=1)),
                  await c.delete("/v1/adapters/sentiment", headers=admin())):
            assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable", r.text
            assert "Transport endpoint is not connected" in r.json()["error"]["message"], r.text
        store = (await c.get("/info")).json()["store"]
        assert store["up"] is False and "not connected" in store["error"]
        assert app.state.runtime.registry.store.ping().up is False       # the probe's call: no raise
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "sentiment"})).json() == answer


async def test_a_directory_that_is_not_a_store_stops_the_server_at_start(tmp_path, tiny_bb):
    root = tmp_path / "store"
    (root / "lpt").mkdir(parents=True)
    (root / "lpt" / "__init__.py").write_text("the library\n")
    before = tree(root)
    with pytest.raises(NotAStore, match="refusing to use .*store as the adapter store"):
        async with running(tmp_path, tiny_bb):
            pass
    assert tree(root) == before


async def test_put_and_delete_on_two_replicas_never_500_and_tell_the_truth(tmp_path, tiny_bb):
    """Two replicas on one store, one name, concurrent PUTs and DELETEs: every answer is a 2xx or
    a 404, created (201) and deleted (204) alternate, and the store ends consistent."""
    versions = [adapter_file(tiny_bb, "x", seed=i) for i in range(3)]
    rng = random.Random(0)
    gate = asyncio.Semaphore(8)
    async with running(tmp_path, tiny_bb, store_recheck_ms=0) as (_, one), \
            running(tmp_path, tiny_bb, store_recheck_ms=0) as (_, two):
        async def op(client, put: bool, data: bytes):
            async with gate:
                if put:
                    return "put", (await upload(client, "x", data)).status_code
                return "delete", (await client.delete("/v1/adapters/x", headers=admin())).status_code

        ops = [op(rng.choice((one, two)), rng.random() < 0.55, rng.choice(versions)) for _ in range(160)]
        results = await asyncio.gather(*ops)
        statuses = {s for _, s in results}
        assert statuses <= {200, 201, 204, 404}, statuses
        created = sum(1 for kind, s in results if kind == "put" and s == 201)
        deleted = sum(1 for kind, s in results if kind == "delete" and s == 204)
        assert deleted <= created <= deleted + 1, (created, deleted)
        assert created > 3 and deleted > 3
        store = Store(tmp_path / "store")
        current = store.current("x")
        assert (current is not None) == (created == deleted + 1)
        for c in (one, two):
            r = await c.get("/v1/adapters/x")
            assert (r.json()["version"] if r.status_code == 200 else None) == current
        if current is not None:
            assert store.path("x", current).is_file()


@pytest.mark.parametrize("replace", [False, True])
async def test_a_full_disk_is_a_507_that_changes_nothing(tmp_path, tiny_bb, monkeypatch, replace):
    old, new = adapter_file(tiny_bb, "sent", seed=1), adapter_file(tiny_bb, "sent", seed=2)
    async with running(tmp_path, tiny_bb) as (app, c):
        if replace:
            before_info = (await upload(c, "sent", old)).json()
        before = tree(tmp_path / "store")
        failing_fsync(monkeypatch, 1)
        r = await upload(c, "sent", new)
        assert r.status_code == 507 and r.json()["error"]["type"] == "insufficient_storage"
        assert "disk is full" in r.json()["error"]["message"] and "nothing was changed" in r.json()["error"]["message"]
        assert tree(tmp_path / "store") == before
        listed = (await c.get("/v1/adapters")).json()["adapters"]
        assert listed == ([before_info] if replace else [])
        monkeypatch.undo()
        assert (await upload(c, "sent", new)).status_code == (200 if replace else 201)


async def test_the_server_sweeps_leftovers_at_start_and_periodically(tmp_path, tiny_bb, monkeypatch):
    root = tmp_path / "store"
    store = Store(root)
    kept = store.put("a", adapter_file(tiny_bb, "a")).version
    dead_upload = root / "a" / f".{'0' * 64}.safetensors.k9_x1.tmp"   # a writer killed mid-upload
    dead_upload.write_bytes(b"\0" * 50_000)
    age(dead_upload, GRACE_S + 1)
    async with running(tmp_path, tiny_bb) as (app, c):
        assert not dead_upload.exists()
        assert (await c.get("/v1/adapters/a")).json()["version"] == kept
    monkeypatch.setattr(runtime_module, "SWEEP_EVERY_S", 0.05)
    monkeypatch.setattr(store_module, "GRACE_S", 0.0)
    async with running(tmp_path, tiny_bb) as (app, c):
        later = root / "a" / ".current.p2_q3.tmp"
        later.write_bytes(b"")
        for _ in range(100):
            if not later.exists():
                break
            await asyncio.sleep(0.05)
        assert not later.exists()
        assert sorted(p.name for p in (root / "a").iterdir()) == sorted([MARKER, "current", f"{kept}.safetensors"])


async def test_info_and_metrics_say_where_the_store_is_and_that_it_answers(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        assert (await c.get("/info")).json()["store"] == {"kind": "directory", "location": str(tmp_path / "store"),
                                                          "up": True, "error": None}
        assert "\nlpt_store_up 1.0\n" in (await c.get("/metrics")).text

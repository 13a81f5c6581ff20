"""What the registry makes of the store: a strange stored file is reported and skipped, never a
broken listing; an unknown task's 404 says which tasks exist; a version new to a replica is
read and parsed once."""
import logging

import pytest

from tiny_server import adapter_file, running, upload, with_config
from lpt import AdapterConfig, read_adapter
from lpt_server import registry as registry_module
from lpt_server.registry import Entry, Registry, check_file, describe_config
from lpt_server.store import Store

pytestmark = pytest.mark.integration


def strange_files(bb) -> dict[str, bytes]:
    """Configs an older server or another tool may have stored: valid enough to get past the
    file checks, not describable by the API (or crashing the checks themselves)."""
    good = adapter_file(bb, "x")
    fingerprint = read_adapter(good).config.base_model
    return {
        "task-dict": with_config(good, task={"not": "a string"}),
        "id-number": with_config(good, base_model={**fingerprint, "id": 5}),
        "base-list": with_config(good, base_model=["not", "a", "dict"]),
    }


@pytest.mark.asyncio
async def test_strange_stored_files_are_reported_and_skipped_never_a_broken_listing(tmp_path, tiny_bb, caplog):
    store = Store(tmp_path / "store")
    store.put("good", adapter_file(tiny_bb, "good"))
    strange = strange_files(tiny_bb)
    for name, data in strange.items():
        store.put(name, data)
    caplog.set_level(logging.WARNING, logger="lpt_server.registry")
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.get("/v1/adapters")
        assert r.status_code == 200 and [a["name"] for a in r.json()["adapters"]] == ["good"]
        for name in strange:
            assert (await c.get(f"/v1/adapters/{name}")).status_code == 404
            r = await c.post("/v1/classify", json={"inputs": "x", "task": name})
            assert r.status_code == 404 and "cannot serve" in r.json()["error"]["message"]
            assert any(name in rec.getMessage() and "unusable" in rec.getMessage() for rec in caplog.records)
        assert set((await c.get("/info")).json()["adapters"]["problems"]) == set(strange)
        # written while serving (another replica, an older version): the same
        store.put("late", strange["task-dict"])
        r = await c.get("/v1/adapters")
        assert r.status_code == 200 and [a["name"] for a in r.json()["adapters"]] == ["good"]
        assert "late" in (await c.get("/info")).json()["adapters"]["problems"]
        # and an upload of one is a 400 that stores nothing
        for name, data in strange.items():
            r = await upload(c, f"new-{name}", data)
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_adapter", r.text
            assert store.current(f"new-{name}") is None


@pytest.mark.asyncio
async def test_a_config_string_that_is_not_text_is_refused_and_never_breaks_a_listing(tmp_path, tiny_bb):
    """JSON lets a header spell a lone surrogate (\\ud800): no JSON response can carry it. An
    upload of one is a 400 that stores nothing; one another tool stored is a problem, skipped."""
    good = adapter_file(tiny_bb, "good")
    bad = {"labels": with_config(good, labels=["\ud800", "b"]), "task": with_config(good, task="\udc00x")}
    store = Store(tmp_path / "store")
    store.put("stored-bad", bad["task"])
    async with running(tmp_path, tiny_bb) as (app, c):
        for field, data in bad.items():
            r = await upload(c, f"new-{field}", data)
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_adapter", r.text
            assert "lone surrogate" in r.text and store.current(f"new-{field}") is None
        assert (await upload(c, "good", good)).status_code == 201
        r = await c.get("/v1/adapters")
        assert r.status_code == 200 and [a["name"] for a in r.json()["adapters"]] == ["good"]
        assert "stored-bad" in (await c.get("/info")).json()["adapters"]["problems"]
        r = await c.post("/v1/classify", json={"inputs": "x", "task": "stored-bad"})
        assert r.status_code == 404 and "cannot serve" in r.json()["error"]["message"]


@pytest.mark.asyncio
async def test_an_unknown_task_404_lists_the_known_tasks(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.post("/v1/classify", json={"inputs": "x", "task": "nope"})
        assert r.status_code == 404 and "no adapters yet" in r.json()["error"]["message"]
        for name in ("g", "f", "e", "d", "c", "b", "a"):
            assert (await upload(c, name, adapter_file(tiny_bb, name))).status_code == 201
        for r in (await c.post("/v1/classify", json={"inputs": "x", "task": "nope"}),
                  await c.post("/v1/tasks/nope/classify", json={"inputs": "x"}),
                  await c.get("/v1/adapters/nope")):
            msg = r.json()["error"]["message"]
            assert r.status_code == 404 and "'nope'" in msg
            assert "known tasks: a, b, c, d, e and 2 more" in msg and "GET /v1/adapters" in msg


@pytest.mark.asyncio
async def test_unknown_task_names_leave_nothing_behind(tmp_path, tiny_bb):
    """Any client can ask for any name: a thousand unknown ones keep no per-name state (a lock
    per name asked for used to stay forever)."""
    async with running(tmp_path, tiny_bb) as (app, c):
        assert (await upload(c, "a", adapter_file(tiny_bb, "a"))).status_code == 201
        registry = app.state.runtime.registry
        for i in range(1000):
            r = await c.post("/v1/classify", json={"inputs": "x", "task": f"nope-{i}"})
            assert r.status_code == 404
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "a"})).status_code == 200
        assert len(registry._name_locks) == 0 and list(registry._entries) == ["a"]


@pytest.mark.asyncio
async def test_a_version_new_to_a_replica_is_read_and_parsed_once(tmp_path, tiny_bb, monkeypatch):
    root = tmp_path / "store"
    other, mine = Store(root), Store(root)          # another replica writes, this one serves
    registry = Registry(mine, tiny_bb, recheck_s=0)
    reads, parses = [], []
    real_read, real_parse = mine.read, registry_module.read_adapter
    monkeypatch.setattr(mine, "read", lambda *a: reads.append(a) or real_read(*a))
    monkeypatch.setattr(registry_module, "read_adapter", lambda d: parses.append(1) or real_parse(d))
    for seed in (1, 2):                             # a new name, then a replacement
        version = other.put("a", adapter_file(tiny_bb, "a", seed=seed)).version
        reads.clear(), parses.clear()
        assert registry.get("a").version == version
        assert (len(reads), len(parses)) == (1, 1)
    reads.clear(), parses.clear()
    registry.get("a")                               # resident: the pointer only
    assert (len(reads), len(parses)) == (0, 0)


def test_a_listing_never_undoes_a_write_made_while_it_was_taken(tmp_path, tiny_bb, monkeypatch):
    """A PUT or DELETE that lands between the store's listing and its use: the listing is older,
    and must not bring back the old version or the deleted name."""
    store = Store(tmp_path / "store")
    registry = Registry(store, tiny_bb)               # the default recheck interval
    registry.put("kept", adapter_file(tiny_bb, "kept", seed=1))
    registry.put("gone", adapter_file(tiny_bb, "gone"))
    real_versions = store.versions

    def listing_then_writes():
        listed = real_versions()
        registry.put("kept", adapter_file(tiny_bb, "kept", seed=2))     # another request, meanwhile
        registry.delete("gone")
        return listed

    monkeypatch.setattr(store, "versions", listing_then_writes)
    new = store.current("kept")
    names = {a["name"]: a["version"] for a in registry.list()}
    assert store.current("kept") != new and names == {"kept": store.current("kept")}
    assert registry.get("kept").version == store.current("kept")
    assert registry.lookup("kept") is not None                         # still resident: not evicted
    with pytest.raises(Exception, match="gone"):
        registry.get("gone")


def test_a_config_the_api_cannot_show_is_a_problem_not_a_crash():
    """Whatever the file checks let through, the description has the API's types or the entry
    has a problem (and is never described)."""
    for odd in ({"task": {"a": 1}}, {"labels": ["a", 2]}, {"layer": True}, {"prompt_length": "4"},
                {"base_model": {"id": 5}}, {"labels": None}):
        cfg = AdapterConfig(**{"task": "t", "labels": ["a", "b"], "layer": 1, "base_model": {"id": "m"}, **odd})
        info, problems = describe_config(cfg)
        assert info == {} and problems, odd
    info, problems = describe_config(AdapterConfig(task="t", labels=["a", "b"], layer=1, base_model=["x"]))
    assert problems == [] and info["base_model"] is None
    shown = Entry("t", "0" * 64, 10, info).describe(resident=False)
    assert shown["labels"] == ["a", "b"] and shown["layer"] == 1 and shown["resident"] is False


def test_a_check_that_crashes_on_a_file_makes_it_a_problem(tiny_bb, monkeypatch):
    def crash(*args):
        raise AttributeError("'list' object has no attribute 'items'")

    monkeypatch.setattr(registry_module, "validate", crash)
    af, info, problems = check_file(adapter_file(tiny_bb, "x"), tiny_bb, None)
    assert af is None and info == {} and "could not be checked" in problems[0] and "AttributeError" in problems[0]


def test_an_evicted_adapter_replaced_by_another_replica_is_loaded_at_its_new_version(tmp_path, tiny_bb):
    """The entry remembers a version checked up to recheck_s ago; another replica's writes removed
    that file (the store keeps the newest two). Loading it was a 404 "changed while loading" for a
    task that existed all along; now the pointer is followed."""
    root = tmp_path / "store"
    other, mine = Store(root), Store(root)
    registry = Registry(mine, tiny_bb, recheck_s=3600, max_resident=1)
    other.put("a", adapter_file(tiny_bb, "a", seed=1))
    other.put("b", adapter_file(tiny_bb, "b"))
    registry.get("a")
    registry.get("b")                                   # "a" is evicted; its entry still says seed 1
    for seed in (2, 3):
        newest = other.put("a", adapter_file(tiny_bb, "a", seed=seed)).version
    assert registry.get("a").version == newest


def test_an_adapter_replaced_faster_than_it_can_be_read_is_a_503_not_a_404(tmp_path, tiny_bb, monkeypatch):
    from lpt_server.errors import status_of
    from lpt_server.stores import StoreUnavailable

    store = Store(tmp_path / "store")
    store.put("a", adapter_file(tiny_bb, "a"))
    registry = Registry(store, tiny_bb, recheck_s=0)
    versions = iter(f"{i:064x}" for i in range(1, 100))

    def replaced_meanwhile(*args):
        raise FileNotFoundError("replaced")
    monkeypatch.setattr(store, "read", replaced_meanwhile)
    monkeypatch.setattr(store, "current", lambda name: next(versions))   # a new version at every look
    with pytest.raises(StoreUnavailable, match="replaced faster than it can be read") as err:
        registry.get("a")
    assert status_of(err.value) == 503
    monkeypatch.undo()
    assert registry.get("a").version == store.current("a")      # not forgotten: served once readable


def test_a_pointer_to_a_missing_file_is_a_deleted_name_not_a_store_outage(tmp_path, tiny_bb):
    """The file a pointer names was removed behind the store's back: that name cannot be served
    (404), and the listing and startup go on without it (a 503 for everyone, before)."""
    store = Store(tmp_path / "store")
    store.put("kept", adapter_file(tiny_bb, "kept"))
    version = store.put("dangling", adapter_file(tiny_bb, "dangling")).version
    (tmp_path / "store" / "dangling" / f"{version}.safetensors").unlink()
    registry = Registry(store, tiny_bb, recheck_s=0)
    registry.scan()                                              # what startup runs
    assert [a["name"] for a in registry.list()] == ["kept"]
    with pytest.raises(Exception, match="dangling") as err:
        registry.get("dangling")
    assert type(err.value).__name__ == "UnknownAdapter"

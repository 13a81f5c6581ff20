"""One contract, two backends: the directory store and the S3 store (a real SeaweedFS) pass the
same tests. Two store objects on one location stand for two replicas."""
import hashlib
import random
import threading

import pytest

from tiny_server import adapter_file
from lpt_server.registry import Registry, UnknownAdapter
from lpt_server.store_layout import FileTooLarge, InvalidName
from lpt_server.stores import AdapterStore, StoreConflict, open_store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["directory", "s3"])
def replicas(request, tmp_path, monkeypatch):
    """open() -> a new store object on one shared location (each call: another replica)."""
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        location = server.url()
    else:
        location = str(tmp_path / "store")
    return lambda: open_store(location, timeout_s=5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_versions_are_content_hashes_and_a_replace_is_not_new(replicas):
    store = replicas()
    assert isinstance(store, AdapterStore)
    assert store.names() == [] and store.current("a") is None
    one, two = b"first adapter", b"second adapter"
    s = store.put("a", one)
    assert (s.version, s.created) == (sha(one), True)
    assert store.current("a") == sha(one) and store.read("a", sha(one)) == one
    s = store.put("a", two)
    assert (s.version, s.created) == (sha(two), False)
    assert store.put("a", two).created is False                  # the same bytes again: still not new
    store.put("b", one)
    assert store.names() == ["a", "b"] and store.current("a") == sha(two)
    assert store.delete("a") is True and store.delete("a") is False
    assert store.current("a") is None and store.names() == ["b"]
    assert store.put("a", one).created is True                   # deleted, then new again


def test_a_replica_sees_another_replicas_writes_at_once(replicas):
    writer, reader = replicas(), replicas()
    writer.put("x", b"v1")
    assert reader.current("x") == sha(b"v1") and reader.read("x", sha(b"v1")) == b"v1"
    writer.put("x", b"v2")
    assert reader.current("x") == sha(b"v2") and reader.read("x", sha(b"v2")) == b"v2"
    assert writer.delete("x")
    assert reader.current("x") is None and reader.names() == []


def test_a_listing_gives_every_current_version_and_rereads_only_what_changed(replicas):
    writer, reader = replicas(), replicas()
    for n in "abc":
        writer.put(n, n.encode())
    assert reader.versions() == {n: sha(n.encode()) for n in "abc"}
    writer.put("b", b"b2")
    writer.delete("c")
    assert reader.versions() == {"a": sha(b"a"), "b": sha(b"b2")}
    if reader.kind == "s3":      # the server lists each pointer's ETag as a GET gives it: one GET, for "a"
        gets, real = [], reader.client.get
        reader.client.get = lambda key: (gets.append(key), real(key))[1]
        writer.put("a", b"a2")
        assert reader.versions() == {"a": sha(b"a2"), "b": sha(b"b2")}
        assert gets == [reader._pointer_key("a")]


def test_bad_names_are_refused_before_any_io(replicas):
    store = replicas()
    for bad in ("../x", "a/b", ".hidden", "", "x" * 65):
        with pytest.raises(InvalidName):
            store.put(bad, b"data")
        with pytest.raises(InvalidName):
            store.current(bad)


def test_concurrent_writers_on_two_replicas_never_lose_an_update(replicas):
    """Threads on two replicas put and delete one name at random: the answers add up (every
    'created' follows a delete or the start), and the pointer always names a readable version."""
    stores = [replicas(), replicas()]
    datas = [f"version {i}".encode() for i in range(3)]
    created, deleted, conflicts, errors = [], [], [], []
    rng = random.Random(1)
    plan = [(rng.choice(stores), rng.random() < 0.6, rng.choice(datas)) for _ in range(60)]
    lock = threading.Lock()

    def work(ops):
        for store, put, data in ops:
            try:
                if put:
                    if store.put("x", data).created:
                        with lock:
                            created.append(1)
                elif store.delete("x"):
                    with lock:
                        deleted.append(1)
            except StoreConflict:
                conflicts.append(1)
            except Exception as e:            # anything else is a broken contract
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(plan[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(deleted) <= len(created) <= len(deleted) + 1, (len(created), len(deleted))
    assert len(created) >= 2
    current = stores[0].current("x")
    assert (current is not None) == (len(created) == len(deleted) + 1)
    if current is not None:
        assert stores[1].read("x", current) == next(d for d in datas if sha(d) == current)


def test_the_registry_serves_either_store_and_follows_other_replicas(replicas, tiny_bb):
    other = replicas()
    registry = Registry(replicas(), tiny_bb, recheck_s=0)
    with pytest.raises(UnknownAdapter):
        registry.get("a")
    v1 = other.put("a", adapter_file(tiny_bb, "a", seed=1)).version
    assert registry.get("a").version == v1                       # a miss asks the store at once
    v2 = other.put("a", adapter_file(tiny_bb, "a", seed=2)).version
    assert registry.get("a").version == v2                       # recheck 0: the replacement at once
    info, created = registry.put("b", adapter_file(tiny_bb, "b"))
    assert created and other.current("b") == info["version"]
    assert [a["name"] for a in registry.list()] == ["a", "b"]
    assert other.delete("a")
    with pytest.raises(UnknownAdapter):
        registry.get("a")


def test_a_version_over_the_readers_limit_is_not_read(replicas, tiny_bb):
    """A version larger than its reader takes (another replica may allow more) is refused with its
    size, read or cached; the registry keeps it as unusable, saying why, and serves the rest."""
    big, small = adapter_file(tiny_bb, "big", prompt_length=8), adapter_file(tiny_bb, "small")
    writer = replicas()
    v = writer.put("big", big).version
    writer.put("small", small)
    assert writer.read("big", v, max_bytes=len(big)) == big          # at the limit: read (and cached)
    for reader in (writer, replicas()):                                # cached, and read afresh
        with pytest.raises(FileTooLarge) as e:
            reader.read("big", v, max_bytes=len(big) - 1)
        assert (e.value.size, e.value.limit) == (len(big), len(big) - 1)
    limit = (len(big) + len(small)) // 2
    registry = Registry(replicas(), tiny_bb, max_bytes=limit)
    with pytest.raises(UnknownAdapter, match=f"adapter is {len(big)} bytes, the limit is {limit} bytes: not read"):
        registry.get("big")
    assert registry.get("small").version == sha(small)
    assert [a["name"] for a in registry.list()] == ["small"]


def test_two_replicas_racing_on_one_name_get_one_win_each_round(replicas):
    """Both replicas create the same new name at the same moment, then both delete it: each
    round exactly one create reports 'new' and exactly one delete reports 'existed'."""
    stores = [replicas(), replicas()]
    for round_ in range(12):
        for op in ("put", "delete"):
            barrier, results = threading.Barrier(2), [None, None]

            def run(i):
                barrier.wait()
                s = stores[i]
                results[i] = s.put("r", f"{round_}-{i}".encode()).created if op == "put" else s.delete("r")

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(results) == [False, True], (round_, op, results)

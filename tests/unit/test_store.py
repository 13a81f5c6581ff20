"""The adapter store alone (files and names, no model): ownership, races between replicas, a full
disk, leftovers of killed writers, and where the default store lives."""
import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lpt_server.settings import Settings
from lpt_server.store import Store
from lpt_server.store_layout import (GRACE_S, MARKER, ROOT_MARKER, InvalidName, NameTaken, NotAStore, StoreFull,
                                     StoreUnavailable, is_store_file)
from store_files import age, failing_fsync, tree

pytestmark = pytest.mark.unit


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_source_tree(root: Path) -> dict:
    """What `--store ./adapters` found in the repository: the library's own package."""
    (root / "lpt").mkdir(parents=True)
    (root / "lpt" / "__init__.py").write_text("from .adapter import *\n")
    (root / "lpt" / "adapter.py").write_text("def load(): ...\n")
    return tree(root)


# ---- ownership --------------------------------------------------------------------------------
def test_a_directory_it_did_not_create_is_refused_at_open_and_left_alone(tmp_path):
    root = tmp_path / "adapters"
    before = make_source_tree(root)
    with pytest.raises(NotAStore) as err:
        Store(root)
    msg = str(err.value)
    assert str(root) in msg and "lpt" in msg and "LPT_STORE" in msg
    assert tree(root) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAStore, match="not a directory"):
        Store(tmp_path / "file")


def test_a_linked_name_folder_is_never_the_stores(tmp_path):
    """The store writes no links: one in its directory (to an empty folder outside, or to another
    store's adapter) is neither written through, served, deleted nor swept."""
    store = Store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    other = Store(tmp_path / "other")
    v = other.put("theirs", b"their adapter").version
    (tmp_path / "store" / "evil").symlink_to(outside)
    (tmp_path / "store" / "link").symlink_to(tmp_path / "other" / "theirs")
    before = tree(tmp_path)
    with pytest.raises(NameTaken, match="did not write"):
        store.put("evil", b"data")
    with pytest.raises(NameTaken, match="did not write"):
        store.put("link", b"data")
    assert store.delete("evil") is False and store.delete("link") is False
    assert store.current("link") is None and store.names() == [] and store.versions() == {}
    assert store.sweep(grace_s=0) == []
    assert tree(tmp_path) == before and other.current("theirs") == v


def test_a_store_directory_removed_under_the_server_is_unavailable_not_a_missing_file(tmp_path):
    """A version replaced meanwhile is a missing file (the reader follows the pointer again); the
    whole store gone is the store unavailable (503), for every call, until it is back."""
    root = tmp_path / "store"
    store = Store(root)
    v = store.put("a", b"one").version
    store.put("a", b"two")
    store.put("a", b"three")                                    # "one" is collected
    with pytest.raises(FileNotFoundError):
        store.read("a", v)
    assert store.health().up
    root.rename(tmp_path / "moved")
    for call in (store.names, store.versions, lambda: store.current("a"), lambda: store.read("a", sha(b"three")),
                 lambda: store.put("b", b"x"), lambda: store.delete("a"), store.sweep):
        with pytest.raises(StoreUnavailable, match="is gone"):   # not "no adapter a": it may come back
            call()
    assert not store.health().up and not store.ping().up
    (tmp_path / "moved").rename(root)
    assert store.names() == ["a"] and store.health().up


def test_a_lock_that_cannot_be_taken_or_released_leaves_no_file_descriptor_open(tmp_path, monkeypatch):
    """flock fails with ENOLCK on an NFS mount without a lock daemon; the mount may die while the
    lock is held. Each failed write leaked a descriptor until the server ran out of them."""
    import fcntl

    from lpt_server import store as store_module

    store = Store(tmp_path / "store")
    store.put("a", b"one")
    fds = len(os.listdir("/proc/self/fd"))
    real_flock = fcntl.flock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(store_module.fcntl, "flock", no_locks)
    for _ in range(5):
        with pytest.raises(StoreUnavailable, match="No locks available"):
            store.put("a", b"two")
    assert len(os.listdir("/proc/self/fd")) == fds
    monkeypatch.setattr(store_module.fcntl, "flock", real_flock)

    def mount_died(name):
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))

    monkeypatch.setattr(store, "_marked", mount_died)
    with pytest.raises(StoreUnavailable, match="not connected"):
        store.put("a", b"three")
    # a descriptor left open here would also hold the name's lock: every later write would hang
    assert len(os.listdir("/proc/self/fd")) == fds
    monkeypatch.undo()
    assert store.put("a", b"four").version == sha(b"four")


def test_an_empty_or_missing_directory_becomes_a_store(tmp_path):
    for root in (tmp_path / "new" / "deep", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        Store(root)
        assert (root / ROOT_MARKER).is_file()
        Store(root)                                             # opening again: same store
    vol = tmp_path / "volume"                                   # a fresh ext4 volume's root
    (vol / "lost+found").mkdir(parents=True)
    Store(vol).put("a", b"data")
    assert Store(vol).names() == ["a"] and (vol / "lost+found").is_dir()


def test_a_store_of_the_earlier_layout_is_adopted(tmp_path):
    """Before markers: <name>/<sha>.safetensors and <name>/current only."""
    root, data = tmp_path / "old", b"old adapter"
    (root / "a").mkdir(parents=True)
    (root / "a" / f"{sha(data)}.safetensors").write_bytes(data)
    (root / "a" / "current").write_text(sha(data) + "\n")
    (root / "b").mkdir()
    (root / "b" / f".current.ab12_x.tmp").write_bytes(b"")   # a killed writer's temp file
    (root / "b" / f"{sha(b'b')}.safetensors").write_bytes(b"b")
    store = Store(root)
    assert (root / "a" / MARKER).is_file() and (root / "b" / MARKER).is_file()
    assert store.names() == ["a"] and store.read("a", store.current("a")) == data
    assert store.delete("a") and not (root / "a").exists()
    # one foreign entry next to old-layout folders: the whole directory is refused
    (root / "a").mkdir()
    (root / "a" / "notes.txt").write_text("mine")
    (root / ROOT_MARKER).unlink()
    with pytest.raises(NotAStore, match="it holds a"):
        Store(root)


def test_a_folder_it_did_not_write_is_never_overwritten_or_deleted(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    make_source_tree(root)
    (root / "lpt" / "current").write_text(sha(b"x") + "\n")     # even a file named like ours
    before = tree(root)
    with pytest.raises(NameTaken, match="did not write") as err:
        store.put("lpt", b"an adapter")
    assert isinstance(err.value, InvalidName)                  # -> 400: the client picks another name
    assert store.delete("lpt") is False
    assert store.names() == [] and store.current("lpt") is None
    assert store.sweep(grace_s=0) == []
    assert tree(root) == before


def test_delete_removes_only_the_files_the_store_wrote(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    store.put("a", b"v1")
    store.put("a", b"v2")
    (root / "a" / "notes.txt").write_text("someone's notes")
    (root / "a" / "sub").mkdir()
    assert store.delete("a") is True
    assert tree(root / "a") == {"notes.txt": b"someone's notes", "sub/": None}
    assert store.names() == [] and store.current("a") is None
    assert store.delete("a") is False
    (root / "a" / "notes.txt").unlink()
    (root / "a" / "sub").rmdir()
    store.put("b", b"v")
    assert store.delete("b") and not (root / "b").exists() and not (root / ".locks" / "b").exists()


def test_an_empty_folder_left_by_a_killed_writer_is_reused(tmp_path):
    store = Store(tmp_path / "store")
    (tmp_path / "store" / "a").mkdir()                        # killed between mkdir and the marker
    assert store.put("a", b"v").created and store.names() == ["a"]


def test_store_files_are_recognised_by_name():
    v = "0" * 64
    for ours in ("current", MARKER, f"{v}.safetensors", f".{v}.safetensors.k2_x9ab.tmp", ".current.abc.tmp",
                 f".{MARKER}.q1.tmp"):
        assert is_store_file(ours), ours
    for theirs in ("__init__.py", "x.safetensors", f"{v}.safetensors.bak", ".current.tmp", "current.tmp", "CURRENT"):
        assert not is_store_file(theirs), theirs


# ---- two replicas, one name ---------------------------------------------------------------------
def test_put_and_delete_race_safely_across_two_stores(tmp_path):
    """Two Store objects (two replicas) on one directory, four writers on one name: no error, no
    pointer to a missing file, and every answer is the truth: a delete that says True removed a
    version, a put that says created found none (so they alternate)."""
    root = tmp_path / "store"
    stores = [Store(root), Store(root)]
    blobs = [bytes([i]) * 20_000 for i in range(3)]
    results, errors, done = [], [], threading.Event()

    def writer(i):
        rng, store = random.Random(i), stores[i % 2]
        for _ in range(80):
            try:
                if rng.random() < 0.55:
                    stored = store.put("x", rng.choice(blobs))
                    results.append(("created" if stored.created else "replaced", stored.version))
                else:
                    results.append(("deleted" if store.delete("x") else "absent", None))
            except Exception as e:                           # noqa: BLE001 - any error fails the test
                errors.append(repr(e))

    def checker():                                           # a consistent look between two writes
        while not done.is_set():
            with stores[1]._locked("x"):
                v = stores[1].current("x")
                if v is not None and not stores[1].path("x", v).is_file():
                    errors.append(f"pointer names missing version {v[:12]}")
            time.sleep(0.001)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    check = threading.Thread(target=checker)
    check.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    check.join()
    assert errors == []
    created = sum(1 for r, _ in results if r == "created")
    deleted = sum(1 for r, _ in results if r == "deleted")
    assert deleted <= created <= deleted + 1, (created, deleted)
    final = stores[0].current("x")
    assert (final is not None) == (created == deleted + 1)
    if final is not None:
        assert stores[0].read("x", final) in blobs
        assert all(is_store_file(p.name) for p in (root / "x").iterdir())
    else:
        assert not (root / "x").exists()
    assert created > 5 and deleted > 5                       # the race was exercised


def test_a_lock_file_removed_by_its_holder_still_excludes_the_next_two_writers(tmp_path):
    """The holder of a gone name's lock removes the file; a writer that was waiting on it must
    not share the name with one that creates the file anew."""
    first, second, third = Store(tmp_path / "store"), Store(tmp_path / "store"), Store(tmp_path / "store")
    inside, leave = threading.Event(), threading.Event()

    def waiter():
        with second._locked("x"):
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=waiter)
    with first._locked("x"):
        t.start()
        time.sleep(0.2)                                      # the waiter has opened the file by now
    assert inside.wait(10)
    with third._locked("x", wait=False) as held:
        assert held is False
    leave.set()
    t.join()


# ---- a full disk --------------------------------------------------------------------------------
@pytest.mark.parametrize("nth", [1, 2, 3])     # the marker, the version file, the pointer of a new name
def test_a_full_disk_on_a_new_name_leaves_nothing(tmp_path, monkeypatch, nth):
    store = Store(tmp_path / "store")
    before = tree(tmp_path / "store")
    failing_fsync(monkeypatch, nth)
    with pytest.raises(StoreFull, match="disk is full.*nothing was changed"):
        store.put("a", b"adapter bytes")
    assert tree(tmp_path / "store") == before


@pytest.mark.parametrize("nth,err", [(1, errno.ENOSPC), (2, errno.ENOSPC), (2, errno.EDQUOT)])
def test_a_full_disk_on_a_replacement_keeps_the_old_version(tmp_path, monkeypatch, nth, err):
    store = Store(tmp_path / "store")
    old = store.put("a", b"old").version
    before = tree(tmp_path / "store")
    failing_fsync(monkeypatch, nth, err)                     # the new version file, then the pointer
    with pytest.raises(StoreFull):
        store.put("a", b"new")
    assert tree(tmp_path / "store") == before and store.current("a") == old


@pytest.fixture
def small_disk(tmp_path):
    """A real 200 KiB filesystem (tmpfs); skipped where mounting is not permitted."""
    d = tmp_path / "small"
    d.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(d)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_a_real_full_disk_changes_nothing_and_the_store_keeps_working(small_disk):
    store = Store(small_disk / "store")
    small = store.put("a", b"s" * 40_000).version
    before = tree(small_disk)
    for name in ("a", "b"):                                 # a replacement, a new name
        with pytest.raises(StoreFull, match="disk is full"):
            store.put(name, b"L" * 300_000)
        assert tree(small_disk) == before
    assert store.current("a") == small
    assert store.put("b", b"t" * 40_000).created             # the space came back
    assert store.delete("a") and store.delete("b")


# ---- leftovers of killed writers ----------------------------------------------------------------
KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from lpt_server.store import Store
    store = Store(sys.argv[1])
    def stall(fd):                           # the upload is written, not yet renamed: wait to be killed
        open(sys.argv[2], "w").close()
        time.sleep(60)
    os.fsync = stall
    store.put("big", b"x" * (8 << 20))
""")


@pytest.mark.slow       # the writer is a fresh Python process (imports torch)
def test_a_writer_killed_mid_upload_leaves_a_temp_file_that_the_sweep_removes(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    kept = store.put("big", b"small version").version
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    temps = [p for p in (root / "big").iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].stat().st_size == 8 << 20
    assert store.sweep() == [] and temps[0].exists()         # younger than the grace period: kept
    age(temps[0], GRACE_S + 1)
    assert store.sweep() == [f"big/{temps[0].name}"]
    assert store.current("big") == kept and sorted(p.name for p in (root / "big").iterdir()) == \
        sorted([MARKER, "current", f"{kept}.safetensors"])


def test_sweep_removes_old_leftovers_only_of_the_stores_own_files(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    cur = store.put("a", b"current").version
    old = [sha(bytes([i]) * 10) for i in range(3)]            # versions no pointer names any more
    for i, v in enumerate(old):
        (root / "a" / f"{v}.safetensors").write_bytes(bytes([i]) * 10)
    orphan_young = root / "a" / f"{sha(b'young')}.safetensors"          # written by a live writer
    orphan_young.write_bytes(b"young")
    for v in old:
        age(root / "a" / f"{v}.safetensors", GRACE_S + 1)
    (root / "a" / "notes.txt").write_text("not ours")
    age(root / "a" / "notes.txt", GRACE_S + 1)
    # a killed upload of a new name: marker and version, no pointer
    store.put("b", b"b")
    (root / "b" / "current").unlink()
    for p in (root / "b").iterdir():
        age(p, GRACE_S + 1)
    # a killed root-marker write and the lock file of a name that is gone
    (root / "..lpt-store.zz9_1.tmp").write_bytes(b"")
    age(root / "..lpt-store.zz9_1.tmp", GRACE_S + 1)
    (root / ".locks" / "gone").touch()
    removed = store.sweep()
    assert sorted(removed) == sorted([f"a/{v}.safetensors" for v in old] +
                                     [f"b/{sha(b'b')}.safetensors", "b/", "..lpt-store.zz9_1.tmp"])
    assert sorted(p.name for p in (root / "a").iterdir()) == \
        sorted([MARKER, "current", f"{cur}.safetensors", orphan_young.name, "notes.txt"])
    assert not (root / "b").exists() and not (root / ".locks" / "gone").exists()
    assert store.names() == ["a"] and store.current("a") == cur


def test_sweep_skips_a_name_being_written(tmp_path):
    root = tmp_path / "store"
    store, other = Store(root), Store(root)
    store.put("a", b"v")
    leftover = root / "a" / ".current.k1_2.tmp"
    leftover.write_bytes(b"")
    age(leftover, GRACE_S + 1)
    with other._locked("a"):
        assert store.sweep() == [] and leftover.exists()
    assert store.sweep() == ["a/.current.k1_2.tmp"]


def test_sweep_drops_a_pointer_to_a_missing_file(tmp_path):
    """What the earlier, unlocked store could leave after a put raced a delete."""
    root = tmp_path / "store"
    store = Store(root)
    v = store.put("a", b"v").version
    (root / "a" / f"{v}.safetensors").unlink()
    age(root / "a" / "current", GRACE_S + 1)
    store.sweep()
    assert store.current("a") is None and not (root / "a").exists()


# ---- where the store is by default --------------------------------------------------------------
def test_the_default_store_is_a_per_user_data_directory_never_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("LPT_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings().store == str(tmp_path / "xdg" / "lpt-serve" / "adapters")
    for xdg in ("", "relative/data"):                      # unset, or relative (the spec ignores it)
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
        assert Settings().store == str(tmp_path / "home" / ".local" / "share" / "lpt-serve" / "adapters")
    monkeypatch.setenv("LPT_STORE", str(tmp_path / "chosen"))
    assert Settings().store == str(tmp_path / "chosen")
    assert Settings(store=tmp_path / "flag").store == str(tmp_path / "flag")
    assert Settings(store="s3://bucket//pre/fix").store == "s3://bucket//pre/fix"   # a URL is kept as written

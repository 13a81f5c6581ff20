"""The registry: adapter name -> current version, and a bounded LRU of loaded adapters.

    registry = Registry(store, backbone, max_resident=256, max_bytes=64 << 20)
    registry.scan()                      # at start: every stored adapter checked, bad ones skipped
    module = registry.lookup("sentiment") or registry.get("sentiment")   # fast path, then I/O path
    info, created = registry.put("sentiment", data)                      # validate, store, register

A small allocator in the spirit of vLLM's LoRA manager: names map to versions, at most
`max_resident` modules stay loaded, the least recently used is dropped first. Dropping is safe
while requests are in flight: rows hold the module object itself, so a replaced or evicted
adapter finishes the rows that already hold it (each request is answered by the old version or
the new one, never an error).

Replicas share the store, not memory: each lookup re-reads the small `current` pointer at most
once per `recheck_s` per name, so an upload or delete through another replica is seen within
that time without a restart. A version new to this replica is read and parsed once: the check
that registers it hands the parsed file on to the load.

A store that cannot be reached (StoreUnavailable) does not stop what is known: a name already
registered keeps its version (and, resident, keeps serving) until the store answers again, and
while the store is known to be down its pointers are not re-read (no request waits on a dead
store's timeout). A name not known yet, an upload or a delete raise StoreUnavailable (503); a
name not known yet at once while the store is known to be down (the server's probe marks it up
again within a second of its return).

A stored file that cannot serve here (invalid, another base model, a config the API cannot
describe) is logged once per version, listed in problems() and skipped: it never breaks a
listing or a description.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lpt import AdapterConfig, AdapterError, AdapterFile, Backbone, LatePrompt, load_adapter, read_adapter, validate

from .store_layout import FileTooLarge, StoreError, check_name
from .stores import AdapterStore, StoreUnavailable

log = logging.getLogger("lpt_server.registry")

SHOW_KNOWN = 5    # names an unknown-task 404 lists
ASK = object()    # _refresh/_reread: no listed version given, read the name's pointer


class UnknownAdapter(LookupError):
    """No adapter of that name (-> 404)."""


def _text(v) -> str | None:
    return v if isinstance(v, str) else None


def describe_config(cfg: AdapterConfig) -> tuple[dict, list[str]]:
    """The API's view of a config (what GET /v1/adapters shows), and why it cannot be shown.
    Total: any config, however strange, gives a dict of the right types or a problem."""
    bm = cfg.base_model if isinstance(cfg.base_model, dict) else {}
    info = {"task": _text(cfg.task), "labels": cfg.labels, "layer": cfg.layer,
            "prompt_length": cfg.prompt_length, "generator": _text(cfg.generator),
            "head_kind": _text(cfg.head_kind), "base_model": _text(bm.get("id"))}
    problems = []
    if not isinstance(cfg.labels, list) or not all(isinstance(x, str) for x in cfg.labels):
        problems.append("config labels must be a list of strings")
    for key in ("layer", "prompt_length"):
        if not isinstance(info[key], int) or isinstance(info[key], bool):
            problems.append(f"config {key} must be an integer, got {info[key]!r}")
    for key, value in (("task", cfg.task), ("base_model id", bm.get("id"))):
        if value is not None and not isinstance(value, str):
            problems.append(f"config {key} must be a string, got {type(value).__name__}")
    return (info, []) if not problems else ({}, problems)


def check_file(data: bytes, backbone: Backbone, max_bytes: int | None) -> tuple[AdapterFile | None, dict, list[str]]:
    """Parse and check one adapter file: (the parsed file, its description, []) when it can
    serve on `backbone`, else (None, {}, every problem). Never raises on a strange file."""
    try:
        af = read_adapter(data)
        problems = validate(af, backbone, max_bytes)
        info, shown = describe_config(af.config)
        problems += shown
    except AdapterError as err:
        return None, {}, err.problems
    except Exception as err:        # a file the checks did not foresee: a problem, not a crash
        log.warning("adapter file could not be checked", exc_info=err)
        return None, {}, [f"the file could not be checked ({type(err).__name__}: {err})"]
    return (af, info, []) if not problems else (None, {}, problems)


@dataclass
class Entry:
    """What the registry knows of one name's current version (no tensors)."""

    name: str
    version: str
    size_bytes: int
    info: dict                      # describe_config of the file; {} when it has problems
    checked_at: float = field(default_factory=time.monotonic)
    problems: list[str] = field(default_factory=list)   # non-empty: stored but unusable here

    def describe(self, resident: bool) -> dict:
        return {"name": self.name, "version": self.version, **self.info, "size_bytes": self.size_bytes,
                "resident": resident}


class Registry:
    def __init__(self, store: AdapterStore, backbone: Backbone, *, max_resident: int = 256,
                 max_bytes: int | None = None, recheck_s: float = 0.5,
                 on_load: Callable[[float], None] | None = None, on_forget: Callable[[str], None] | None = None):
        self.store = store
        self.backbone = backbone
        self.max_resident = max_resident
        self.max_bytes = max_bytes
        self.recheck_s = recheck_s
        self.on_load = on_load
        self.on_forget = on_forget      # called with a name once it is gone from the store
        self._entries: dict[str, Entry] = {}
        self._resident: OrderedDict[str, LatePrompt] = OrderedDict()
        self._lock = threading.Lock()                 # guards the two dicts; never held during I/O
        # A name's lock lives while a caller holds it: names asked for once (unknown tasks, any
        # client can send them) leave nothing behind.
        self._name_locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def registered(self) -> int:
        with self._lock:       # read from other threads (a /metrics scrape) while loads insert
            return sum(1 for e in self._entries.values() if not e.problems)

    @property
    def resident_count(self) -> int:
        return len(self._resident)

    def problems(self) -> dict[str, list[str]]:
        """Stored adapters that cannot serve on this model, with every reason."""
        with self._lock:
            return {n: e.problems for n, e in sorted(self._entries.items()) if e.problems}

    # ---- reading the store ------------------------------------------------------------------
    def scan(self) -> dict[str, list[str]]:
        """Check every stored adapter against the model (at start). Bad ones are logged, kept
        out of service and listed in problems(); they stay in the store untouched."""
        for name in self.store.names():
            with self._name_lock(name):
                self._refresh(name, force=True)
        return self.problems()

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _refresh(self, name: str, force: bool = False, listed: str | None | object = ASK
                 ) -> tuple[Entry | None, AdapterFile | None]:
        """Re-read the pointer if due; read and check the file if the version changed. Returns the
        entry and, when the file was just read and can serve, the parsed file (for get() to build:
        one read, one parse). listed: the version a listing of the store just gave (None: not
        listed), used instead of reading the pointer. Call with the name's lock held."""
        now = time.monotonic()
        e = self._entries.get(name)
        if listed is ASK:
            if e is not None and not force and now - e.checked_at < self.recheck_s:
                return e, None
            if not self.store.health().up:
                if e is None:                     # nothing known to fall back on: 503 now, not after a timeout
                    raise self._down(name)
                e.checked_at = now                # the store is down: keep what we know until it is back
                return e, None
        try:
            return self._reread(name, e, now, listed)
        except StoreUnavailable:
            if e is None:
                raise
            e.checked_at = now
            return e, None

    def _reread(self, name: str, e: Entry | None, now: float, listed: str | None | object = ASK
                ) -> tuple[Entry | None, AdapterFile | None]:
        version = self.store.current(name) if listed is ASK else listed
        if version is None:                       # deleted (maybe by another replica)
            self._forget(name)
            return None, None
        if e is not None and e.version == version:
            e.checked_at = now
            return e, None
        for attempt in range(2):
            try:
                data = self.store.read(name, version, self.max_bytes)
                break
            except FileTooLarge as err:             # not read: unusable here, like any file over the limit
                return self._unusable(name, version, err.size or 0, [str(err)], now), None
            except FileNotFoundError:             # replaced meanwhile: follow the pointer again
                newer = self.store.current(name)
                if newer is None or newer == version:   # deleted, or a pointer to a file that is gone
                    self._forget(name)
                    return None, None
                if attempt:                       # replaced twice: a 503 the client retries, not a 404
                    raise StoreUnavailable(f"adapter {name!r} is being replaced faster than it can be read: retry")
                version = newer
        af, info, problems = check_file(data, self.backbone, self.max_bytes)
        if af is not None and af.version != version:
            af, info, problems = None, {}, [f"the file's sha256 is {af.version}, not the {version} it is stored "
                                            "under: the file is corrupt"]
        if problems:
            return self._unusable(name, version, len(data), problems, now), None
        return self._enter(Entry(name, version, len(data), info, now)), af

    def _unusable(self, name: str, version: str, size: int, problems: list[str], now: float) -> Entry:
        log.warning("adapter %r (version %s) in the store is unusable and skipped: %s", name, version[:12],
                    "; ".join(problems))
        return self._enter(Entry(name, version, size, {}, now, problems))

    def _enter(self, new: Entry) -> Entry:
        name, version = new.name, new.version
        with self._lock:
            self._entries[name] = new
            m = self._resident.get(name)
            if m is not None and m.version != version:
                del self._resident[name]
        return new

    def _forget(self, name: str) -> None:
        with self._lock:
            known = self._entries.pop(name, None) is not None
            self._resident.pop(name, None)
        if known and self.on_forget is not None:
            self.on_forget(name)

    # ---- lookups ------------------------------------------------------------------------------
    def known(self, name: str) -> bool:
        """Whether `name` has an entry (not deleted since it was last seen); no I/O."""
        with self._lock:
            return name in self._entries

    def lookup(self, name: str) -> LatePrompt | None:
        """The loaded module if it is resident and its pointer was checked recently; no I/O.
        None means: call get() (off the event loop)."""
        with self._lock:
            e = self._entries.get(name)
            if e is None or time.monotonic() - e.checked_at >= self.recheck_s:
                return None
            m = self._resident.get(name)
            if m is None or m.version != e.version:
                return None
            self._resident.move_to_end(name)
            return m

    def get(self, name: str) -> LatePrompt:
        """The current version of `name`, loaded on first use. Raises UnknownAdapter."""
        check_name(name)
        with self._name_lock(name):
            e, parsed = self._refresh(name)
            self._check_servable(name, e)
            with self._lock:
                m = self._resident.get(name)
                if m is not None and m.version == e.version:
                    self._resident.move_to_end(name)
                    return m
            t0 = time.perf_counter()
            try:
                data = parsed or self.store.read(name, e.version, self.max_bytes)
            except FileNotFoundError:
                # The version the entry remembers (its pointer checked up to recheck_s ago) was
                # replaced by another replica, and the store keeps only the newest files: follow
                # the pointer again (a read of the new version, parsed).
                e, data = self._reread(name, None, time.monotonic())
                self._check_servable(name, e)
            m = load_adapter(data, self.backbone, self.max_bytes)
            if self.on_load is not None:
                self.on_load(time.perf_counter() - t0)
            self._insert(name, m)
            return m

    def _down(self, name: str) -> StoreUnavailable:
        return StoreUnavailable(f"adapter {name!r} is not loaded here and the adapter store {self.store.location} "
                                f"is down ({self.store.health().error}): retry shortly")

    def _check_servable(self, name: str, e: Entry | None) -> None:
        if e is None:
            raise self._unknown(name)
        if e.problems:
            raise UnknownAdapter(f"adapter {name!r} is in the store but cannot serve on this model: "
                                 + "; ".join(e.problems))

    def _unknown(self, name: str) -> UnknownAdapter:
        """404 for a name: say which names exist (a few) and how to list them all."""
        with self._lock:
            known = sorted(n for n, e in self._entries.items() if not e.problems)
        if known:
            more = f" and {len(known) - SHOW_KNOWN} more" if len(known) > SHOW_KNOWN else ""
            hint = f"known tasks: {', '.join(known[:SHOW_KNOWN])}{more}"
        else:
            hint = "the store holds no adapters yet"
        return UnknownAdapter(f"unknown task {name!r}: no adapter of that name; {hint} "
                              "(GET /v1/adapters lists them all)")

    def _insert(self, name: str, module: LatePrompt) -> None:
        with self._lock:
            self._resident[name] = module
            self._resident.move_to_end(name)
            while len(self._resident) > self.max_resident:
                old, _ = self._resident.popitem(last=False)
                log.debug("adapter %r evicted (LRU, max_resident=%d)", old, self.max_resident)

    def describe(self, name: str) -> dict:
        check_name(name)
        with self._name_lock(name):
            e, _ = self._refresh(name)
        if e is None or e.problems:
            raise self._unknown(name)
        return e.describe(name in self._resident)

    def list(self) -> list[dict]:
        """Every usable adapter in the store, including ones other replicas wrote: one listing of
        the store (store.versions()), then a file read only for versions not known here."""
        began = time.monotonic()
        versions = self.store.versions()
        out = []
        for name in sorted(set(versions) | set(self._entries)):
            with self._name_lock(name):
                # a put or pointer check since the listing began knows better than it (a name
                # deleted since is dropped when its listed version is read and is not there)
                e = self._entries.get(name)
                newer = e is not None and e.checked_at >= began
                e, _ = self._refresh(name, listed=ASK if newer else versions.get(name))
            if e is not None and not e.problems:
                out.append(e.describe(name in self._resident))
        return out

    # ---- writes ---------------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> tuple[dict, bool]:
        """Validate fully, then store atomically, then serve. Raises AdapterError, NameTaken or
        StoreFull: nothing stored."""
        check_name(name)
        af, info, problems = check_file(data, self.backbone, self.max_bytes)
        if problems:
            raise AdapterError(problems)
        t0 = time.perf_counter()
        module = load_adapter(af, self.backbone, self.max_bytes)
        if self.on_load is not None:
            self.on_load(time.perf_counter() - t0)
        with self._name_lock(name):
            stored = self.store.put(name, data)
            entry = Entry(name, stored.version, len(data), info)
            with self._lock:
                self._entries[name] = entry
            self._insert(name, module)
        log.info("adapter %r stored: version %s (%s)", name, stored.version[:12], "new" if stored.created else "replaced")
        return entry.describe(True), stored.created

    def delete(self, name: str) -> bool:
        check_name(name)
        with self._name_lock(name):
            existed = self.store.delete(name)
            self._forget(name)
        return existed


def seed_demo_adapters(registry: Registry, directory: Path) -> list[str]:
    """Store each `<directory>/<name>.safetensors` whose name is not in the store yet.
    Demo adapters that do not fit this model (another base model) are skipped with a warning."""
    seeded = []
    if not directory.is_dir():
        return seeded
    for path in sorted(directory.glob("*.safetensors")):
        name = path.stem
        try:
            check_name(name)
            if registry.store.current(name) is not None:
                continue
            registry.put(name, path.read_bytes())
            seeded.append(name)
        except (AdapterError, ValueError, OSError, StoreError) as e:
            log.warning("demo adapter %s skipped: %s", path.name, e)
    if seeded:
        log.info("seeded %d demo adapter(s): %s", len(seeded), ", ".join(seeded))
    return seeded

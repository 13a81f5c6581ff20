"""The S3 backend of the adapter store: the directory store's contract on a bucket that several
replicas share (AWS S3, MinIO, Ceph RGW, R2, SeaweedFS).

    s3://BUCKET/PREFIX/.lpt-store                    marks the prefix as a store (written on first use)
    s3://BUCKET/PREFIX/<name>/<sha256>.safetensors   one object per version, named by its content hash
    s3://BUCKET/PREFIX/<name>/current                "<sha256>\\n<write id>\\n": the current version

Writes. put() uploads the version object first, then swaps `current` with a conditional PUT:
If-None-Match: * when the name had none, If-Match: <the ETag it read> otherwise. Of two replicas
writing one name at once one wins; the other's condition fails (412), it reads the new pointer
and tries again, so each upload lands once, in some order, and exactly one of them reports the
name as new. After WRITE_TRIES lost races it gives up with StoreConflict (409). The random write
id makes every pointer write a new ETag, so a pointer that went A -> B -> A still fails a stale
If-Match. delete() removes the pointer with If-Match the same way. A reader sees the old version
or the new one, never a partial object (S3 PUTs are atomic), and no pointer names a missing
version: versions are deleted only once no pointer names them and they are older than
WRITE_WINDOW_S by the server's clock (a writer that just uploaded one has not swapped yet).
A remaining race: re-uploading an old, unreferenced version at the very moment the sweep deletes
it can leave its pointer on a missing object; the registry then treats the name as deleted.

The store opens only a prefix that is empty or already a store, and checks that the server
honours If-None-Match and If-Match on PUT (a server that ignores them could lose uploads
silently): it refuses to start otherwise. Deletes touch only keys of the store's own patterns.

Failures. A connection error, timeout or 5xx raises StoreUnavailable (-> 503) and marks the store
down (health()); the next call that gets through (the server pings every second while down)
marks it up again. While down, a version not cached is not asked for: 503 at once. Version
files read are kept in a bounded in-memory LRU (cache_bytes): versions never change, so a cached
one never goes stale.
"""
from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, TypeVar

from .aws_credentials import NoCredentials
from .s3 import PreconditionFailed, S3Client, S3Config, S3Error, TooLarge, Unreachable
from .store import Health, Stored
from .store_layout import (NAME_RE, POINTER, ROOT_MARKER, ROOT_MARKER_TEXT, SUFFIX, VERSION_FILE_RE, VERSION_RE,
                           GRACE_S, FileTooLarge, NameTaken, NotAStore, check_name)
from .stores import S3_SCHEME, StoreConflict, StoreUnavailable

log = logging.getLogger("lpt_server.s3_store")

WRITE_TRIES = 8          # lost pointer races before a write gives up with 409
WRITE_WINDOW_S = 60.0    # a version object younger than this may belong to a writer about to swap
T = TypeVar("T")


class Refused(StoreUnavailable):
    """The S3 server answered with an error (bad credentials, no such bucket, ...)."""

    def __init__(self, message: str, answer: str):
        super().__init__(message)
        self.answer = answer


def parse_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/"); s3://bucket -> ("bucket", "")."""
    rest = url[len(S3_SCHEME):] if url.startswith(S3_SCHEME) else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise NotAStore(f"not an S3 store URL: {url!r}: use s3://BUCKET or s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, prefix + "/" if prefix else ""


class FileCache:
    """Adapter files by key, least recently used dropped first, at most max_bytes in all."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)


@dataclass(frozen=True)
class Pointer:
    version: str | None     # None: the object holds no version (written by something else)
    etag: str


class S3Store:
    kind = "s3"

    def __init__(self, url: str, *, timeout_s: float = 5.0, cache_bytes: int = 256 << 20,
                 client: S3Client | None = None):
        bucket, self.prefix = parse_url(url)
        self.location = f"{S3_SCHEME}{bucket}/{self.prefix}"
        if client is None:
            try:
                client = S3Client(S3Config.from_env(timeout_s=timeout_s), bucket, timeout_s)
            except (ValueError, NoCredentials) as e:
                raise NotAStore(f"cannot use {self.location} as the adapter store: {e}") from None
        self.client = client
        self.cache = FileCache(cache_bytes)
        self._health = Health(True)
        self._read: dict[str, Pointer] = {}       # the last pointer read of each name (versions())
        try:
            self._open()
        except Refused as e:
            raise NotAStore(f"cannot use {self.location} as the adapter store: the S3 server at {client.endpoint} "
                            f"answered {e.answer}; check the bucket name, the endpoint (AWS_ENDPOINT_URL) and the "
                            "AWS_* credentials") from None
        except NoCredentials as e:           # the configured source gave none (a refused web identity, ...)
            raise NotAStore(f"cannot use {self.location} as the adapter store: {e}") from None

    # ---- keys -----------------------------------------------------------------------------------
    def _pointer_key(self, name: str) -> str:
        return f"{self.prefix}{check_name(name)}/{POINTER}"

    def _version_key(self, name: str, version: str) -> str:
        if not VERSION_RE.fullmatch(version):
            raise ValueError(f"not a version: {version!r}")
        return f"{self.prefix}{check_name(name)}/{version}{SUFFIX}"

    # ---- every call goes through here: health, and S3's failures as the store's -------------------
    def _call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        try:
            out = fn(*args, **kwargs)
        except Unreachable as e:
            self._health = Health(False, f"{self.client.endpoint} unreachable: {e}")
            raise StoreUnavailable(f"the adapter store {self.location} is unreachable ({self.client.endpoint}: {e}); "
                                   f"{what}; retry shortly") from None
        except TooLarge:                 # the server answered: up (the caller decides what the object is)
            self._health = Health(True)
            raise
        except S3Error as e:
            self._health = Health(False, f"{self.client.endpoint}: {e}")
            raise Refused(f"the adapter store {self.location} refused the request ({self.client.endpoint}: "
                          f"{e}); {what}", answer=str(e)) from None
        self._health = Health(True)
        return out

    def health(self) -> Health:
        return self._health

    def ping(self) -> Health:
        try:
            self._exists("", self.prefix + ROOT_MARKER)
        except StoreUnavailable:
            pass
        return self._health

    def _exists(self, what: str, key: str) -> bool:
        try:
            return self._call(what, self.client.get, key) is not None
        except TooLarge:            # there, whoever wrote it
            return True

    def close(self) -> None:
        self.client.close()

    # ---- opening --------------------------------------------------------------------------------
    def _open(self) -> None:
        marker = self.prefix + ROOT_MARKER
        what = "the server cannot start on it"
        if not self._exists(what, marker):
            foreign = [o.key for o in self._call(what, lambda: list(self.client.list(self.prefix, max_keys=5)))
                       if o.key != marker]
            if foreign:
                raise NotAStore(f"refusing to use {self.location} as the adapter store: it is not empty and lpt-serve "
                                f"did not create it (it holds {', '.join(foreign)}). Point --store / LPT_STORE at an "
                                "empty prefix, or at an existing adapter store")
            try:
                self._call(what, self.client.put, marker, ROOT_MARKER_TEXT, if_none_match=True)
            except PreconditionFailed:
                pass                        # another replica opened it just now
        self._check_conditional_writes(marker)

    def _check_conditional_writes(self, marker: str) -> None:
        """The marker exists now: a PUT over it with If-None-Match: * or a wrong If-Match must fail."""
        what = "the server cannot start on it"
        for condition in ({"if_none_match": True}, {"if_match": '"lpt-serve-probe"'}):
            try:
                self._call(what, self.client.put, marker, ROOT_MARKER_TEXT, **condition)
            except PreconditionFailed:
                continue
            header = "If-None-Match" if "if_none_match" in condition else "If-Match"
            raise NotAStore(f"refusing to use {self.location}: the S3 server at {self.client.endpoint} ignores "
                            f"{header} on PUT, so two replicas writing one adapter could lose an upload silently; "
                            "use a server with conditional writes (AWS S3, MinIO, Ceph RGW, R2, SeaweedFS)")

    # ---- reading --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._listed_pointers())

    def _listed_pointers(self) -> dict[str, str]:
        """Every name with a pointer, and the pointer's ETag as the listing gives it."""
        listed = {}
        for o in self._call("the adapters cannot be listed", lambda: list(self.client.list(self.prefix))):
            name, _, rest = o.key[len(self.prefix):].partition("/")
            if rest == POINTER and NAME_RE.fullmatch(name):
                listed[name] = o.etag
        return listed

    def versions(self) -> dict[str, str]:
        """One listing (a call per 1,000 objects) and a GET only for the pointers written since
        this store last read them: every pointer write has an ETag of its own (the write id), so a
        listed ETag equal to the one read means the same pointer, without reading it again."""
        listed = self._listed_pointers()
        for gone in self._read.keys() - listed.keys():    # deleted, maybe through another replica
            self._read.pop(gone, None)
        out = {}
        for name, etag in sorted(listed.items()):
            known = self._read.get(name)
            if known is not None and etag and etag.strip('"') == known.etag.strip('"'):
                version = known.version
            else:
                version = self.current(name)
            if version is not None:
                out[name] = version
        return out

    def _pointer(self, name: str, what: str) -> Pointer | None:
        try:
            obj = self._call(what, self.client.get, self._pointer_key(name))
        except TooLarge as e:       # not a pointer this store wrote
            ptr = self._read[name] = Pointer(None, e.etag)
            return ptr
        if obj is None:
            self._read.pop(name, None)
            return None
        first = obj.body.split(b"\n", 1)[0].decode("ascii", "replace").strip()
        ptr = self._read[name] = Pointer(first if VERSION_RE.fullmatch(first) else None, obj.etag)
        return ptr

    def current(self, name: str) -> str | None:
        ptr = self._pointer(name, f"adapter {name!r} cannot be looked up")
        return ptr.version if ptr is not None else None

    def read(self, name: str, version: str, max_bytes: int | None = None) -> bytes:
        key = self._version_key(name, version)
        data = self.cache.get(key)
        if data is not None and max_bytes is not None and len(data) > max_bytes:
            raise FileTooLarge(len(data), max_bytes)
        if data is None:
            if not self._health.up:      # known down: 503 now, not after a timeout (ping() finds it back)
                raise StoreUnavailable(f"the adapter store {self.location} is down ({self._health.error}); "
                                       f"adapter {name!r} cannot be loaded; retry shortly")
            try:
                obj = self._call(f"adapter {name!r} cannot be loaded", self.client.get, key, max_bytes=max_bytes)
            except TooLarge as e:
                raise FileTooLarge(e.size, e.limit) from None
            if obj is None:
                raise FileNotFoundError(f"{self.location}{name}/{version}{SUFFIX}")
            data = obj.body
            self.cache.put(key, data)
        return data

    # ---- writing --------------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> Stored:
        """Upload the version, then swap the pointer conditionally (see the module docstring)."""
        check_name(name)
        version = hashlib.sha256(data).hexdigest()
        key = self._version_key(name, version)
        what = f"the upload of {name!r} did not complete (an upload is safe to repeat)"
        self._check_ours(name, self._pointer(name, what))    # before writing anything under the name
        # unconditional even if it exists: content-addressed, and a fresh upload is young, so no
        # sweep or collect deletes it before the pointer names it
        self._call(what, self.client.put, key, data)
        self.cache.put(key, data)
        for attempt in range(WRITE_TRIES):
            ptr = self._pointer(name, what)
            self._check_ours(name, ptr)
            body = f"{version}\n{uuid.uuid4().hex}\n".encode()
            try:
                if ptr is None:
                    self._call(what, self.client.put, self._pointer_key(name), body, if_none_match=True)
                else:
                    self._call(what, self.client.put, self._pointer_key(name), body, if_match=ptr.etag)
            except PreconditionFailed:            # another writer swapped it since we read it
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            self._collect_quietly(name, keep={version})
            return Stored(name, version, created=ptr is None)
        raise StoreConflict(f"adapter {name!r} was changed by other writers {WRITE_TRIES} times while this upload "
                            "tried to land; it did not take effect: retry")

    def _check_ours(self, name: str, ptr: Pointer | None) -> None:
        """A pointer object that names no version was not written by this store: left untouched."""
        if ptr is not None and ptr.version is None:
            raise NameTaken(f"adapter name {name!r} is not available: {self.location}{name}/{POINTER} holds "
                            "an object lpt-serve did not write, and it is left untouched; use another name, "
                            "or have the operator remove that object")

    def delete(self, name: str) -> bool:
        what = f"the delete of {name!r} did not complete"
        for attempt in range(WRITE_TRIES):
            ptr = self._pointer(name, what)
            if ptr is None or ptr.version is None:    # absent, or an object this store did not write
                return False
            try:
                self._call(what, self.client.delete, self._pointer_key(name), if_match=ptr.etag)
            except PreconditionFailed:
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            self._collect_quietly(name, keep=set())
            return True
        raise StoreConflict(f"adapter {name!r} was changed by other writers {WRITE_TRIES} times while this delete "
                            "tried to land; it did not take effect: retry")

    # ---- old versions ---------------------------------------------------------------------------
    def _collect(self, name: str, keep: set[str], older_than: float) -> list[str]:
        """Delete version objects of `name` that no pointer names and older than `older_than` s."""
        what = f"old versions of {name!r} cannot be removed now"
        base = f"{self.prefix}{name}/"
        objects = self._call(what, lambda: list(self.client.list(base)))
        now = self.client.server_time or time.time()
        ptr = self._pointer(name, what)           # read after listing: a version named now is kept
        keep = keep | ({ptr.version} if ptr is not None and ptr.version else set())
        removed = []
        for o in objects:
            filename = o.key[len(base):]
            if not VERSION_FILE_RE.fullmatch(filename) or filename[:-len(SUFFIX)] in keep:
                continue
            if now - o.modified < older_than:
                continue
            self._call(what, self.client.delete, o.key)
            removed.append(f"{name}/{filename}")
        return removed

    def _collect_quietly(self, name: str, keep: set[str]) -> None:
        try:
            self._collect(name, keep, WRITE_WINDOW_S)
        except StoreUnavailable as e:          # the write took effect; the sweep retries the clean-up
            log.warning("adapter %r: old versions not removed yet: %s", name, e)

    def sweep(self, grace_s: float | None = None) -> list[str]:
        """Remove version objects no pointer names, older than `grace_s` (default GRACE_S)."""
        grace_s = GRACE_S if grace_s is None else grace_s
        names = set()
        for o in self._call("the sweep cannot run now", lambda: list(self.client.list(self.prefix))):
            name, _, rest = o.key[len(self.prefix):].partition("/")
            if NAME_RE.fullmatch(name) and VERSION_FILE_RE.fullmatch(rest):
                names.add(name)
        removed = []
        for name in sorted(names):
            removed += self._collect(name, set(), grace_s)
        return removed

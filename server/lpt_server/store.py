"""The adapter store: a directory that several replicas may share, and that owns only what it wrote.

    <store>/.lpt-store                      marks the directory as a store (written on first use)
    <store>/.locks/<name>                   one lock file per name, held by its writers
    <store>/<name>/.lpt-adapter             marks the folder as written by the store
    <store>/<name>/<sha256>.safetensors     one file per version, named by its content hash
    <store>/<name>/current                  the current version's sha256, replaced by atomic rename

Ownership. The store deletes only files it writes (version files, the pointer, the marker, its
own temp files) and a folder only once that leaves it empty. A name whose folder exists without
the marker is refused (NameTaken), never overwritten; a directory that is neither empty nor a
store is refused when the store opens (NotAStore), except one that holds only folders of the
earlier layout without markers, which is adopted (markers written).

Names are case-sensitive. On a volume that is not (macOS, Windows, Docker Desktop's bind mounts)
"Sentiment" would open the folder of "sentiment": there a name is found only under its exact
spelling, and a new name that differs from a stored one only in case is refused (NameTaken).

Writers of one name (put, delete, sweep) hold its lock file (flock), across processes; readers
take no lock. A writer stores the version file first and then swaps `current`, so a reader sees
the old version or the new one, never a partial file; a delete removes the pointer first, so no
pointer ever names a missing file. Readers re-read `current` to notice other replicas' writes.

A full disk (ENOSPC, EDQUOT) raises StoreFull after undoing what that call wrote. Any other I/O
error (a network or FUSE mount gone: ENOTCONN, ESTALE, EIO), or the store directory itself gone,
raises StoreUnavailable and marks the store down, as S3's network errors do; the next call that
reaches it marks it up again. A writer killed
mid-upload leaves temp files or an unreferenced version file: sweep() removes those older than a
grace period (the runtime runs it at start and periodically). The store knows files and names
only, not adapters.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from lpt.adapter import write_atomic

from .store_layout import (NAME_RE, POINTER, SUFFIX, MARKER, ROOT_MARKER, LOCKS, VERSION_RE, VERSION_FILE_RE,
                           ROOT_TEMP_RE, KEEP_VERSIONS, GRACE_S, FULL_ERRNOS, NOT_OURS_AT_ROOT, MARKER_TEXT,
                           ROOT_MARKER_TEXT, NameTaken, StoreFull, NotAStore, FileTooLarge, StoreUnavailable,
                           check_name, is_store_file)

log = logging.getLogger("lpt_server.store")

def _older_than(path: Path, seconds: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime >= seconds
    except FileNotFoundError:
        return False


def _is_full(err: OSError) -> bool:
    return err.errno in FULL_ERRNOS


def _full(root: Path) -> StoreFull:
    return StoreFull(f"the adapter store's disk is full (or over quota): nothing was changed; free space on the "
                     f"volume of the store ({root.name or root}) and retry")


T = TypeVar("T")


def _reaching(method: Callable[..., T]) -> Callable[..., T]:
    """A Store call that reaches the directory: its I/O errors become the store's (see the module
    docstring). A missing file stays FileNotFoundError (a version replaced meanwhile) while the
    store itself is there."""
    @wraps(method)
    def call(self: "Store", *args, **kwargs) -> T:
        try:
            out = method(self, *args, **kwargs)
        except OSError as e:
            if _is_full(e):
                raise _full(self.root) from e
            if isinstance(e, FileNotFoundError):
                if self.ping().up:
                    raise
            else:
                self._health = _unreachable(e, self.root)
            why = self._health.error
            raise StoreUnavailable(f"the adapter store {self.root} cannot be read or written: {why}; "
                                   "retry once it is back") from e
        self._health = Health(True)
        return out
    return call


@dataclass(frozen=True)
class Health:
    up: bool
    error: str | None = None     # why it is down (None when up)


def _unreachable(err: OSError, root: Path) -> Health:
    """The store down for an I/O error (its text and the path it names)."""
    return Health(False, f"{err.strerror or err} ({err.filename or root})")


@dataclass(frozen=True)
class Stored:
    name: str
    version: str
    created: bool    # no version of this name existed before


class Store:
    """The directory backend of stores.AdapterStore."""

    kind = "directory"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.location = str(self.root)
        self._health = Health(True)
        try:
            self._open()
        except OSError as e:
            if _is_full(e):
                raise _full(self.root) from e
            raise NotAStore(f"cannot use {self.root} as the adapter store: {e.strerror or e} "
                            f"({e.filename or self.root})") from e

    # ---- opening ------------------------------------------------------------------------------
    def _open(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise NotAStore(f"cannot use {self.root} as the adapter store: it is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / ROOT_MARKER).is_file():
            self._claim_root()
        (self.root / LOCKS).mkdir(exist_ok=True)
        self.case_insensitive = (self.root / ROOT_MARKER.upper()).exists()

    def _claim_root(self) -> None:
        """An empty directory becomes a store; one holding only markerless store folders (the
        earlier layout) is adopted; anything else is refused, so nothing of it is ever deleted."""
        old, foreign = [], []
        for entry in sorted(self.root.iterdir()):
            # what another replica opening the same directory right now may have written
            ours = entry.name == ROOT_MARKER or ROOT_TEMP_RE.fullmatch(entry.name) or \
                (entry.name == LOCKS and entry.is_dir())
            if ours or entry.name in NOT_OURS_AT_ROOT:
                continue
            (old if self._old_layout(entry) else foreign).append(entry)
        if foreign:
            shown = ", ".join(e.name for e in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise NotAStore(f"refusing to use {self.root.absolute()} as the adapter store: it is not empty and lpt-serve did "
                            f"not create it (it holds {shown}). Point --store / LPT_STORE at an empty or new "
                            "directory, or at an existing adapter store")
        for d in old:
            write_atomic(d / MARKER, MARKER_TEXT)
        if old:
            log.info("adapter store %s: adopted %d folder(s) of the earlier layout", self.root, len(old))
        write_atomic(self.root / ROOT_MARKER, ROOT_MARKER_TEXT)

    @staticmethod
    def _old_layout(d: Path) -> bool:
        """A name's folder as the store wrote it before markers: only store files, at least one."""
        if not NAME_RE.fullmatch(d.name) or d.is_symlink() or not d.is_dir():
            return False
        files = list(d.iterdir())
        return bool(files) and all(is_store_file(f.name) and f.is_file() and not f.is_symlink() for f in files)

    def _owned(self, d: Path) -> bool:
        """The store wrote this folder (adopting an earlier-layout one). Call with the name's lock.
        A link is never the store's: it writes none, and one could lead out of the store."""
        if d.is_symlink():
            return False
        if (d / MARKER).is_file():
            return True
        if self._old_layout(d):
            write_atomic(d / MARKER, MARKER_TEXT)
            return True
        return False

    # ---- health: a local directory is there or not ------------------------------------------------
    def health(self) -> Health:
        return self._health

    def ping(self) -> Health:
        try:
            there = (self.root / ROOT_MARKER).is_file()
        except OSError as e:           # a dead mount answers ENOTCONN, ESTALE or EIO
            self._health = _unreachable(e, self.root)
        else:
            self._health = Health(True) if there else \
                Health(False, f"the store directory {self.root} is gone (no {ROOT_MARKER} in it)")
        return self._health

    def close(self) -> None:
        """Nothing held between calls."""

    # ---- reading (no locks) -------------------------------------------------------------------
    @_reaching
    def names(self) -> list[str]:
        """Every name with a `current` pointer in a folder the store owns, sorted."""
        return sorted(d.name for d in self.root.iterdir()
                      if NAME_RE.fullmatch(d.name) and not d.is_symlink() and (d / POINTER).is_file()
                      and (d / MARKER).is_file())

    def _spelled(self, d: Path) -> bool:
        """False where the volume ignores case and `d` opens a folder spelled otherwise (another
        name's). A listing of the store: only on such volumes, and only per single-name call."""
        return not self.case_insensitive or not d.exists() or d.name in os.listdir(self.root)

    @_reaching
    def current(self, name: str) -> str | None:
        """The current version (sha256) of a name, or None. Two small reads: cheap to repeat."""
        d = self.root / check_name(name)
        v = self._current(d) if self._spelled(d) else None
        if v is None and not (self.root / ROOT_MARKER).is_file():
            # no name's folder, or no store? Only the second must not make a loaded adapter vanish
            raise FileNotFoundError(errno.ENOENT, "no store marker", str(self.root / ROOT_MARKER))
        return v

    @staticmethod
    def _current(d: Path) -> str | None:
        if d.is_symlink():
            return None
        try:
            v = (d / POINTER).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return v if VERSION_RE.fullmatch(v) and (d / MARKER).is_file() else None

    @_reaching
    def versions(self) -> dict[str, str]:
        # names() lists the folders as spelled: no per-name spelling check
        return {n: v for n in self.names() if (v := self._current(self.root / n)) is not None}

    def path(self, name: str, version: str) -> Path:
        if not VERSION_RE.fullmatch(version):
            raise ValueError(f"not a version: {version!r}")
        d = self.root / check_name(name)
        if not self._spelled(d):
            raise FileNotFoundError(errno.ENOENT, f"no adapter {name!r} in the store (a name differing only in case is)")
        return d / f"{version}{SUFFIX}"

    @_reaching
    def read(self, name: str, version: str, max_bytes: int | None = None) -> bytes:
        with open(self.path(name, version), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise FileTooLarge(size, max_bytes)
            return f.read()

    # ---- writing (the name's lock held) -------------------------------------------------------
    @_reaching
    def put(self, name: str, data: bytes) -> Stored:
        """Store a version and make it current. Validate the bytes *before* calling this.
        Raises NameTaken (a folder the store did not write) or StoreFull; either way nothing changed."""
        check_name(name)
        version = hashlib.sha256(data).hexdigest()
        d = self.root / name
        path = d / f"{version}{SUFFIX}"
        with self._locked(name):
            new_dir = self._claim(d)
            previous = self.current(name)
            wrote = []
            try:
                if new_dir:
                    write_atomic(d / MARKER, MARKER_TEXT)
                if not path.exists():
                    write_atomic(path, data)
                    wrote.append(path)
                write_atomic(d / POINTER, (version + "\n").encode())
            except BaseException:
                for p in wrote:
                    p.unlink(missing_ok=True)
                if new_dir:
                    self._remove_owned(d, keep=set())
                raise
            try:
                self._collect(d, keep={version, previous})
            except OSError as e:      # the upload took effect; the sweep retries the clean-up
                log.warning("adapter %r: old versions not removed yet: %s", name, e)
        return Stored(name, version, created=previous is None)

    def _claim(self, d: Path) -> bool:
        """Make sure the store owns `d`: True if the folder is new (created now)."""
        try:
            d.mkdir()
            return True
        except FileExistsError:
            pass
        if not self._spelled(d):
            held = [repr(n) for n in os.listdir(self.root) if n.casefold() == d.name.casefold()]
            raise NameTaken(f"adapter name {d.name!r} is not available: the store's volume does not tell names apart "
                            f"by case, and it holds {held[0] if held else 'a name differing only in case'}; "
                            "use another name")
        if d.is_symlink() or not d.is_dir():       # a link is never the store's (it could lead outside)
            raise NameTaken(self._taken(d.name))
        if self._owned(d):
            return False
        if not any(d.iterdir()):      # empty: nothing to lose (e.g. a writer killed right after mkdir)
            return True
        raise NameTaken(self._taken(d.name))

    @staticmethod
    def _taken(name: str) -> str:
        return (f"adapter name {name!r} is not available: the store directory holds a folder {name!r} that "
                "lpt-serve did not write, and it is left untouched; use another name, or have the operator "
                "move that folder out of the store")

    @_reaching
    def delete(self, name: str) -> bool:
        """Remove a name: the pointer first (readers stop seeing it at once), then the store's own
        files, then the folder if that left it empty. False if there was no adapter of that name."""
        d = self.root / check_name(name)
        with self._locked(name):
            if not d.is_dir() or not self._spelled(d) or not self._owned(d):
                return False
            existed = (d / POINTER).is_file()
            (d / POINTER).unlink(missing_ok=True)
            self._remove_owned(d, keep=set())
        return existed

    def _remove_owned(self, d: Path, keep: set[str], older_than: float = 0.0) -> list[str]:
        """Delete the store's files in `d` (not the names in `keep`, not files younger than
        `older_than` s); once none is left, the marker, and the folder if it is then empty.
        Returns what went."""
        now, removed = time.time(), []
        for f in sorted(d.iterdir()):
            if f.name in keep or f.name == MARKER or not is_store_file(f.name):
                continue
            if older_than and not _older_than(f, older_than, now):
                continue
            with suppress(FileNotFoundError):
                f.unlink()
                removed.append(f"{d.name}/{f.name}")
        if not any(is_store_file(f.name) and f.name != MARKER for f in d.iterdir()):
            (d / MARKER).unlink(missing_ok=True)     # nothing of ours left: the folder is not ours either
            try:
                d.rmdir()
                removed.append(f"{d.name}/")
            except OSError as e:                     # someone else's files are in it: theirs to remove
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise
        return removed

    def _collect(self, d: Path, keep: set) -> None:
        """Drop old version files, keeping the newest few (another replica may be loading one)."""
        others = []
        for p in d.glob(f"*{SUFFIX}"):
            if VERSION_FILE_RE.fullmatch(p.name) and p.stem not in keep:
                with suppress(FileNotFoundError):
                    others.append((p.stat().st_mtime, p))
        others.sort(reverse=True)
        for _, p in others[max(KEEP_VERSIONS - len(keep), 0):]:
            p.unlink(missing_ok=True)

    # ---- leftovers ----------------------------------------------------------------------------
    @_reaching
    def sweep(self, grace_s: float | None = None) -> list[str]:
        """Remove what killed writers left: temp files and unreferenced version files older than
        `grace_s` (default GRACE_S), folders left with no version, lock files of gone names. A name
        being written right now is skipped. Returns the removed paths, relative to the root."""
        grace_s = GRACE_S if grace_s is None else grace_s
        now, removed = time.time(), []
        for entry in sorted(self.root.iterdir()):
            if ROOT_TEMP_RE.fullmatch(entry.name) and _older_than(entry, grace_s, now):
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
            elif NAME_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                with self._locked(entry.name, wait=False) as held:
                    if held and entry.is_dir() and self._owned(entry):
                        removed += self._sweep_name(entry, grace_s)
        for lock in sorted((self.root / LOCKS).iterdir()):
            if NAME_RE.fullmatch(lock.name) and not self._marked(lock.name):
                with self._locked(lock.name, wait=False):
                    pass                  # leaving the lock of a name without a folder removes it
        return removed

    def _sweep_name(self, d: Path, grace_s: float) -> list[str]:
        current = self._current(d)
        if current is not None and not (d / f"{current}{SUFFIX}").is_file():
            log.warning("adapter %r: its pointer names a missing version file; removing the pointer", d.name)
            (d / POINTER).unlink()
            current = None
        keep = {POINTER, f"{current}{SUFFIX}"} if current else set()
        return self._remove_owned(d, keep, older_than=grace_s)

    # ---- the per-name lock --------------------------------------------------------------------
    def _marked(self, name: str) -> bool:
        """The name has a folder with the store's marker (a link is no folder of the store's)."""
        d = self.root / name
        return not d.is_symlink() and (d / MARKER).exists()

    @contextmanager
    def _locked(self, name: str, wait: bool = True) -> Iterator[bool]:
        """Hold the name's lock file (flock: other processes and other Store objects wait).
        wait=False: yields False at once if another writer holds it. On leaving, a name without
        a folder of the store's loses its lock file too."""
        # one lock file per name as the volume tells names apart: on one that ignores case, FUSE
        # may give each spelling's open file its own lock, so all spellings share the folded one
        path = self.root / LOCKS / (name.casefold() if self.case_insensitive else name)
        fd = self._acquire(path, wait)
        if fd is None:
            yield False
            return
        try:
            yield True
        finally:
            try:
                if not self._marked(name):
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    @staticmethod
    def _acquire(path: Path, wait: bool) -> int | None:
        while True:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            except FileNotFoundError:            # the locks folder went away: make it again
                path.parent.mkdir(exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                # the holder before us may have removed the file: then this lock guards nothing
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:        # ENOLCK on NFS, a mount dying: no lock, and no fd left open
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)

"""The adapter store: a directory that several replicas may share.

    <store>/<name>/<sha256>.safetensors    one file per version, named by its content hash
    <store>/<name>/current                 the current version's sha256, replaced by atomic rename

A writer stores the version file first and then swaps `current`, so a reader sees the old
version or the new one, never a partial file; a crash mid-upload leaves at most an orphan
version file (or a dot-temp file) that no pointer names. Readers re-read `current` to notice
writes made by other replicas. The store knows files and names only, not adapters.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lpt.adapter import write_atomic

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
POINTER = "current"
SUFFIX = ".safetensors"
VERSION_RE = re.compile(r"^[0-9a-f]{64}$")
KEEP_VERSIONS = 2   # the current one and the one before: a replica may be reading it right now


class InvalidName(ValueError):
    """Not a valid adapter name (-> 400)."""


def check_name(name: str) -> str:
    """Names are single path components of safe characters: no '/', no '..', no hidden files."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(f"invalid adapter name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -, "
                          "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Stored:
    name: str
    version: str
    path: Path
    created: bool    # no version of this name existed before


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        """Every name with a `current` pointer, sorted."""
        out = []
        for d in self.root.iterdir():
            if NAME_RE.fullmatch(d.name) and (d / POINTER).is_file():
                out.append(d.name)
        return sorted(out)

    def current(self, name: str) -> str | None:
        """The current version (sha256) of a name, or None. One small read: cheap to repeat."""
        try:
            v = (self.root / check_name(name) / POINTER).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return v if VERSION_RE.fullmatch(v) else None

    def path(self, name: str, version: str) -> Path:
        if not VERSION_RE.fullmatch(version):
            raise ValueError(f"not a version: {version!r}")
        return self.root / check_name(name) / f"{version}{SUFFIX}"

    def read(self, name: str, version: str) -> bytes:
        return self.path(name, version).read_bytes()

    def put(self, name: str, data: bytes) -> Stored:
        """Store a version and make it current. Validate the bytes *before* calling this."""
        version = hashlib.sha256(data).hexdigest()
        previous = self.current(name)
        path = self.path(name, version)
        if not path.exists():
            write_atomic(path, data)
        write_atomic(self.root / name / POINTER, (version + "\n").encode())
        self._collect(name, keep={version, previous})
        return Stored(name, version, path, created=previous is None)

    def delete(self, name: str) -> bool:
        """Remove a name; the pointer goes first so readers stop seeing it at once."""
        d = self.root / check_name(name)
        if not (d / POINTER).exists():
            return False
        (d / POINTER).unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)
        return True

    def _collect(self, name: str, keep: set) -> None:
        """Drop old version files, keeping the newest few (another replica may be loading one)."""
        d = self.root / name
        files = sorted((p for p in d.glob(f"*{SUFFIX}") if p.stem not in keep),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for p in files[max(KEEP_VERSIONS - len(keep), 0):]:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

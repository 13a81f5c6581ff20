"""Helpers for the adapter store's tests: a directory's full contents, ageing a file, a disk
that fills up at a chosen write."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under root: what 'unchanged' compares."""
    out: dict[str, bytes | None] = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root) + "/"] = None
        for name in files:
            out[os.path.relpath(os.path.join(d, name), root)] = Path(d, name).read_bytes()
    return out


def age(path: Path, seconds: float) -> None:
    """Set the file's times `seconds` into the past (a leftover of a writer killed that long ago)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def failing_fsync(monkeypatch, nth: int, err: int = errno.ENOSPC) -> None:
    """os.fsync fails with `err` on its nth call from now (a network filesystem reports a full
    disk there; a local one at write, which the real small-disk test covers)."""
    calls, real = [0], os.fsync

    def fsync(fd):
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)

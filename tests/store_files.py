"""Helpers for the adapter store's tests: a directory's full contents, ageing a file, a disk
that fills up at a chosen write, a volume that does not tell names apart by case, and one whose
FUSE server dies (what a dead network mount looks like)."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


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


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@contextmanager
def case_folding_volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB exFAT image on a loop device, mounted through FUSE (exfatprogs, exfat-fuse:
    `scripts/install.sh --test`); skipped where those or mounting are not available."""
    if not (shutil.which("mkfs.exfat") and shutil.which("mount.exfat-fuse") and shutil.which("losetup")):
        pytest.skip("no exFAT tools (exfatprogs, exfat-fuse)")
    image, mnt = tmp_path / "volume.img", tmp_path / "volume"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    if (r := _run("mkfs.exfat", str(image))).returncode != 0:
        pytest.skip(f"cannot make an exFAT image: {r.stderr.strip()}")
    if (r := _run("losetup", "-f", "--show", str(image))).returncode != 0:
        pytest.skip(f"cannot attach a loop device here: {r.stderr.strip()}")
    loop = r.stdout.strip()
    try:
        if (r := _run("mount.exfat-fuse", loop, str(mnt))).returncode != 0:
            pytest.skip(f"cannot mount exFAT here: {r.stderr.strip()}")
        try:
            (mnt / "Probe").mkdir()
            assert (mnt / "PROBE").is_dir(), "the exFAT mount tells names apart by case"
            (mnt / "Probe").rmdir()
            yield mnt
        finally:
            _run("umount", str(mnt))
    finally:
        _run("losetup", "-d", loop)


def kill_volume(mnt: Path) -> None:
    """SIGKILL the FUSE server of a `case_folding_volume`: the mount stays, and every access to
    it fails with ENOTCONN, as on a network mount whose server is gone."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"mount.exfat-fuse") and os.fsencode(mnt) in argv:
            os.kill(int(proc.name), signal.SIGKILL)
            break
    else:
        raise AssertionError(f"no FUSE server for {mnt}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.stat(mnt)
        except OSError as e:
            assert e.errno == errno.ENOTCONN, e
            return
        time.sleep(0.02)
    raise AssertionError(f"{mnt} still answers after its FUSE server was killed")

"""Training job folders: where a job's uploaded files and its result live until the job ends.

    workdir = make_workdir()          # lpt-train-XXXX in the temp dir, with an owner file
    sweep_workdirs()                  # at start: remove the folders of servers that are gone

A job removes its folder when it ends, and a journal (LPT_TRAIN_JOURNAL) lets a restarted server
remove those of the jobs it interrupted; a server killed without a journal leaves them behind.
Each folder names the server process that made it (host, boot, pid namespace, pid and the
process's start time, so a reused pid is not mistaken for it), and a starting server removes
only folders whose owner provably no longer runs: never one it cannot tell (another host or
pid namespace, as containers sharing a /tmp have; no owner file; no /proc).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("lpt_server.train")

WORKDIR_PREFIX = "lpt-train-"
OWNER_FILE = ".lpt-owner"
MAX_OWNER_BYTES = 1024


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _started(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it does not run (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])     # field 22; the name may hold spaces and ')'


def this_process() -> dict:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pidns": _pid_namespace(), "pid": os.getpid(),
            "started": _started(os.getpid())}


def make_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    (workdir / OWNER_FILE).write_text(json.dumps(this_process()))
    return workdir


def _owner_gone(owner: dict, me: dict) -> bool:
    """True only when the owner ran on this machine since this boot, in this pid namespace (its
    pids are ours to look up), and runs no more."""
    if me["boot"] is None or me["pidns"] is None or me["started"] is None:     # cannot tell here (no /proc)
        return False
    if any(owner.get(k) != me[k] for k in ("host", "boot", "pidns")):
        return False
    pid = owner.get("pid")
    return isinstance(pid, int) and _started(pid) != owner.get("started")


def _read_owner(d: Path) -> dict | None:
    """The folder's owner record: a small regular file (not a link, a pipe or anything large)."""
    path = d / OWNER_FILE
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_OWNER_BYTES:
        return None
    owner = json.loads(path.read_bytes())
    return owner if isinstance(owner, dict) else None


def sweep_workdirs(tmp: str | Path | None = None) -> list[Path]:
    """Remove the job folders in the temp dir whose server is gone; returns what went."""
    root = Path(tmp or tempfile.gettempdir())
    me, removed = this_process(), []
    try:
        candidates = [d for d in root.iterdir() if d.name.startswith(WORKDIR_PREFIX)]
    except OSError:
        return removed
    for d in candidates:
        try:
            if d.is_symlink() or not d.is_dir():
                continue
            owner = _read_owner(d)
        except (OSError, ValueError, RecursionError):
            continue                                          # not one of ours, or unreadable: left alone
        if owner is not None and _owner_gone(owner, me):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("removed %d training job folder(s) left by a server that is gone", len(removed))
    return removed

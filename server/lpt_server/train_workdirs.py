"""Training job folders: where a job's uploaded files and its result live until the job ends.

    workdir = make_workdir()          # lpt-train-XXXX in the temp dir, with an owner file
    sweep_workdirs()                  # at start: remove the folders of servers that are gone

A job removes its folder when it ends, and a journal (LPT_TRAIN_JOURNAL) lets a restarted server
remove those of the jobs it interrupted; a server killed without a journal leaves them behind.
Each folder names the server process that made it (host, boot, pid and the process's start
time, so a reused pid is not mistaken for it), and a starting server removes only folders whose
owner provably no longer runs on this machine: never one it cannot tell (another host, no
owner file, no /proc).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger("lpt_server.train")

WORKDIR_PREFIX = "lpt-train-"
OWNER_FILE = ".lpt-owner"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
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
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "started": _started(os.getpid())}


def make_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    (workdir / OWNER_FILE).write_text(json.dumps(this_process()))
    return workdir


def _owner_gone(owner: dict, me: dict) -> bool:
    """True only when the owner ran on this machine since this boot and runs no more."""
    if me["boot"] is None or me["started"] is None:          # cannot tell here (no /proc)
        return False
    if owner.get("host") != me["host"] or owner.get("boot") != me["boot"]:
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == me["pid"]:
        return False
    return _started(pid) != owner.get("started")


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
            owner = json.loads((d / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue                                          # not one of ours, or unreadable: left alone
        if isinstance(owner, dict) and _owner_gone(owner, me):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("removed %d training job folder(s) left by a server that is gone", len(removed))
    return removed

"""Training job folders: a server killed with jobs (and no journal) leaves their folders in the
temp dir; the next server to start removes them, and nothing that is not provably theirs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lpt_server.train_jobs import Trainer
from lpt_server.train_workdirs import OWNER_FILE, WORKDIR_PREFIX, make_workdir, sweep_workdirs, this_process

pytestmark = pytest.mark.unit

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process identities come from /proc")


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """The temp dir the server's job folders go to."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def gone_server_folder(tmp: Path) -> Path:
    """A job folder made by a real server-side process that has exited since."""
    out = subprocess.run([sys.executable, "-c", "from lpt_server.train_workdirs import make_workdir; print(make_workdir())"],
                         env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, check=True)
    d = Path(out.stdout.strip())
    assert d.parent == tmp
    (d / "train.csv").write_text("text,label\ngood,pos\n")
    return d


def owned_by(tmp: Path, name: str, **owner) -> Path:
    d = tmp / name
    d.mkdir()
    (d / OWNER_FILE).write_text(json.dumps({**this_process(), **owner}))
    (d / "train.csv").write_text("x")
    return d


@needs_proc
def test_a_job_folder_names_its_server_and_lives_while_it_runs(tmp):
    d = make_workdir()
    assert d.parent == tmp and d.name.startswith(WORKDIR_PREFIX)
    assert json.loads((d / OWNER_FILE).read_text()) == this_process()
    assert sweep_workdirs() == [] and d.is_dir()


@needs_proc
def test_only_folders_of_servers_that_are_gone_are_removed(tmp):
    gone = gone_server_folder(tmp)
    mine = make_workdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            time.sleep(0.2)
            me = this_process()
            started = int(Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            alive = owned_by(tmp, f"{WORKDIR_PREFIX}alive", pid=live.pid, started=started)
            reused = owned_by(tmp, f"{WORKDIR_PREFIX}reused", pid=live.pid, started=started - 1)   # pid reused since
            my_pid = owned_by(tmp, f"{WORKDIR_PREFIX}mypid", started=me["started"] - 1)   # an earlier server, same pid
            gone_owner = json.loads((gone / OWNER_FILE).read_text())
            elsewhere = owned_by(tmp, f"{WORKDIR_PREFIX}elsewhere", **{**gone_owner, "host": me["host"] + "-other"})
            old_boot = owned_by(tmp, f"{WORKDIR_PREFIX}oldboot", **{**gone_owner, "boot": "another-boot"})
            other_ns = owned_by(tmp, f"{WORKDIR_PREFIX}otherns", **{**gone_owner, "pidns": "pid:[1]"})   # another container
            not_prefixed = owned_by(tmp, "data", **gone_owner)
            no_owner = tmp / f"{WORKDIR_PREFIX}no-owner"
            no_owner.mkdir()
            bad_owner = tmp / f"{WORKDIR_PREFIX}bad-owner"
            bad_owner.mkdir()
            (bad_owner / OWNER_FILE).write_text("not json")
            link = tmp / f"{WORKDIR_PREFIX}link"
            link.symlink_to(not_prefixed)

            fifo = tmp / f"{WORKDIR_PREFIX}fifo"                    # a planted owner file that would block
            fifo.mkdir()
            os.mkfifo(fifo / OWNER_FILE)
            deep = tmp / f"{WORKDIR_PREFIX}deep"                    # ... or blow the parser's stack
            deep.mkdir()
            (deep / OWNER_FILE).write_text("[" * 1000)

            assert sorted(sweep_workdirs()) == sorted([gone, reused, my_pid])
            assert not gone.exists() and not reused.exists()
            for kept in (mine, alive, elsewhere, old_boot, other_ns, not_prefixed, no_owner, bad_owner, fifo, deep):
                assert kept.is_dir(), kept
            assert link.is_symlink()
        finally:
            live.kill()


@needs_proc
def test_a_starting_trainer_sweeps_what_a_killed_server_left(tmp):
    gone = gone_server_folder(tmp)
    trainer = Trainer(command=[sys.executable, "-c", "pass"], env={}, queue_limit=1, commit=lambda n, d: {})
    trainer.start()
    try:
        deadline = time.monotonic() + 30
        while gone.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not gone.exists()
    finally:
        trainer.stop()


@needs_proc
def test_a_live_server_in_another_pid_namespace_keeps_its_folder(tmp):
    """Containers sharing a /tmp (and a host name) see other pids: a live one is not ours to judge."""
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    code = "from lpt_server.train_workdirs import make_workdir; print(make_workdir(), flush=True); import time; time.sleep(60)"
    with subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)}) as other:
        try:
            line = other.stdout.readline().strip()
            if not line:
                pytest.skip(f"cannot make a pid namespace here: {other.stderr.read().strip()[:200]}")
            folder = Path(line)
            assert json.loads((folder / OWNER_FILE).read_text())["pidns"] != this_process()["pidns"]
            assert sweep_workdirs() == [] and folder.is_dir()
        finally:
            other.kill()

"""The training job state machine (server/lpt_server/train_jobs.py) with a scripted child process
in place of `python -m lpt.jobrun`: the same pipe protocol, no model. What a job goes through
(queued -> running -> succeeded | failed | cancelled), what is stored, what is cleaned up."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from lpt_server.train_jobs import (MAX_HISTORY, WORKDIR_PREFIX, JobFinished, Trainer, TrainJob, TrainQueueFull,
                                   UnknownJob)

pytestmark = pytest.mark.unit

# The child's side of the protocol: the spec on stdin; argv[0] of the spec says what to do.
CHILD = r'''
import json, sys, threading, time
spec = json.loads(sys.stdin.readline())
mode, out = spec["argv"][0], spec["argv"][1]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
def send(**e):
    print(json.dumps(e), flush=True)
if mode == "crash":
    print("Traceback: something broke", file=sys.stderr, flush=True)
    sys.exit(1)
if mode == "error":
    send(event="error", kind="usage", message=f"{spec['argv'][2]}train.csv line 3: empty label")
    sys.exit(2)
if mode == "late":         # finishes whatever it is told: the cancel came after its last step
    send(event="progress", epoch=1, epochs=1, step=1, steps=1, loss=0.5, dev_accuracy=None)
    time.sleep(1.0)
    open(out, "wb").write(b"adapter bytes")
    send(event="done", summary={"dev": None, "test": None})
    sys.exit(0)
steps = 4 if mode != "slow" else 10**6
for step in range(1, steps + 1):
    if stop.is_set():
        send(event="error", kind="cancelled", message="cancelled")
        sys.exit(3)
    send(event="progress", epoch=1, epochs=1, step=step, steps=steps, loss=1.0 / step, dev_accuracy=None)
    time.sleep(0.01)
send(event="progress", epoch=1, epochs=1, step=steps, steps=steps, loss=0.25, dev_accuracy=0.75)
open(out, "wb").write(b"adapter bytes")
send(event="done", summary={"dev": {"accuracy": 0.75}, "test": None, "best_dev_accuracy": float("nan")})
'''


class Store:
    """What `commit` saw; fails on demand."""

    def __init__(self, fail: Exception | None = None):
        self.fail, self.puts = fail, []

    def put(self, name: str, data: bytes) -> dict:
        if self.fail is not None:
            raise self.fail
        self.puts.append((name, data))
        return {"version": "ab" * 32}


@pytest.fixture
def make(tmp_path):
    trainers = []

    def make(queue_limit=4, store=None, on_end=None):
        store = store or Store()
        t = Trainer(command=[sys.executable, "-c", CHILD], env={}, queue_limit=queue_limit, commit=store.put,
                    on_end=on_end)
        t.start()
        trainers.append(t)
        return t, store

    yield make
    for t in trainers:
        t.stop()


def job(tmp_path: Path, mode: str, task: str = "t") -> TrainJob:
    workdir = tmp_path / f"{WORKDIR_PREFIX}{mode}-{time.monotonic_ns()}"
    workdir.mkdir()
    out = workdir / "out.safetensors"
    return TrainJob(task, [mode, str(out), f"{workdir}/data/"], workdir, out, {f"{workdir}/data/": ""})


def wait(trainer: Trainer, job_id: str, states=("succeeded", "failed", "cancelled"), timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = trainer.get(job_id)
        if view["state"] in states:
            return view
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {trainer.get(job_id)['state']}")


def test_a_job_that_trains_is_stored_and_reports_its_progress(make, tmp_path):
    trainer, store = make()
    j = job(tmp_path, "ok", task="my-task")
    view = trainer.submit(j)
    assert view["state"] == "queued" and view["started_at"] is None and view["adapter"] is None
    done = wait(trainer, j.id)
    assert done["state"] == "succeeded", done
    assert store.puts == [("my-task", b"adapter bytes")]            # through commit, the bytes the child wrote
    assert done["adapter"] == {"name": "my-task", "version": "ab" * 32}
    assert done["metrics"] == {"dev": {"accuracy": 0.75}, "test": None}
    assert done["progress"] == {"epoch": 1, "epochs": 1, "step": 4, "steps": 4, "loss": 0.25, "dev_accuracy": 0.75}
    assert [h["step"] for h in done["history"]] == [1, 2, 3, 4] and done["history"][-1]["dev_accuracy"] == 0.75
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    deadline = time.monotonic() + 10          # the runner removes the job's files right after it ends
    while j.workdir.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not j.workdir.exists()


def test_a_failed_run_names_the_file_as_the_client_did_and_stores_nothing(make, tmp_path):
    trainer, store = make()
    j = job(tmp_path, "error")
    done = wait(trainer, trainer.submit(j)["id"])
    assert done["state"] == "failed" and done["error"] == "train.csv line 3: empty label", done
    assert store.puts == [] and done["adapter"] is None


def test_a_crashed_child_fails_the_job_with_its_last_words(make, tmp_path):
    trainer, store = make()
    done = wait(trainer, trainer.submit(job(tmp_path, "crash"))["id"])
    assert done["state"] == "failed"
    assert "exited with code 1" in done["error"] and "something broke" in done["error"]
    # the queue goes on after a failure
    assert wait(trainer, trainer.submit(job(tmp_path, "ok"))["id"])["state"] == "succeeded"


def test_an_adapter_the_store_refuses_fails_the_job(make, tmp_path):
    trainer, _ = make(store=Store(fail=ValueError("disk on fire")))
    done = wait(trainer, trainer.submit(job(tmp_path, "ok"))["id"])
    assert done["state"] == "failed" and done["error"] == "the trained adapter was not stored: disk on fire"


def test_queue_bound_cancel_and_conflict(make, tmp_path):
    trainer, store = make(queue_limit=1)
    running = job(tmp_path, "slow", task="a")
    trainer.submit(running)
    wait(trainer, running.id, states=("running",))
    queued = job(tmp_path, "ok", task="b")
    trainer.submit(queued)                                           # the one waiting place
    with pytest.raises(TrainQueueFull, match="LPT_TRAIN_QUEUE=1"):
        trainer.submit(job(tmp_path, "ok", task="c"))
    with pytest.raises(TrainQueueFull):
        trainer.check_room()

    assert trainer.cancel(queued.id)["state"] == "cancelled"      # dropped from the queue
    assert not queued.workdir.exists()
    trainer.check_room()                                             # its place is free again
    while trainer.get(running.id)["progress"]["step"] < 3:         # it trains...
        time.sleep(0.01)
    view = trainer.cancel(running.id)                                # ...and stops at its next step
    assert view["state"] == "cancelled" and view["finished_at"] is not None
    deadline = time.monotonic() + 10
    while running.workdir.exists() and time.monotonic() < deadline:   # the runner let the child go
        time.sleep(0.02)
    assert not running.workdir.exists()
    assert trainer.get(running.id)["state"] == "cancelled" and store.puts == []
    with pytest.raises(JobFinished):
        trainer.cancel(running.id)
    with pytest.raises(UnknownJob):
        trainer.get("nope")
    assert [j["task"] for j in trainer.list()] == ["b", "a"]          # newest first
    # the runner is free: the next job runs
    assert wait(trainer, trainer.submit(job(tmp_path, "ok", task="d"))["id"])["state"] == "succeeded"


def test_what_waits_runs_and_ends_is_counted_for_the_metrics(make, tmp_path):
    ended: list[tuple[str, float | None]] = []
    trainer, store = make(store=Store(fail=ValueError("refused")), on_end=lambda *e: ended.append(e))
    assert trainer.active() == {"queued": 0, "running": 0}
    slow, queued, refused = job(tmp_path, "slow"), job(tmp_path, "ok"), job(tmp_path, "ok")
    trainer.submit(slow)
    wait(trainer, slow.id, states=("running",))
    trainer.submit(queued)
    trainer.submit(refused)
    assert trainer.active() == {"queued": 2, "running": 1}
    trainer.cancel(queued.id)                           # never ran: no duration
    assert ended == [("cancelled", None)] and trainer.active() == {"queued": 1, "running": 1}
    time.sleep(0.2)
    trainer.cancel(slow.id)
    assert wait(trainer, refused.id)["state"] == "failed"        # ran, then the store refused it
    assert [state for state, _ in ended] == ["cancelled", "cancelled", "failed"]
    (_, ran_slow), (_, ran_refused) = ended[1:]
    assert ran_slow >= 0.2 and ran_refused > 0
    assert trainer.active() == {"queued": 0, "running": 0}


def test_a_job_cancelled_as_it_finishes_stores_nothing(make, tmp_path):
    trainer, store = make()
    late = job(tmp_path, "late")
    trainer.submit(late)
    while trainer.get(late.id)["progress"]["step"] < 1:
        time.sleep(0.01)
    assert trainer.cancel(late.id)["state"] == "cancelled"
    deadline = time.monotonic() + 10
    while late.workdir.exists() and time.monotonic() < deadline:     # the child finished, its result was dropped
        time.sleep(0.02)
    assert not late.workdir.exists()
    assert trainer.get(late.id)["state"] == "cancelled" and trainer.get(late.id)["adapter"] is None
    assert store.puts == []


def test_stopping_the_trainer_cancels_its_jobs(make, tmp_path):
    trainer, store = make()
    running, queued = job(tmp_path, "slow"), job(tmp_path, "ok")
    trainer.submit(running)
    wait(trainer, running.id, states=("running",))
    trainer.submit(queued)
    stopper = threading.Thread(target=trainer.stop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive()
    assert trainer.get(queued.id)["state"] == "cancelled" and "server stopped" in trainer.get(queued.id)["error"]
    assert trainer.get(running.id)["state"] == "cancelled" and "while the job ran" in trainer.get(running.id)["error"]
    with pytest.raises(TrainQueueFull, match="shutting down"):
        trainer.submit(job(tmp_path, "ok"))
    assert store.puts == []


def test_history_stays_bounded_and_keeps_every_evaluation():
    j = TrainJob("t", [], Path("."), Path("x"))
    steps, epochs = 5000, 10
    for step in range(1, steps + 1):
        j.record({"epoch": 1 + (step - 1) * epochs // steps, "epochs": epochs, "step": step, "steps": steps,
                  "loss": 1.0})
        if step % (steps // epochs) == 0:
            j.record({"epoch": step * epochs // steps, "epochs": epochs, "step": step, "steps": steps, "loss": 1.0,
                      "dev_accuracy": step / steps})
    assert len(j.history) <= MAX_HISTORY
    assert len(j.history) > MAX_HISTORY // 4                      # downsampled, not emptied
    assert [h["dev_accuracy"] for h in j.history if h["dev_accuracy"] is not None] == \
        [e / epochs for e in range(1, epochs + 1)]
    assert j.history[-1]["step"] == steps and j.history[-1]["epoch"] == epochs
    steps_kept = [h["step"] for h in j.history]
    assert steps_kept == sorted(steps_kept)
    assert j.progress["dev_accuracy"] == 1.0


def test_bad_progress_events_are_ignored():
    j = TrainJob("t", [], Path("."), Path("x"))
    j.record({"epoch": "1", "epochs": 1, "step": 1, "steps": 1})
    j.record({"epoch": 1, "epochs": 1, "step": 1, "steps": 0})
    assert j.history == [] and j.progress["steps"] == 0
    j.record({"epoch": 1, "epochs": 1, "step": 1, "steps": 2, "loss": float("nan")})
    assert j.progress["loss"] is None                                # NaN cannot go into a JSON answer


def test_a_journal_keeps_the_jobs_across_a_restart_and_fails_the_interrupted_ones(tmp_path):
    journal = tmp_path / "state" / "jobs.json"
    store = Store()

    def trainer(ended=None):
        t = Trainer(command=[sys.executable, "-c", CHILD], env={}, queue_limit=4, commit=store.put, journal=journal,
                    on_end=lambda state, seconds: ended.append((state, seconds)) if ended is not None else None)
        t.start()
        return t

    first = trainer()
    done = job(tmp_path, "ok")
    first.submit(done)
    finished = wait(first, done.id)
    assert finished["state"] == "succeeded"
    running = job(tmp_path, "slow")
    first.submit(running)
    wait(first, running.id, states=("running",))
    deadline = time.monotonic() + 10          # the journal is written by its own thread
    while time.monotonic() < deadline and '"running"' not in journal.read_text():
        time.sleep(0.02)
    # the server dies without stopping its trainer (kill -9): what the journal says is all there is
    first._closed = True
    first._stop_child(first._proc)

    ended = []
    second = trainer(ended)
    assert ended == [("failed", None)]                            # counted once, by the server that saw it
    try:
        again = second.get(done.id)
        assert again["state"] == "succeeded" and again["adapter"] == finished["adapter"]
        assert again["history"] == finished["history"] and again["metrics"] == finished["metrics"]
        lost = second.get(running.id)
        assert lost["state"] == "failed" and "restarted while the job was running" in lost["error"]
        assert lost["finished_at"] is not None and not running.workdir.exists()
        assert [j["id"] for j in second.list()] == [running.id, done.id]        # newest first
    finally:
        second.stop()
    assert store.puts == [("t", b"adapter bytes")]                # the interrupted job stored nothing
    ended = []
    third = trainer(ended)                                          # what the second one wrote
    try:
        assert third.get(running.id)["state"] == "failed" and third.get(done.id)["state"] == "succeeded"
        assert ended == []                                          # not counted a second time
    finally:
        third.stop()


def test_without_a_journal_a_restart_forgets_the_jobs(make, tmp_path):
    trainer, _ = make()
    j = job(tmp_path, "ok")
    trainer.submit(j)
    wait(trainer, j.id)
    trainer.stop()
    again, _ = make()
    with pytest.raises(UnknownJob, match="LPT_TRAIN_JOURNAL"):
        again.get(j.id)


def test_an_unknown_job_id_is_quoted_short(make):
    trainer, _ = make()
    long_id = "a" * 60_000
    for call in (trainer.get, trainer.cancel):
        with pytest.raises(UnknownJob) as err:
            call(long_id)
        assert len(str(err.value)) < 300 and "(60000 characters)" in str(err.value)


def test_journal_records_edited_by_hand_are_skipped_not_a_crash(make, tmp_path, caplog):
    """A record with a field of the wrong type stopped the server from starting (sorting by
    created_at), or made every listing a 500 and killed the journal's writer and the shutdown."""
    import json as json_module

    journal = tmp_path / "jobs.json"
    trainer = Trainer(command=[sys.executable, "-c", CHILD], env={}, queue_limit=4, commit=Store().put,
                      journal=journal)
    trainer.start()
    good = job(tmp_path, "ok")
    trainer.submit(good)
    wait(trainer, good.id)
    trainer.stop()
    [record] = json_module.loads(journal.read_text())
    bad = [{**record, "id": f"bad{i}", **change} for i, change in enumerate(
        [{"created_at": None}, {"created_at": "yesterday"}, {"progress": "x"}, {"history": [1, 2]},
         {"adapter": "zzz"}, {"id": 12345}, {"task": None}, {"started_at": "x"}])]
    journal.write_text(json_module.dumps([record, *bad]))
    again = Trainer(command=[sys.executable, "-c", CHILD], env={}, queue_limit=4, commit=Store().put,
                    journal=journal)
    again.start()
    try:
        assert [j["id"] for j in again.list()] == [good.id]
        assert sum("a record skipped" in r.getMessage() for r in caplog.records) == len(bad)
        later = job(tmp_path, "ok")
        again.submit(later)
        wait(again, later.id)
    finally:
        again.stop()                                                # shuts down cleanly
    assert {r["id"] for r in json_module.loads(journal.read_text())} == {good.id, later.id}


def test_a_failure_shows_no_path_of_the_server_s_job_folder(tmp_path):
    j = job(tmp_path, "error")
    message = f"cannot write {j.workdir}/out/t.safetensors: disk full; {j.workdir}/data/train.csv line 3; {j.workdir}"
    assert j.clean(message) == "cannot write out/t.safetensors: disk full; train.csv line 3; the job's folder"


def test_an_unreadable_journal_is_kept_aside_not_overwritten(make, tmp_path, caplog):
    journal = tmp_path / "jobs.json"
    journal.write_text('[{"id": "abc", "task": "t", "state": "succ')     # cut off (a full disk, an edit)
    trainer = Trainer(command=[sys.executable, "-c", CHILD], env={}, queue_limit=4, commit=Store().put,
                      journal=journal)
    trainer.start()
    try:
        assert trainer.list() == []
        later = job(tmp_path, "ok")
        trainer.submit(later)
        wait(trainer, later.id)
    finally:
        trainer.stop()
    [kept] = tmp_path.glob("jobs.json.unreadable-*")
    assert kept.read_text().startswith('[{"id": "abc"')
    assert any(kept.name in r.getMessage() for r in caplog.records)


def test_a_running_job_s_progress_reaches_the_journal(tmp_path, monkeypatch):
    """Written only on changes of state, the journal kept a running job at step 0: a crash then
    showed no sign of how far it had got."""
    import json as json_module

    from lpt_server import train_jobs

    monkeypatch.setattr(train_jobs, "JOURNAL_PROGRESS_S", 0.2)
    journal = tmp_path / "jobs.json"
    trainer = Trainer(command=[sys.executable, "-c", CHILD], env={}, queue_limit=4, commit=Store().put,
                      journal=journal)
    trainer.start()
    try:
        running = job(tmp_path, "slow")
        trainer.submit(running)
        wait(trainer, running.id, states=("running",))

        def step_in_journal():
            try:
                [record] = [r for r in json_module.loads(journal.read_text()) if r["id"] == running.id]
            except (OSError, ValueError):
                return 0
            return record["progress"]["step"] if record["state"] == "running" else 0
        deadline = time.monotonic() + 10
        while step_in_journal() < 5:
            assert time.monotonic() < deadline, f"the journal still says step {step_in_journal()}"
            time.sleep(0.05)
    finally:
        trainer.stop()

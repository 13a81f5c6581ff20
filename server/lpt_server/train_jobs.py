"""Training jobs: a bounded queue, one job at a time, each run in a child process.

    trainer = Trainer(command=..., queue_limit=4, commit=registry.put, explain=str)
    trainer.start()
    view = trainer.submit(TrainJob(task, argv, workdir, out, shown))     # TrainQueueFull: 429
    trainer.get(job_id); trainer.list(); trainer.cancel(job_id)          # UnknownJob, JobFinished

A job is `lpt train` run by `python -m lpt.jobrun` in its own process (its own torch threads,
its own copy of the frozen model, read from the same files the server serves), so serving goes
on beside it. The child reports progress as JSON lines on a pipe; nothing it sends is
unpickled. It writes the adapter file into the job's folder; the parent then stores it through
`commit` (the registry's put: the same validation and store as an upload). One thread waits on
the child, so the event loop never does; the job objects are read under a lock held for
microseconds.

States: queued -> running -> succeeded | failed | cancelled (queued -> cancelled too). With a
journal (LPT_TRAIN_JOURNAL) the job records are also written to a JSON file, by a thread of their
own whenever they change, and read back at start: a job that was queued or running when the
server went away is reported failed, with that reason. Without one they live in memory only.
Since an adapter is stored only by `commit`, after the run, a restart never leaves one
half-registered.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .schemas import TrainJobView
from .store_layout import shown as quoted   # a long id is not echoed in full
from .train_workdirs import WORKDIR_PREFIX, sweep_workdirs

log = logging.getLogger("lpt_server.train")

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_HISTORY = 200           # points kept per job; past it, every other one is dropped
KEEP_FINISHED = 100         # finished jobs remembered; the oldest are forgotten first
CANCEL_GRACE_S = 10.0       # a cancelled child that has not stopped by then is killed
JOURNAL_PROGRESS_S = 5.0    # a running job's progress reaches the journal at most this often
STDERR_LINES = 20           # the child's last stderr lines, kept for a crash's message
MAX_EVENT_BYTES = 1 << 20   # one event line from the child at most


class UnknownJob(LookupError):
    """No training job with that id (-> 404)."""


class TrainQueueFull(Exception):
    """LPT_TRAIN_QUEUE jobs wait already (-> 429)."""


class JobFinished(Exception):
    """The job has ended (or is storing its adapter): it cannot be cancelled (-> 409)."""


def _finite(value):
    """JSON's view of a summary: non-finite floats become None (a JSON answer cannot hold NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@dataclass
class TrainJob:
    """One training job; `view()` is the API's job object."""

    task: str
    argv: list[str]                 # `lpt train`'s arguments, paths inside workdir
    workdir: Path                   # the uploaded files and the result; removed when the job ends
    out: Path                       # where the child writes the adapter file
    shown: dict[str, str] = field(default_factory=dict)   # path prefix -> what the client calls it
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    created_at: float = field(default_factory=time.time)
    state: str = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict = field(default_factory=lambda: {"epoch": 0, "epochs": 0, "step": 0, "steps": 0,
                                                    "loss": None, "dev_accuracy": None})
    history: list[dict] = field(default_factory=list)
    stride: int = 1                 # a step is kept in history every `stride` steps
    error: str | None = None
    adapter: dict | None = None
    metrics: dict | None = None
    committing: bool = False        # the adapter is being stored: too late to cancel

    def view(self) -> dict:
        return {"id": self.id, "task": self.task, "state": self.state, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at, "progress": dict(self.progress),
                "history": [dict(h) for h in self.history], "error": self.error,
                "adapter": dict(self.adapter) if self.adapter else None, "metrics": self.metrics}

    def discard(self) -> None:
        """Remove the job's folder (a job refused after it was prepared)."""
        _remove(self.workdir)

    def clean(self, message: str) -> str:
        """A message with the job folder's paths replaced by the names the client sent, and any
        other path in it (the adapter's `out/...`) shown relative to the folder: the server's
        temporary paths are not the client's business."""
        for prefix, name in self.shown.items():
            message = message.replace(prefix, name)
        return message.replace(f"{self.workdir}{os.sep}", "").replace(str(self.workdir), "the job's folder")

    def record(self, event: dict) -> None:
        """A progress event from the child -> progress and (bounded) history."""
        p = {k: event.get(k) for k in ("epoch", "epochs", "step", "steps", "loss", "dev_accuracy")}
        if not all(isinstance(p[k], int) for k in ("epoch", "epochs", "step", "steps")) or p["steps"] < 1:
            return
        p["loss"] = _finite(float(p["loss"])) if isinstance(p["loss"], (int, float)) else None
        dev = p["dev_accuracy"]
        p["dev_accuracy"] = _finite(float(dev)) if isinstance(dev, (int, float)) else None
        if p["dev_accuracy"] is None:
            p["dev_accuracy"] = self.progress.get("dev_accuracy")   # the latest evaluation stays shown
        self.progress = p
        point = {"step": p["step"], "epoch": p["step"] * p["epochs"] / p["steps"], "loss": p["loss"],
                 "dev_accuracy": None if dev is None else p["dev_accuracy"]}
        if self.history and self.history[-1]["step"] == point["step"]:
            if dev is not None:
                self.history[-1]["dev_accuracy"] = point["dev_accuracy"]
            return
        if point["step"] % self.stride and dev is None:
            return
        self.history.append(point)
        if len(self.history) > MAX_HISTORY:
            kept = [h for i, h in enumerate(self.history) if i % 2 == 0 or h["dev_accuracy"] is not None]
            self.history = kept if len(kept) <= MAX_HISTORY else kept[::2]
            self.stride *= 2


class Journal:
    """The job records in one JSON file, replaced whole (write a temp file, then rename): a reader
    sees the old records or the new ones, never half of them."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> list[dict]:
        try:
            records = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            kept = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            try:                      # kept for whoever wants to look: the next save would replace it
                os.replace(self.path, kept)
            except OSError:
                kept = None
            log.warning("training journal %s unreadable, starting without it%s: %s", self.path,
                        f" (kept as {kept.name})" if kept else "", e)
            return []
        return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []

    def save(self, records: list[dict]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(records), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:          # the jobs go on; only their record after a restart is at stake
            log.warning("training journal %s not written: %s", self.path, e)


def restored(record: dict) -> tuple[TrainJob, bool]:
    """A job read back from the journal, and whether the restart interrupted it: one that was
    queued or running has lost its process with the server, so it failed, and says why."""
    job = TrainJob(record["task"], [], Path(record.get("workdir") or ""), Path(""), id=record["id"])
    for key in ("created_at", "state", "started_at", "finished_at", "progress", "history", "error",
                "adapter", "metrics"):
        if key in record:
            setattr(job, key, record[key])
    interrupted = job.state not in FINISHED
    if interrupted:
        job.error = f"the server restarted while the job was {job.state}: nothing was stored; start the job again"
        job.state, job.finished_at = "failed", time.time()
    # a record edited or damaged by hand: one the API could not show is refused (ValueError) here,
    # not a 500 on every listing later (nor a dead journal writer, a failed shutdown)
    TrainJobView.model_validate(job.view(), strict=True)
    return job, interrupted


class Trainer:
    """The queue and the one thread that runs its jobs, one at a time."""

    def __init__(self, *, command: list[str], env: dict[str, str], queue_limit: int,
                 commit: Callable[[str, bytes], dict], explain: Callable[[BaseException], str] = str,
                 nice: int = 0, journal: Path | None = None,
                 on_end: Callable[[str, float | None], None] | None = None):
        """`on_end(state, seconds)`: called as each job ends here (succeeded, failed, cancelled),
        with how long it ran, or None if it never started (for metrics)."""
        self.command, self.env, self.nice = command, env, nice
        self.on_end = on_end
        self.journal = Journal(journal) if journal is not None else None
        self._dirty = threading.Event()       # the records changed since the journal was written
        self._progressed = threading.Event()  # a running job's progress moved since then
        self.queue_limit = queue_limit
        self.commit, self.explain = commit, explain
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, TrainJob] = {}
        self._queue: deque[TrainJob] = deque()
        self._proc: subprocess.Popen | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="lpt-train", daemon=True)
        self._writer = threading.Thread(target=self._write_journal, name="lpt-train-journal", daemon=True)

    # ---- the API's calls (event loop: only the lock, no I/O) -------------------------------------
    def check_room(self) -> None:
        """TrainQueueFull if a job submitted now would be refused (checked before an upload is read)."""
        with self._lock:
            self._check_room()

    def _check_room(self) -> None:
        if self._closed:
            raise TrainQueueFull("the server is shutting down: no new training jobs")
        if len(self._queue) >= self.queue_limit:
            raise TrainQueueFull(f"{len(self._queue)} training jobs are waiting already (LPT_TRAIN_QUEUE="
                                 f"{self.queue_limit}): retry when one has started, or cancel one")

    def submit(self, job: TrainJob) -> dict:
        with self._lock:
            self._check_room()
            self._jobs[job.id] = job
            self._queue.append(job)
            self._forget_old()
            self._wake.notify()
            self._dirty.set()
            return job.view()

    def get(self, job_id: str) -> dict:
        with self._lock:
            return self._job(job_id).view()

    def list(self) -> list[dict]:
        """Every job remembered, newest first."""
        with self._lock:
            return [j.view() for j in reversed(self._jobs.values())]

    def cancel(self, job_id: str) -> dict:
        """A queued job is dropped; a running one stops at its next step (killed if it has not
        stopped within CANCEL_GRACE_S). JobFinished for a job that has ended."""
        with self._lock:
            job = self._job(job_id)
            if job.state in FINISHED or job.committing:
                raise JobFinished(f"training job {job_id} has {'ended' if job.state in FINISHED else 'finished'} "
                                  f"(state {job.state if job.state in FINISHED else 'storing its adapter'}): "
                                  "there is nothing to cancel")
            queued = job.state == "queued"
            if queued:
                self._queue.remove(job)
            self._end(job, "cancelled", "cancelled by request")
            proc = self._proc if not queued else None
        if queued:
            _remove(job.workdir)
        elif proc is not None:
            self._stop_child(proc)
        return self.get(job_id)

    def _job(self, job_id: str) -> TrainJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no training job {quoted(job_id)} (GET /v1/train lists them; without "
                             "LPT_TRAIN_JOURNAL, jobs are not kept across server restarts)")
        return job

    def active(self) -> dict[str, int]:
        """How many jobs wait and run now: {"queued": n, "running": n}."""
        with self._lock:
            return {"queued": len(self._queue),
                    "running": sum(j.state == "running" for j in self._jobs.values())}

    def _end(self, job: TrainJob, state: str, error: str | None = None) -> None:
        job.state, job.finished_at, job.error = state, time.time(), error
        self._dirty.set()
        if self.on_end is not None:
            self.on_end(state, job.finished_at - job.started_at if job.started_at else None)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for j in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[j.id]

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.journal is not None:
            self._restore()
            self._writer.start()
        self._thread.start()

    def _restore(self) -> None:
        jobs = []
        for record in self.journal.load():
            try:
                job, interrupted = restored(record)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                log.warning("training journal: a record skipped, it is not one this server wrote (%s)",
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                continue
            if interrupted:
                log.warning("training job %s (task %r): %s", job.id, job.task, job.error)
                if job.workdir.name.startswith(WORKDIR_PREFIX):      # its uploaded files
                    _remove(job.workdir)
                if self.on_end is not None:       # the server it ran on never got to count its end
                    self.on_end(job.state, None)
            jobs.append(job)
        with self._lock:
            self._jobs.update((j.id, j) for j in sorted(jobs, key=lambda j: j.created_at))
            self._forget_old()
        if jobs:
            self._dirty.set()

    def _records(self) -> list[dict]:
        with self._lock:
            return [j.view() | {"workdir": str(j.workdir)} for j in self._jobs.values()]

    def _write_journal(self) -> None:
        """Each change of state at once; a running job's progress at most every
        JOURNAL_PROGRESS_S (every step would rewrite the whole file several times a second)."""
        while not self._closed:
            if not self._dirty.wait(JOURNAL_PROGRESS_S) and not self._progressed.is_set():
                continue
            self._dirty.clear()
            self._progressed.clear()
            self.journal.save(self._records())

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, cancel the queued ones, stop the running one, wait for the thread."""
        with self._lock:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                self._end(job, "cancelled", "the server stopped before the job started")
            for job in self._jobs.values():
                if job.state == "running" and not job.committing:
                    self._end(job, "cancelled", "the server stopped while the job ran")
            proc = self._proc
            self._wake.notify_all()
        for job in dropped:
            _remove(job.workdir)
        if proc is not None:
            self._stop_child(proc)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.journal is not None:            # the jobs' last states, written once more
            self._dirty.set()
            self._writer.join(timeout)
            self.journal.save(self._records())

    # ---- the runner thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            sweep_workdirs()      # job folders that servers killed without a journal left behind
        except Exception:         # a clean-up must never stop the queue
            log.exception("training job folders of earlier servers not swept")
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                job.state, job.started_at = "running", time.time()
                self._dirty.set()
            try:
                self._run(job)
            except Exception as e:               # a bug here must not stop the queue
                log.exception("training job %s failed in the server", job.id)
                with self._lock:
                    if job.state not in FINISHED:
                        self._end(job, "failed", f"internal error ({type(e).__name__}); see the server log")
            finally:
                with self._lock:
                    self._proc = None
                    if job.state not in FINISHED:          # defensive: a job never stays running
                        self._end(job, "failed", "the training process ended without a result")
                _remove(job.workdir)

    def _run(self, job: TrainJob) -> None:
        log.info("training job %s (task %r) started", job.id, job.task)
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env, cwd=job.workdir)
        tail: deque[str] = deque(maxlen=STDERR_LINES)
        reader = threading.Thread(target=_drain, args=(proc.stderr, tail, job.id), daemon=True)
        reader.start()
        with self._lock:
            self._proc = proc
            cancelled = job.state == "cancelled"
        try:
            proc.stdin.write(json.dumps({"argv": job.argv, "nice": self.nice}).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            pass                                  # the child died at once: its exit code says why
        if cancelled:
            self._stop_child(proc)
        summary, failure = None, None
        for line in iter(lambda: proc.stdout.readline(MAX_EVENT_BYTES), b""):
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("training job %s: unreadable line from the child ignored", job.id)
                continue
            kind = event.get("event") if isinstance(event, dict) else None
            if kind == "progress":
                with self._lock:
                    job.record(event)
                self._progressed.set()
            elif kind == "done":
                summary = event.get("summary")
            elif kind == "error":
                failure = str(event.get("message"))
        code = proc.wait()
        reader.join(5)
        if not isinstance(summary, dict) and failure is None:
            last = tail[-1] if tail else "no output"
            failure = f"the training process exited with code {code} ({last})"
        self._finish(job, summary if isinstance(summary, dict) else None, failure)

    def _finish(self, job: TrainJob, summary: dict | None, failure: str | None) -> None:
        with self._lock:
            if job.state == "cancelled":
                log.info("training job %s cancelled", job.id)
                return
            if summary is None or not job.out.is_file():
                self._end(job, "failed", job.clean(failure or "the training process wrote no adapter file"))
                log.info("training job %s failed: %s", job.id, job.error)
                return
            job.committing = True
        try:
            info = self.commit(job.task, job.out.read_bytes())
        except Exception as e:
            with self._lock:
                self._end(job, "failed", f"the trained adapter was not stored: {self.explain(e)}")
                job.committing = False
            log.warning("training job %s: adapter not stored: %s", job.id, job.error)
            return
        with self._lock:
            job.adapter = {"name": job.task, "version": info["version"]}
            job.metrics = _finite({"dev": summary.get("dev"), "test": summary.get("test")})
            self._end(job, "succeeded")
            job.committing = False
        log.info("training job %s succeeded: adapter %r version %s", job.id, job.task, info["version"][:12])

    def _stop_child(self, proc: subprocess.Popen) -> None:
        """Ask the child to stop at its next step (a line on its stdin); kill it if it has not
        stopped within CANCEL_GRACE_S."""
        try:
            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            pass
        timer = threading.Timer(CANCEL_GRACE_S, lambda: proc.poll() is None and proc.kill())
        timer.daemon = True
        timer.start()


def _drain(stream, tail: deque, job_id: str) -> None:
    """The child's stderr, line by line: logged at debug, the last lines kept."""
    for raw in iter(lambda: stream.readline(MAX_EVENT_BYTES), b""):
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            tail.append(line[-500:])
            log.debug("training job %s: %s", job_id, line)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def child_command(python: str, threads: int) -> tuple[list[str], dict[str, str]]:
    """The command that runs one job, and its environment: the same interpreter and the same
    `lpt` package as this server, `threads` torch (and BLAS) threads."""
    import lpt

    env = dict(os.environ)
    package_root = str(Path(lpt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    return [python, "-m", "lpt.jobrun"], env

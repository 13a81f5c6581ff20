"""The engine workers: the only threads that call the engine.

    worker = EngineWorker(engine, on_batch=metrics.observe_batch, threads=2)
    worker = EngineWorker(engine, per_thread=fork_model(engine, 2))     # a model process per thread
    worker.start()
    await worker.run(items)        # the batcher's executor: resolves every item's future

Each thread takes one batch at a time from a shared queue, so up to `threads` batches run at
once (the batcher closes one per free thread) while the event loop keeps parsing and answering.
PyTorch's kernels release the GIL: on a CPU, two threads of one torch thread each keep two cores
busy, which is faster for a small model than one batch on two torch threads (threads.py).
With `per_thread`, each thread calls its own engine instead (a model process each:
model_process.py); an engine that raises EngineLost is gone, and its thread stops.
A worker idle for IDLE_TRIM_S after a batch hands the allocator's free pages back to the system.
A batch whose engine call raises fails only its own rows; the thread lives on. If a thread
itself dies (a BaseException, a bug here), `alive` turns False, /ready says 503 and the runtime's
watchdog reports it (`lpt serve` then exits 1 for its supervisor to restart it).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .batcher import Item

log = logging.getLogger("lpt_server.worker")


class WorkerDead(Exception):
    """The engine worker thread is not running (-> 503)."""


class EngineLost(Exception):
    """The engine behind a worker thread is gone (its process died): the thread stops with it."""


class BatchFailed(Exception):
    """The engine raised for a whole batch; every row of that batch gets this (-> 500, logged)."""


@dataclass
class BatchReport:
    """One batch as the engine ran it (for metrics)."""

    rows: int          # rows run (dropped ones excluded)
    dropped: int       # rows whose caller gave up before the engine ran them
    tasks: int         # distinct adapters in the batch
    seconds: float     # engine time
    failed: bool       # the engine raised for the whole batch


@dataclass
class _Job:
    items: list[Item]
    done: asyncio.Future
    loop: asyncio.AbstractEventLoop


# Batches free most of what they allocate, but the C allocator keeps freed pages for reuse, so a
# server's resident memory stays at its busiest. After this long without a batch, a worker hands
# the free pages back (glibc's malloc_trim; elsewhere nothing).
IDLE_TRIM_S = 1.0


def _trimmer() -> Callable[[], object] | None:
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None


_TRIM = _trimmer()


def release_free_memory() -> None:
    if _TRIM is not None:
        _TRIM()


class EngineWorker:
    def __init__(self, engine: Any, on_batch: Callable[[BatchReport], None] | None = None, threads: int = 1,
                 per_thread: Sequence[Any] | None = None):
        """per_thread: each thread's own engine (threads = their number); else every thread calls `engine`."""
        if per_thread is not None:
            threads = len(per_thread)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.engine = engine
        self.engines = list(per_thread) if per_thread is not None else [engine] * threads
        self._own = [e for e in self.engines if e is not engine]     # the threads' own (model processes)
        self.on_batch = on_batch
        self.threads = threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.batches = 0

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._main, args=(e,), name=f"lpt-engine-{i}", daemon=True)
                         for i, e in enumerate(self.engines)]
        for t in self._threads:
            t.start()

    @property
    def failure(self) -> str:
        """Why the worker is not alive, in words."""
        if self.error is not None:
            return repr(self.error)
        gone = [e.gone for e in self._own if getattr(e, "gone", None)]
        return "; ".join(gone) or "not started"

    @property
    def alive(self) -> bool:
        """Every thread running, and every engine of its own still there (a model process that
        died is seen here at once, not at the next batch it would have run)."""
        return (bool(self._threads) and all(t.is_alive() for t in self._threads) and self.error is None
                and all(getattr(e, "alive", True) for e in self._own))

    def stop(self, timeout: float | None = None) -> None:
        """Let each thread finish its current batch and exit (timeout: for all of them together),
        then close the threads' own engines: a thread still stuck in one is released by that."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.error("engine worker thread(s) %s still in a batch %g s into the stop: closing their "
                      "engines", ", ".join(stuck), timeout)
        for e in self._own:
            if hasattr(e, "close"):
                e.close()

    async def run(self, items: list[Item]) -> None:
        """Run one batch on the thread; returns when every item's future is resolved."""
        if not self.alive:
            raise WorkerDead(f"the engine worker is not running ({self.failure})")
        loop = asyncio.get_running_loop()
        job = _Job(items, loop.create_future(), loop)
        self._jobs.put(job)
        await job.done

    # ---- the thread ---------------------------------------------------------------------
    def _main(self, engine: Any) -> None:
        job, ran = None, False
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=IDLE_TRIM_S) if ran and IDLE_TRIM_S else self._jobs.get()
                except queue.Empty:           # idle since the last batch: give back freed memory
                    release_free_memory()
                    ran = False
                    continue
                if job is None:
                    return
                self._run_job(engine, job)
                job, ran = None, True
        except BaseException as e:  # the thread is dying: say why, and release its waiters
            self.error = e
            log.critical("engine worker thread died: %r", e, exc_info=True)
            dead = WorkerDead(f"the engine worker died: {e!r}")
            pending = [job] if job is not None else []
            while True:
                try:
                    j = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if j is not None:
                    pending.append(j)
            for j in pending:
                j.loop.call_soon_threadsafe(_fail_job, j, dead)
            if not isinstance(e, Exception):
                raise

    def _run_job(self, engine: Any, job: _Job) -> None:
        live = [it for it in job.items if not it.dropped]     # cancelled before the engine ran
        t0 = time.perf_counter()
        failed = False
        try:
            results = engine.predict([it.payload for it in live]) if live else []
            if len(results) != len(live):
                raise RuntimeError(f"engine returned {len(results)} results for {len(live)} rows")
        except EngineLost:
            raise                    # not this batch's fault: the thread stops (_main)
        except Exception as e:       # fails this batch's rows only; the thread lives on
            ids = sorted({it.request_id for it in live if it.request_id})   # a batch serves several requests
            log.exception("batch of %d rows failed (request%s %s)", len(live), "s" * (len(ids) != 1),
                          ", ".join(ids) or "-")
            err = BatchFailed(f"the engine failed on this request's batch: {e!r}")
            err.__cause__ = e
            results, failed = [err] * len(live), True
        seconds = time.perf_counter() - t0
        for it in live:
            it.inference_s = seconds
        with self._lock:
            self.batches += 1
        job.loop.call_soon_threadsafe(_finish_job, job, live, results)
        if self.on_batch is not None:
            tasks = len({id(getattr(it.payload, "adapter", None)) for it in live})
            try:
                self.on_batch(BatchReport(len(live), len(job.items) - len(live), tasks, seconds, failed))
            except Exception:  # metrics must never take the worker down
                log.exception("on_batch callback failed")


def _finish_job(job: _Job, live: list[Item], results: list) -> None:
    """On the event loop: resolve each row's future (unless its caller gave up meanwhile).

    `job.done` is resolved first: the loop wakes awaiting tasks in the order their futures
    resolve, so the batcher hands the engine its next batch before the finished batch's
    requests are answered, and the engine does not sit idle behind their responses."""
    if not job.done.done():
        job.done.set_result(None)
    for it, r in zip(live, results):
        if it.future.done():
            continue
        if isinstance(r, BaseException):
            it.future.set_exception(r)
        else:
            it.future.set_result(r)
    for it in job.items:
        if not it.future.done():
            it.future.cancel()


def _fail_job(job: _Job, exc: Exception) -> None:
    for it in job.items:
        if not it.future.done():
            it.future.set_exception(exc)
    if not job.done.done():
        job.done.set_exception(exc)

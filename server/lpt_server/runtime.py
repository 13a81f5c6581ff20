"""The serving runtime: engine, worker threads, batcher, adapter registry, wired together.

One per app, built by create_app and started/stopped by its lifespan. Routes reach it as
`request.app.state.runtime`; they call its parts, never the model directly. The store is swept
of what killed writers left (Store.sweep) at start and every SWEEP_EVERY_S, off the event loop,
and pinged every PROBE_UP_S (every PROBE_DOWN_S while down), so /info and lpt_store_up say whether
it can be reached even when no request touches it, and a store that comes back is used at once.

A server whose engine worker or batcher died cannot serve again: a watchdog sees it within
WATCH_EVERY_S and calls `on_fatal` (set by `lpt serve`: drain and exit 1), so that the supervisor
(Docker's restart policy, Kubernetes) starts a fresh one and a load balancer sees a refused
connection, not a replica answering 503 to everything.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, MutableMapping

from lpt.backbone import ModelLoadError
from lpt.quantize import INT8

from .batcher import Batcher
from .metrics import Metrics
from .registry import Registry, seed_demo_adapters
from .settings import Settings
from .store_layout import StoreError
from .store_calls import StoreCalls
from .stores import AdapterStore, StoreUnavailable, open_store
from .train_form import Runner
from .train_jobs import Trainer, child_command
from .threads import ThreadPlan, thread_plan
from .worker import EngineWorker

log = logging.getLogger("lpt_server")

SWEEP_EVERY_S = 600.0
PROBE_UP_S = 10.0
PROBE_DOWN_S = 1.0
WATCH_EVERY_S = 0.5

EngineFactory = Callable[[Settings], Any]   # returns an lpt.Engine (or anything with .backbone and .predict)

# oneDNN, which runs some of torch's CPU kernels (GELU in float32, matrix products in bfloat16),
# compiles a kernel for each input shape, and two caches keep them: oneDNN's own and the one
# torch's bfloat16 matrix products go through (ideep's, one per thread, read from
# LRU_CACHE_CAPACITY), 1,024 each by default. Every batch a new token count, the kept kernels and
# the heap they pin grew a server's memory without end: by ~100 MB over 3,200 requests in float32
# and ~1 GB in bfloat16 (bench/memory.py). The engine rounds its row counts to a multiple of 16
# (lpt.backbone.PACK_ROWS), so a batch needs a handful of kernels and a server meets a few dozen
# row counts: 128 kernels serve nearly every batch (16 made bfloat16 ~25% slower: it compiled
# most of them again). Each cache reads its bound once, when it is made: before the first kernel.
KERNEL_CACHE_ENTRIES = 128
KERNEL_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_cache(environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep at most KERNEL_CACHE_ENTRIES compiled kernels in each of KERNEL_CACHES, unless the
    environment already sets its bound (then that)."""
    for name in KERNEL_CACHES:
        environ.setdefault(name, str(KERNEL_CACHE_ENTRIES))


class NotStarted(Exception):
    """A request reached the app before its startup (the ASGI lifespan) ran (-> 503)."""


def started(request) -> "Runtime":
    """The runtime of the request's app, once its startup has loaded the model and the store."""
    rt = request.app.state.runtime
    if rt.registry is None:
        raise NotStarted("the server has not started: its model and adapter store load at startup "
                         "(an app served in process needs its lifespan run)")
    return rt


def default_engine(settings: Settings):
    """The real model: `settings.model` on `settings.device` in `settings.dtype`."""
    import torch

    from lpt import Backbone

    bound_kernel_cache()
    # A model process sets its own threads; the server's never runs the model, and one forked
    # after an OpenMP parallel region could hang in its first one.
    torch.set_num_threads(1 if forks_model(settings) else thread_plan(settings).torch_threads)
    if settings.log_format == "json":     # a progress bar would break the one-object-per-line log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return engine_for(Backbone.load(settings.model, settings.device, settings.dtype), settings)


def forks_model(settings: Settings) -> bool:
    """Whether the engine workers run the model in processes of their own (model_process.py): on
    a CPU, where the system shares memory through memfd (Linux)."""
    return settings.model_processes and settings.device.split(":")[0] == "cpu" and hasattr(os, "memfd_create")


def engine_for(backbone, settings: Settings):
    """An engine on this backbone with the settings' cache and padding bounds."""
    from lpt import Engine

    return Engine(backbone, settings.cache_entries, max_padding=settings.max_padding,
                  cache_bytes=int(settings.cache_mb * 2**20))


def sweep_store(store: AdapterStore) -> None:
    """Remove leftovers of killed writers; a failure is logged, never raised (the next sweep retries)."""
    try:
        removed = store.sweep()
    except StoreUnavailable as e:
        log.warning("adapter store sweep skipped: %s", e)
        return
    except Exception:
        log.exception("adapter store sweep failed")
        return
    if removed:
        log.info("adapter store: removed %d leftover(s) of interrupted writes: %s", len(removed),
                 ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""))


class Runtime:
    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None,
                 demo_dir: Path | None = None):
        self.settings = settings
        self.engine_factory = engine_factory or default_engine
        self.demo_dir = demo_dir
        self.metrics = Metrics()
        self.engine = None
        self.registry: Registry | None = None
        self.store_calls = StoreCalls()    # requests' store I/O: not on the threads that tokenize
        self.worker: EngineWorker | None = None
        self.model_processes: list = []     # one per engine worker, or none (model_process.py)
        self.batcher: Batcher | None = None
        self.trainer: Trainer | None = None
        # int8 has no backward pass: jobs train on the float32 model, and serve on int8
        train_dtype = "float32" if settings.dtype == INT8 else settings.dtype
        self.train_runner = Runner(settings.model, settings.device, train_dtype, settings.train_threads)
        self.started_at = time.time()
        self.plan: ThreadPlan = thread_plan(settings)
        self.load_seconds: float | None = None
        self.seeded: list[str] = []
        self.draining = False      # set on SIGTERM: /ready says 503 while in-flight requests finish
        self._sweeper: asyncio.Task | None = None
        self._prober: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self.on_fatal: Callable[[str], None] | None = None    # called once if serving cannot go on
        self.fatal: str | None = None
        self.startup_error: str | None = None   # a startup refused for a reason the user can fix

    async def start(self) -> None:
        s = self.settings
        try:                          # before the model: a store that cannot be used fails fast
            store = await asyncio.to_thread(open_store, s.store, timeout_s=s.store_timeout_s,
                                            cache_bytes=s.store_cache_mb << 20)
            t0 = time.perf_counter()
            self.engine = await asyncio.to_thread(self.engine_factory, s)
        except (StoreError, ModelLoadError) as e:
            self.startup_error = str(e)       # said in one line: no traceback (app.py)
            log.error("%s", e)
            raise
        self.load_seconds = time.perf_counter() - t0
        backbone = self.engine.backbone
        self.model_processes = await asyncio.to_thread(self._fork_model)
        try:
            await self._start_serving(store, backbone, t0)
        except BaseException:           # a startup that fails after the fork stops the processes
            for p in self.model_processes:
                p.close()
            raise

    async def _start_serving(self, store, backbone, t0: float) -> None:
        s = self.settings
        log.info("model %r loaded in %.1f s (%s, %s, %s modules); %d engine worker(s) x %d torch thread(s)%s",
                 getattr(backbone, "model_id", s.model), self.load_seconds, getattr(backbone, "device", s.device),
                 getattr(backbone, "precision", s.dtype), getattr(backbone, "modules_from", "its own"),
                 self.plan.workers, self.plan.torch_threads,
                 f", each in a model process (pids {', '.join(str(p.pid) for p in self.model_processes)})"
                 if self.model_processes else "")
        await asyncio.to_thread(sweep_store, store)
        self.registry = Registry(store, backbone, max_resident=s.max_resident_adapters,
                                 max_bytes=s.max_adapter_bytes,
                                 recheck_s=s.store_recheck_ms / 1000, on_load=self.metrics.adapter_load_seconds.observe,
                                 on_forget=self.metrics.forget_task)
        if s.demo_adapters and self.demo_dir is not None:
            self.seeded = await asyncio.to_thread(seed_demo_adapters, self.registry, self.demo_dir)
        await asyncio.to_thread(self.registry.scan)
        log.info("adapter store %s: %d adapter(s) usable, %d skipped", s.store, self.registry.registered,
                 len(self.registry.problems()))
        self._sweeper = asyncio.create_task(self._sweep_every(SWEEP_EVERY_S))
        self._prober = asyncio.create_task(self._probe_store())
        self.worker = EngineWorker(self.engine, on_batch=self.metrics.observe_engine_batch,
                                   threads=self.plan.workers, per_thread=self.model_processes or None)
        self.worker.start()
        self.batcher = Batcher(self.worker.run, max_rows=s.max_batch_rows, max_tokens=s.max_batch_tokens,
                               max_wait_s=s.max_wait_ms / 1000, queue_limit=s.queue_limit,
                               on_batch=self.metrics.observe_closed_batch, lanes=self.plan.workers,
                               on_dropped=self.metrics.rows_dropped.inc)
        self.batcher.start()
        self._watchdog = asyncio.create_task(self._watch(WATCH_EVERY_S))
        self.trainer = self._make_trainer()
        await asyncio.to_thread(self.trainer.start)      # reads its journal, if any
        self.metrics.bind(queue_size=lambda: len(self.batcher), resident=lambda: self.registry.resident_count,
                          registered=lambda: self.registry.registered, worker_alive=lambda: self.worker.alive,
                          cache_stats=self.cache_stats, store_up=lambda: store.health().up,
                          train_active=self.trainer.active)

    def _fork_model(self) -> list:
        """One model process per engine worker, when the settings ask for them and the engine is
        lpt's own (a test's stand-in engine runs in threads)."""
        from lpt import Engine

        if not (forks_model(self.settings) and isinstance(self.engine, Engine)):
            return []
        from .model_process import fork_model

        return fork_model(self.engine, self.plan.workers, self.plan.torch_threads,
                          self.settings.max_resident_adapters)

    def cache_stats(self):
        """The layer-k cache's counters: the engine's, or summed over the model processes."""
        if self.model_processes:
            stats = [p.cache for p in self.model_processes]
            return type(stats[0])(*(sum(getattr(c, f) for c in stats) for f in ("hits", "misses", "bytes")))
        return getattr(getattr(self.engine, "cache", None), "stats", None)

    def _make_trainer(self) -> Trainer:
        """Training jobs: run beside serving in child processes; a result is stored through the
        registry, exactly as an upload."""
        from .errors import describe

        command, env = child_command(sys.executable, self.settings.train_threads)
        return Trainer(command=command, env=env, queue_limit=self.settings.train_queue,
                       commit=lambda name, data: self.registry.put(name, data)[0],
                       explain=lambda e: describe(e)[2], nice=self.settings.train_nice,
                       journal=self.settings.train_journal, on_end=self.metrics.observe_train_job)

    async def stop(self) -> None:
        """Finish what was accepted, then stop the worker."""
        self.draining = True
        for task in (self._sweeper, self._prober, self._watchdog):
            if task is not None:
                task.cancel()
        if self.trainer is not None:
            await asyncio.to_thread(self.trainer.stop)
        # Bounded by the drain: requests are answered (504) by then, and a batch stuck in the
        # engine (a model process stopped, a hung kernel) must not keep the server from exiting.
        deadline = time.monotonic() + self.settings.drain_seconds
        if self.batcher is not None:
            try:
                await asyncio.wait_for(self.batcher.close(drain=True), self.settings.drain_seconds)
            except asyncio.TimeoutError:
                await self.batcher.close(drain=False)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop, max(1.0, deadline - time.monotonic()))
        self.store_calls.close()
        if self.registry is not None:
            self.registry.store.close()
        log.info("stopped")

    async def _sweep_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.store_calls.run(sweep_store, self.registry.store, timeout_s=seconds)
            except StoreUnavailable:
                log.warning("adapter store sweep still running after %g s", seconds)

    async def store_io(self, fn: Callable[..., Any], *args, timeout_s: float | None = None) -> Any:
        """fn(*args) on the store's threads; StoreUnavailable (503) past `timeout_s` (what is left
        of the request's LPT_REQUEST_TIMEOUT_S; all of it by default)."""
        return await self.store_calls.run(fn, *args, timeout_s=timeout_s or self.settings.request_timeout_s)

    async def _watch(self, seconds: float) -> None:
        """Report, once, that the engine worker or the batcher died (readiness says which)."""
        while True:
            await asyncio.sleep(seconds)
            if self.draining:
                continue
            ready, why = self.readiness()
            if not ready:
                self.fatal = why
                log.critical("cannot serve any more: %s", why)
                if self.on_fatal is not None:
                    self.on_fatal(why)
                return

    async def _probe_store(self) -> None:
        store = self.registry.store
        last = time.monotonic()
        while True:
            # wake every PROBE_DOWN_S: a store that a request found down is pinged within it (while
            # down, names not known answer 503 at once); one that is up, every PROBE_UP_S
            await asyncio.sleep(PROBE_DOWN_S)
            if store.health().up and time.monotonic() - last < PROBE_UP_S:
                continue
            last = time.monotonic()
            was = store.health()
            try:
                now = await self.store_calls.run(store.ping, timeout_s=PROBE_UP_S)
            except StoreUnavailable:    # the ping itself is stuck past its store timeout
                log.warning("adapter store probe got no answer within %g s", PROBE_UP_S)
                continue
            except Exception:           # ping never raises; if one does, the probe still goes on
                log.exception("adapter store probe failed")
                continue
            if was.up and not now.up:
                log.warning("adapter store %s is unreachable: %s (loaded adapters keep serving; uploads and "
                            "deletes answer 503 until it is back)", store.location, now.error)
            elif now.up and not was.up:
                log.info("adapter store %s is reachable again", store.location)

    def store_info(self) -> dict:
        """What /info shows of the store."""
        if self.registry is None:
            return {"location": self.settings.store, "up": None}
        store = self.registry.store
        h = store.health()
        return {"kind": store.kind, "location": store.location, "up": h.up, "error": h.error}

    def readiness(self) -> tuple[bool, str]:
        if self.engine is None:
            return False, "the model is not loaded yet"
        if self.draining:
            return False, "the server is shutting down"
        if self.worker is None or not self.worker.alive:
            return False, f"the engine worker is not running ({self.worker.failure})" if self.worker else \
                "the engine worker has not started"
        if self.batcher is None or not self.batcher.alive:
            return False, "the batcher is not running"
        return True, "ready"

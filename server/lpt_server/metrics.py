"""Prometheus metrics, one CollectorRegistry per app (two apps in one process never collide).

Names start with `lpt_`. Gauges that mirror other objects (queue size, adapters, the layer-k
cache) are read at scrape time, so nothing has to remember to update them.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .batcher import BatchStats
from .train_jobs import ACTIVE, FINISHED
from .worker import BatchReport

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TASKS = (1, 2, 3, 4, 8, 16, 32, 64)
TRAIN_SECONDS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class _CacheCollector(Collector):
    """The engine's layer-k state cache counters, read when scraped."""

    def __init__(self, stats: Callable[[], object | None]):
        self.stats = stats

    def collect(self):
        s = self.stats()
        hits = CounterMetricFamily("lpt_layer_cache_hits", "layer-k state cache hits")
        misses = CounterMetricFamily("lpt_layer_cache_misses", "layer-k state cache misses")
        hits.add_metric([], getattr(s, "hits", 0) if s is not None else 0)
        misses.add_metric([], getattr(s, "misses", 0) if s is not None else 0)
        held = GaugeMetricFamily("lpt_layer_cache_bytes", "bytes of hidden states the layer-k cache holds")
        held.add_metric([], getattr(s, "bytes", 0) if s is not None else 0)
        yield hits
        yield misses
        yield held


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("lpt_requests", "classify requests, by task and HTTP status",
                                ["task", "status"], registry=r)
        # By status only: a histogram per task would be ~15 series for each of hundreds of adapters
        # (2,000 tasks made a 2.7 MB page that took 0.4 s to render).
        self.request_seconds = Histogram("lpt_request_duration_seconds", "classify request duration, by HTTP status",
                                         ["status"], buckets=LATENCY, registry=r)
        self.in_flight = Gauge("lpt_requests_in_flight", "classify requests being served", registry=r)
        self.queue_size = Gauge("lpt_queue_size", "rows waiting for a batch", registry=r)
        self.queue_wait = Histogram("lpt_queue_wait_seconds", "time a row waited before its batch closed",
                                    buckets=LATENCY, registry=r)
        self.batch_rows = Histogram("lpt_batch_rows", "rows per batch run by the engine", buckets=ROWS, registry=r)
        self.batch_tasks = Histogram("lpt_batch_tasks", "distinct tasks (adapters) per batch", buckets=TASKS,
                                     registry=r)
        self.batch_padded_tokens = Histogram("lpt_batch_padded_tokens", "rows x longest row, per batch closed",
                                             buckets=(64, 256, 1024, 2048, 4096, 8192, 16384), registry=r)
        self.rows_dropped = Counter("lpt_rows_dropped", "rows dropped before the engine ran them "
                                    "(client gone or timed out)", registry=r)
        self.batches_failed = Counter("lpt_batches_failed", "batches whose engine call raised", registry=r)
        self.inference_seconds = Histogram("lpt_inference_duration_seconds", "engine time per batch",
                                           buckets=LATENCY, registry=r)
        self.adapters_resident = Gauge("lpt_adapters_resident", "adapters loaded in memory", registry=r)
        self.adapters_registered = Gauge("lpt_adapters_registered", "usable adapters known", registry=r)
        self.adapter_load_seconds = Histogram("lpt_adapter_load_duration_seconds", "time to load one adapter",
                                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r)
        self.worker_alive = Gauge("lpt_worker_alive", "1 while every engine worker thread runs", registry=r)
        self.store_up = Gauge("lpt_store_up", "1 while the adapter store answers (last call or ping)", registry=r)
        self.train_jobs_ended = Counter("lpt_train_jobs_ended", "training jobs ended, by final state", ["state"],
                                        registry=r)
        self.train_seconds = Histogram("lpt_train_job_duration_seconds", "how long a training job ran, by final "
                                       "state", ["state"], buckets=TRAIN_SECONDS, registry=r)
        self.train_jobs = Gauge("lpt_train_jobs", "training jobs waiting or running now", ["state"], registry=r)
        for state in FINISHED:          # every series exists from the start: rate() needs no first event
            self.train_jobs_ended.labels(state)
            self.train_seconds.labels(state)
        for state in ACTIVE:
            self.train_jobs.labels(state)
        self._cache_stats: Callable[[], object | None] = lambda: None
        r.register(_CacheCollector(lambda: self._cache_stats()))

    def bind(self, *, queue_size: Callable[[], int], resident: Callable[[], int], registered: Callable[[], int],
             worker_alive: Callable[[], bool], cache_stats: Callable[[], object | None],
             train_active: Callable[[], dict[str, int]], store_up: Callable[[], bool] = lambda: True) -> None:
        """Point the scrape-time gauges at the live objects (once they exist)."""
        for state in ACTIVE:
            self.train_jobs.labels(state).set_function(lambda state=state: train_active().get(state, 0))
        self.queue_size.set_function(queue_size)
        self.adapters_resident.set_function(resident)
        self.adapters_registered.set_function(registered)
        self.worker_alive.set_function(lambda: float(worker_alive()))
        self.store_up.set_function(lambda: float(store_up()))
        self._cache_stats = cache_stats

    # ---- observers (called by the batcher, the worker thread, the registry, the routes) ------
    def observe_closed_batch(self, s: BatchStats) -> None:
        self.batch_padded_tokens.observe(s.padded_tokens)
        for q in s.queue_s:
            self.queue_wait.observe(q)

    def observe_engine_batch(self, r: BatchReport) -> None:
        if r.rows:
            self.batch_rows.observe(r.rows)
            self.batch_tasks.observe(r.tasks)
            self.inference_seconds.observe(r.seconds)
        if r.dropped:
            self.rows_dropped.inc(r.dropped)
        if r.failed:
            self.batches_failed.inc()

    def observe_train_job(self, state: str, seconds: float | None) -> None:
        self.train_jobs_ended.labels(state).inc()
        if seconds is not None:
            self.train_seconds.labels(state).observe(seconds)

    def observe_request(self, tasks: list[str], status: int, seconds: float) -> None:
        """One request: counted once per task it asked for, its duration observed once."""
        for t in tasks or ["-"]:
            self.requests.labels(t, str(status)).inc()
        self.request_seconds.labels(str(status)).observe(seconds)

    def forget_task(self, task: str) -> None:
        """A deleted adapter's series go (adapters come and go: a series per name ever served
        would grow the page without end)."""
        self.requests.remove_by_labels({"task": task})     # every status; thread-safe

    def render(self) -> bytes:
        """The exposition text. Its cost grows with the series (~20 µs each): call it off the event loop."""
        return generate_latest(self.registry)

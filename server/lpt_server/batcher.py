"""The batcher: an asyncio queue of opaque rows that closes batches for one executor.

    batcher = Batcher(worker.run, max_rows=64, max_tokens=8192, max_wait_s=0.005, queue_limit=1024, lanes=2)
    batcher.start()
    items = batcher.submit([(row, cost), ...])        # QueueFull when the queue is full
    results = await asyncio.gather(*(it.future for it in items))

It knows nothing of tensors or tasks: a row is any object, its cost an int (its token count),
and the executor an async function that runs a list of items and resolves their futures.

Batching is *pull*-driven: each of `lanes` lanes (one per engine worker) holds one batch in
the executor at a time and closes its next one when that returns. Under load rows pile up while
batches run, so batches grow by themselves; when idle a row waits at most `max_wait_s` for
company.

Rows are grouped by cost (length), whatever their task: padding, not the prompt, is what a
mixed batch pays for. The oldest row anchors each batch (no row starves) and the rows nearest
to it in length fill the rest, up to `max_rows` rows and `max_tokens` padded tokens
(rows x longest row).

With several lanes, a lane takes at most its share of the rows: those waiting plus each busy
lane's last batch (running, or just answered: under load its callers send their next rows at
once), over the number of lanes; a lane that finds nothing waiting stops counting its last
batch. Without shares, clients that send again as soon as they are answered settle into one
lane running a big batch while another runs a small one and idles: the rows of the big batch
make the latency tail, and the idle lane costs throughput. With them the lanes' batches stay
even, and a burst that finds the lanes idle is split across them.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .request_id import REQUEST_ID


class QueueFull(Exception):
    """Accepting these rows would exceed the queue limit (-> 429)."""


class BatcherClosed(Exception):
    """The batcher is shutting down or its executor died (-> 503)."""


@dataclass(eq=False)
class Item:
    """One row waiting for the executor. `future` gets the row's result or exception."""

    payload: Any
    cost: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    queue_s: float = 0.0          # time from submit to the batch closing
    inference_s: float = 0.0      # the batch's time in the executor
    seq: int = 0
    request_id: str | None = field(default_factory=REQUEST_ID.get)   # of the request that submitted it

    @property
    def dropped(self) -> bool:
        """Its caller gave up (timeout, disconnect): do not run it."""
        return self.future.done()


Executor = Callable[[list[Item]], Awaitable[None]]


@dataclass
class BatchStats:
    """What the batcher reports per closed batch (for metrics)."""

    rows: int
    padded_tokens: int
    queue_s: list[float]


class Batcher:
    def __init__(self, execute: Executor, *, max_rows: int, max_tokens: int, max_wait_s: float,
                 queue_limit: int, on_batch: Callable[[BatchStats], None] | None = None, lanes: int = 1,
                 on_dropped: Callable[[int], None] | None = None):
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.execute = execute
        self.lanes = lanes
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self.on_batch = on_batch
        self.on_dropped = on_dropped              # rows taken off the queue unrun (the worker counts the rest)
        self._pending: dict[int, Item] = {}      # seq -> item, in arrival order
        self._held = [0] * lanes                   # rows of each lane's last batch (see the docstring)
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._failed: BaseException | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="lpt-batcher")
        # a dead loop is reported through `alive` (-> /ready 503); retrieve its exception so
        # asyncio does not also log "Task exception was never retrieved"
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self._failed is None

    async def close(self, drain: bool = True) -> None:
        """Stop taking rows; with drain, run the ones already queued first."""
        self._closing = True
        if not drain:
            self._fail_pending(BatcherClosed("the server is shutting down"))
        if self._task is not None:
            self._wake.set()
            try:
                await self._task
            except BaseException:      # already recorded in self._failed
                pass
        self._fail_pending(BatcherClosed("the server is shutting down"))

    # ---- the queue ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pending)

    def admit(self, n: int) -> None:
        """Raise what submitting `n` rows now would raise (BatcherClosed, QueueFull): a request
        checks before its costly stages, and again at submit."""
        if self._closing or not self.alive:
            raise BatcherClosed("the server is shutting down" if self._closing else
                                f"the inference worker is not running: {self._failed!r}")
        if len(self._pending) + n > self.queue_limit:
            raise QueueFull(f"the queue holds {len(self._pending)} rows, the limit is {self.queue_limit}; "
                            f"this request needs {n} more: retry later")

    def submit(self, rows: list[tuple[Any, int]]) -> list[Item]:
        """Queue all rows of one request, or none of them."""
        self.admit(len(rows))
        loop = asyncio.get_running_loop()
        items = []
        for payload, cost in rows:
            it = Item(payload, max(int(cost), 1), loop.create_future(), seq=next(self._seq))
            self._pending[it.seq] = it
            items.append(it)
        self._wake.set()
        return items

    def discard(self, items: list[Item]) -> None:
        """The caller gave up on these rows: cancel them and free their queue slots now."""
        removed = 0
        for it in items:
            if not it.future.done():
                it.future.cancel()
            removed += self._pending.pop(it.seq, None) is not None
        self._count_dropped(removed)

    def _count_dropped(self, n: int) -> None:
        if n and self.on_dropped is not None:
            self.on_dropped(n)

    # ---- closing batches ------------------------------------------------------------------
    def _full(self) -> bool:
        if len(self._pending) >= self.max_rows:
            return True
        return sum(it.cost for it in self._pending.values()) >= self.max_tokens

    def take_batch(self, lane: int) -> list[Item]:
        """The oldest live row plus the rows nearest to it in cost, within both budgets and this
        lane's share (see the module's docstring)."""
        gone = [s for s, it in self._pending.items() if it.dropped]
        for seq in gone:
            del self._pending[seq]
        self._count_dropped(len(gone))
        if not self._pending:
            return []
        share = -(-(len(self._pending) + sum(self._held)) // self.lanes)     # ceil
        max_rows = min(self.max_rows, share)
        anchor = next(iter(self._pending.values()))
        others = sorted(itertools.islice(self._pending.values(), 1, None),
                        key=lambda it: (abs(it.cost - anchor.cost), it.seq))
        batch, longest = [anchor], anchor.cost
        for it in others:
            if len(batch) >= max_rows:
                break
            width = max(longest, it.cost)
            if width * (len(batch) + 1) > self.max_tokens:
                continue      # a shorter row further on may still fit
            batch.append(it)
            longest = width
        for it in batch:
            del self._pending[it.seq]
        batch.sort(key=lambda it: it.seq)
        self._held[lane] = len(batch)
        return batch

    async def _next_batch(self, lane: int) -> list[Item]:
        while True:
            while not self._pending:
                self._held[lane] = 0
                if self._closing:
                    return []
                self._wake.clear()
                await self._wake.wait()
            oldest = next(iter(self._pending.values()))
            wait = oldest.enqueued + self.max_wait_s - time.monotonic()
            if wait > 0 and not self._full() and not self._closing:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue      # re-check: more rows came, or the wait is over
            batch = self.take_batch(lane)
            if batch:
                return batch

    async def _loop(self) -> None:
        lanes = [asyncio.create_task(self._lane(i), name=f"lpt-batcher-lane-{i}") for i in range(self.lanes)]
        try:
            done, _ = await asyncio.wait(lanes, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:                       # a lane that raised stops the batcher
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        except BaseException as e:
            for t in lanes:                      # the other lanes fail their own batches as they go
                t.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            self._failed = e if not isinstance(e, asyncio.CancelledError) else None
            self._fail_pending(BatcherClosed(f"the batcher stopped: {e!r}"))
            raise

    async def _lane(self, lane: int) -> None:
        """Close a batch, run it, repeat; returns when closing and drained."""
        while True:
            batch = await self._next_batch(lane)
            if not batch:
                return
            now = time.monotonic()
            for it in batch:
                it.queue_s = now - it.enqueued
            if self.on_batch is not None:
                self.on_batch(BatchStats(len(batch), len(batch) * max(it.cost for it in batch),
                                         [it.queue_s for it in batch]))
            try:
                await self.execute(batch)
            except BaseException as e:           # the executor is gone (or this lane stops): fail these rows
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(BatcherClosed(f"the inference worker failed: {e!r}"))
                raise
            for it in batch:                     # an executor that forgot a row must not hang it
                if not it.future.done():
                    it.future.set_exception(RuntimeError("the executor returned no result for this row"))

    def _fail_pending(self, exc: Exception) -> None:
        for it in self._pending.values():
            if not it.future.done():
                it.future.set_exception(exc)
        self._pending.clear()

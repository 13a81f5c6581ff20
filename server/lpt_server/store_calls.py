"""Calls that may wait on the adapter store, run on threads of their own, each with a deadline.

    calls = StoreCalls(threads=8)
    module = await calls.run(registry.get, "sentiment", timeout_s=30)   # StoreUnavailable past it
    calls.close()

A store that hangs (an S3 server that accepts connections and never answers) holds each call
for up to its timeout. On asyncio's default executor, which also tokenizes and parses every
request (min(32, cores + 4) threads: 6 on two cores), a burst of requests for adapters not
loaded took every thread, and requests for adapters already loaded queued behind them: one
waited 5.8 s with a 3 s store timeout. On a pool of their own they wait only for each other; and
a caller that has waited `timeout_s` (its request's deadline) is answered 503 even if the call
goes on (a call not started yet is dropped).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from .stores import StoreUnavailable

T = TypeVar("T")
STORE_THREADS = 8


class StoreCalls:
    def __init__(self, threads: int = STORE_THREADS):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lpt-store")

    async def run(self, fn: Callable[..., T], *args, timeout_s: float) -> T:
        # in a copy of the caller's context, as asyncio.to_thread does: its log lines keep the request id
        context = contextvars.copy_context()
        call = asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(context.run, fn, *args))
        try:
            return await asyncio.wait_for(call, timeout_s)
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"the adapter store did not answer within {timeout_s:g} s: retry shortly") from None

    def close(self) -> None:
        """Calls not started are dropped; running ones end with their store timeout, unwaited."""
        self._pool.shutdown(wait=False, cancel_futures=True)

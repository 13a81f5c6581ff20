"""Store calls run on threads of their own, and a caller waits at most its deadline."""
import asyncio
import threading
import time

import pytest

from lpt_server.store_calls import StoreCalls
from lpt_server.stores import StoreUnavailable


def test_a_stuck_call_answers_unavailable_at_the_deadline_and_others_still_run():
    calls = StoreCalls(threads=2)
    release = threading.Event()

    async def main():
        stuck = asyncio.ensure_future(calls.run(release.wait, 10, timeout_s=0.3))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        assert await calls.run(lambda x: x * 2, 21, timeout_s=5) == 42      # the second thread is free
        with pytest.raises(StoreUnavailable, match=r"did not answer within 0.3 s"):
            await stuck
        assert time.monotonic() - t0 < 2
        return threading.current_thread()

    try:
        loop_thread = asyncio.run(main())
        seen = []
        asyncio.run(calls.run(lambda: seen.append(threading.current_thread()), timeout_s=5))
        assert seen[0] is not loop_thread and seen[0].name.startswith("lpt-store")
    finally:
        release.set()
        calls.close()


def test_a_call_that_waited_past_its_deadline_in_the_queue_never_runs():
    calls = StoreCalls(threads=1)
    release, ran = threading.Event(), []

    async def main():
        first = asyncio.ensure_future(calls.run(release.wait, 10, timeout_s=5))
        await asyncio.sleep(0.05)                                            # it holds the one thread
        with pytest.raises(StoreUnavailable):
            await calls.run(ran.append, "late", timeout_s=0.2)             # queued behind the first
        release.set()
        await first

    try:
        asyncio.run(main())
        time.sleep(0.1)
        assert ran == []
    finally:
        release.set()
        calls.close()

"""Several engine workers: batches run at once, on one shared engine, with the same answers."""
import asyncio
import threading
import time

import pytest
import torch

from tiny import WORDS
from tiny_server import adapter_file, running, upload
from lpt import Engine, Row, load_adapter
from lpt_server.batcher import Batcher
from lpt_server.worker import EngineWorker

pytestmark = pytest.mark.integration


class Overlap:
    """Counts how many calls are inside at once (the most seen), from threads or tasks."""

    def __init__(self):
        self.inside = self.most = 0
        self.lock = threading.Lock()

    def enter(self):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)

    def leave(self):
        with self.lock:
            self.inside -= 1


def run_in_threads(fn, args: list) -> list[Exception]:
    """fn(arg) on one thread per arg, all at once; the exceptions they raised."""
    errors: list[Exception] = []

    def guarded(arg):
        try:
            fn(arg)
        except Exception as e:      # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(arg,)) for arg in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def held_bytes(cache) -> int:
    """What the cache's entries really hold (its books must say the same)."""
    return sum(t.numel() * t.element_size() for t in cache._data.values())


@pytest.mark.asyncio
@pytest.mark.parametrize("lanes", [1, 2, 3])
async def test_each_lane_holds_one_batch_in_the_executor(lanes):
    seen = Overlap()

    async def executor(items):
        seen.enter()
        await asyncio.sleep(0.03)
        seen.leave()
        for it in items:
            it.future.set_result(it.payload)

    b = Batcher(executor, max_rows=2, max_tokens=1000, max_wait_s=0.0, queue_limit=100, lanes=lanes)
    b.start()
    items = b.submit([(i, 1) for i in range(12)])
    assert [await it.future for it in items] == list(range(12))
    await b.close()
    assert seen.most == lanes


@pytest.mark.asyncio
async def test_a_lane_takes_its_share_of_the_rows_not_all_of_them():
    sizes, gates = [], []

    async def executor(items):
        sizes.append(len(items))
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        for it in items:
            it.future.set_result(it.payload)

    async def calls(n):
        async def seen():
            while len(sizes) < n:
                await asyncio.sleep(0.001)
        await asyncio.wait_for(seen(), 2)

    b = Batcher(executor, max_rows=64, max_tokens=10_000, max_wait_s=0.0, queue_limit=100, lanes=2)
    b.start()
    items = b.submit([(i, 1) for i in range(4)])
    await calls(2)                     # a burst on idle lanes is split across them
    items += b.submit([(i, 1) for i in range(4, 16)])
    await asyncio.sleep(0.01)
    assert sizes == [2, 2]             # both lanes busy: the 12 rows wait
    gates[0].set()
    await calls(3)                     # 12 waiting + the lanes' last batches (2 + 2) = 16: a share is 8
    gates[1].set()
    await calls(4)                     # 4 waiting + 8 + 2 = 14: all 4 fit a share
    assert sizes == [2, 2, 8, 4]
    for g in gates:
        g.set()
    assert sorted([await it.future for it in items]) == list(range(16))
    await b.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("ahead, by_s", [(3, 0.002), (8, 0.01)])
async def test_clients_that_send_again_when_answered_keep_both_lanes_busy(ahead, by_s):
    # 16 such clients on two lanes whose batches take 4 ms a row, some of them ahead of the rest.
    # Taking every waiting row, one lane can end up with all of them and the lanes take turns
    # (each batch starts while the other lane idles: half the throughput); so can shares that
    # count the last batch of a lane that idles. With shares, batches run side by side.
    spans = []

    async def executor(items):
        start = time.monotonic()
        await asyncio.sleep(0.004 * len(items))
        spans.append((start, time.monotonic()))
        for it in items:
            it.future.set_result(it.payload)

    b = Batcher(executor, max_rows=64, max_tokens=10_000, max_wait_s=0.0, queue_limit=100, lanes=2)
    b.start()

    async def client(i):
        await asyncio.sleep(0.0 if i < ahead else by_s)
        for _ in range(15):
            (item,) = b.submit([(i, 1)])
            await item.future

    await asyncio.gather(*(client(i) for i in range(16)))
    await b.close()
    assert busy_lanes(spans[4:]) > 1.6, spans


def busy_lanes(spans: list[tuple[float, float]]) -> float:
    """How many batches ran at once on average while any ran: their summed time over the time
    covered by at least one (1.0: one at a time; 2.0: always two side by side)."""
    covered, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        covered += max(0.0, b - max(a, end))
        end = max(end, b)
    return sum(b - a for a, b in spans) / covered


@pytest.mark.asyncio
async def test_a_lane_whose_executor_dies_stops_the_batcher_and_fails_every_row():
    calls = []

    async def executor(items):
        calls.append([it.payload for it in items])
        if len(calls) == 1:
            await asyncio.sleep(0.05)            # the other lane's batch fails meanwhile
            for it in items:
                it.future.set_result(it.payload)
            return
        raise RuntimeError("executor gone")

    b = Batcher(executor, max_rows=1, max_tokens=1000, max_wait_s=0.0, queue_limit=100, lanes=2)
    b.start()
    items = b.submit([(i, 1) for i in range(4)])
    results = await asyncio.gather(*(it.future for it in items), return_exceptions=True)
    assert not b.alive
    assert all(isinstance(r, Exception) for r in results[1:]), results
    assert "executor gone" in str(results[1])


class SleepyEngine:
    def __init__(self, delay):
        self.delay, self.seen, self.threads = delay, Overlap(), set()

    def predict(self, rows):
        self.seen.enter()
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        self.seen.leave()
        return [("done", r) for r in rows]


@pytest.mark.asyncio
async def test_two_worker_threads_run_two_batches_at_once():
    engine = SleepyEngine(0.2)
    worker = EngineWorker(engine, threads=2)
    worker.start()
    b = Batcher(worker.run, max_rows=1, max_tokens=1000, max_wait_s=0.0, queue_limit=100, lanes=2)
    b.start()
    t0 = time.monotonic()
    items = b.submit([("a", 1), ("b", 1)])
    assert [await it.future for it in items] == [("done", "a"), ("done", "b")]
    elapsed = time.monotonic() - t0
    await b.close()
    await asyncio.to_thread(worker.stop, 5)
    assert engine.seen.most == 2 and engine.threads == {"lpt-engine-0", "lpt-engine-1"}
    assert elapsed < 0.38, f"two 0.2 s batches took {elapsed:.2f} s: they did not overlap"
    assert worker.batches == 2 and not worker.alive


@pytest.mark.asyncio
async def test_an_idle_worker_gives_freed_memory_back_once(monkeypatch):
    """After IDLE_TRIM_S without a batch a worker releases the allocator's free pages, once per
    idle spell (not in a loop while idle, not between busy batches)."""
    from lpt_server import worker as worker_module

    calls = []
    monkeypatch.setattr(worker_module, "IDLE_TRIM_S", 0.1)
    monkeypatch.setattr(worker_module, "release_free_memory", lambda: calls.append(time.monotonic()))
    worker = EngineWorker(SleepyEngine(0.01))
    worker.start()
    b = Batcher(worker.run, max_rows=1, max_tokens=1000, max_wait_s=0.0, queue_limit=100)
    b.start()
    for text in ("a", "b", "c"):                       # busy: batches closer together than 0.1 s
        assert await b.submit([(text, 1)])[0].future == ("done", text)
    assert calls == []
    await asyncio.sleep(0.5)                           # idle: once, not every 0.1 s
    assert len(calls) == 1
    assert await b.submit([("d", 1)])[0].future == ("done", "d")
    await asyncio.sleep(0.3)                           # a new idle spell: once more
    assert len(calls) == 2
    await b.close()
    await asyncio.to_thread(worker.stop, 5)
    assert worker_module._TRIM is not None             # glibc here: the real call exists


def test_one_engine_called_from_several_threads_answers_as_it_does_alone(tiny_bb):
    # The workers share one engine and its layer-k cache: the same rows, run from four threads
    # at once (texts repeat across batches, so the cache is read and written concurrently),
    # get exactly the logits they get one call at a time, and the cache's books balance.
    adapters = [load_adapter(adapter_file(tiny_bb, f"t{i}", seed=i, layer=1 + i % 3), tiny_bb) for i in range(4)]
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(2 + i % 9)) for i in range(24)]
    batches = [[Row(adapters[(b + i) % 4], texts[(b * 5 + i) % 24]) for i in range(6)] for b in range(48)]
    alone = [Engine(tiny_bb, cache_entries=0).logits(batch) for batch in batches]

    shared = Engine(tiny_bb, cache_entries=40)       # small: entries are evicted while others read
    got: dict[int, list] = {}

    def run(part):
        for i in part:
            got[i] = shared.logits(batches[i])

    errors = run_in_threads(run, [range(w, len(batches), 4) for w in range(4)])
    assert not errors, errors[:1]
    for i, batch in enumerate(alone):
        for a, b in zip(batch, got[i]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    stats = shared.cache.stats
    assert stats.hits > 0 and stats.hits + stats.misses == sum(len(b) for b in batches)
    assert len(shared.cache) <= 40
    assert stats.bytes == held_bytes(shared.cache)


@pytest.mark.asyncio
async def test_a_server_with_two_workers_serves_what_one_worker_serves(tmp_path, tiny_bb):
    texts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(1 + i % 12)) for i in range(40)]
    answers = {}
    for workers in (1, 2):
        async with running(tmp_path / str(workers), tiny_bb, workers=workers, threads=2, max_batch_rows=4,
                           max_wait_ms=1) as (app, c):
            for t in ("sent", "topic"):
                assert (await upload(c, t, adapter_file(tiny_bb, t, seed=len(t)))).status_code == 201
            rt = app.state.runtime
            assert sorted(t.name for t in threading.enumerate() if t.name.startswith("lpt-engine-")) == \
                [f"lpt-engine-{i}" for i in range(workers)] and rt.batcher.lanes == workers
            info = (await c.get("/info")).json()
            assert info["engine"] == {"workers": workers, "torch_threads": 2 // workers, "model_processes": workers}
            rs = await asyncio.gather(*(c.post("/v1/classify", json={"inputs": [x], "tasks": ["sent", "topic"], "raw_scores": True})
                                        for x in texts))
            assert [r.status_code for r in rs] == [200] * len(texts), rs[0].text
            answers[workers] = [r.json() for r in rs]
            assert rt.worker.batches >= 40 // 4
    for one, two in zip(answers[1], answers[2]):
        [a_sent, a_topic], [b_sent, b_topic] = one["results"][0], two["results"][0]
        for a, b in ((a_sent, b_sent), (a_topic, b_topic)):
            assert a["label"] == b["label"] and a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_the_layer_k_cache_keeps_its_books_under_concurrent_use():
    # Threads switched as often as CPython allows, all reading, writing and evicting one small
    # cache: no lookup may fail on an entry another thread just evicted, and the byte count
    # stays the sum of what the cache holds.
    import sys

    from lpt.engine import StateCache

    cache = StateCache(entries=8, max_bytes=8 * 4 * 16)
    values = [torch.full((4, 4), float(i)) for i in range(32)]

    def hammer(seed):
        for n in range(6000):
            key = ((seed * 7 + n * 13) % 32,)
            found = cache.get(key)
            if found is None:
                cache.put(key, values[key[0]])
            else:
                assert float(found[0, 0]) == key[0]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        errors = run_in_threads(hammer, list(range(6)))
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert len(cache) <= 8 and cache.stats.hits + cache.stats.misses == 6 * 6000
    assert cache.stats.bytes == held_bytes(cache)

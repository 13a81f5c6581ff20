"""The batcher and the engine worker: batch closing, length grouping, backpressure, timeouts,
dropped rows, failures that stay local, and 200 concurrent mixed-task requests."""
import asyncio
import gc
import json
import logging
import random
import time

import pytest

from tiny_server import HookedEngine, adapter_file, running, upload
from lpt import Engine
from lpt_server.batcher import Batcher, QueueFull
from lpt_server.runtime import WATCH_EVERY_S
from tiny import WORDS

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


# ---- the batcher alone: opaque rows, a fake executor ---------------------------------------------
class FakeExecutor:
    def __init__(self, delay=0.0):
        self.delay, self.batches = delay, []

    async def __call__(self, items):
        self.batches.append([it.payload for it in items if not it.dropped])
        await asyncio.sleep(self.delay)
        for it in items:
            if not it.future.done():
                it.future.set_result(("done", it.payload))


def batcher(executor, **kw):
    args = dict(max_rows=4, max_tokens=1000, max_wait_s=0.02, queue_limit=100)
    args.update(kw)
    b = Batcher(executor, **args)
    b.start()
    return b


async def _results(items):
    return await asyncio.gather(*(it.future for it in items))


async def test_batch_closes_at_max_rows_and_after_max_wait():
    ex = FakeExecutor()
    b = batcher(ex, max_wait_s=0.4)
    t0 = time.monotonic()
    await _results(b.submit([(i, 5) for i in range(4)]))      # 4 rows = max_rows: no waiting
    assert time.monotonic() - t0 < 0.3 and ex.batches == [[0, 1, 2, 3]]
    t0 = time.monotonic()
    await _results(b.submit([("lonely", 5)]))                  # one row waits max_wait for company
    assert 0.38 < time.monotonic() - t0 < 2.0 and ex.batches[-1] == ["lonely"]
    await b.close()


async def test_batch_closes_at_max_tokens():
    ex = FakeExecutor()
    b = batcher(ex, max_rows=64, max_tokens=100, max_wait_s=0.05)
    await _results(b.submit([(i, 30) for i in range(7)]))      # 3 x 30 = 90 fits, 4 x 30 = 120 does not
    assert [len(x) for x in ex.batches] == [3, 3, 1]
    await b.close()


async def test_rows_are_grouped_by_length_whatever_their_task():
    ex = FakeExecutor(delay=0.05)
    b = batcher(ex, max_rows=3, max_tokens=10_000, max_wait_s=0.0)
    first = b.submit([("busy", 1)])                            # occupies the executor
    await asyncio.sleep(0.01)
    lengths = [5, 90, 6, 88, 7, 91]                            # arrive interleaved
    items = b.submit([((f"task{i % 3}", n), n) for i, n in enumerate(lengths)])
    await _results(first + items)
    short, long = ex.batches[1], ex.batches[2]
    assert sorted(n for _, n in short) == [5, 6, 7] and sorted(n for _, n in long) == [88, 90, 91]
    assert len({t for t, _ in short}) == 3                     # mixed tasks in one batch
    await b.close()


async def test_queue_limit_is_all_or_nothing():
    ex = FakeExecutor(delay=0.1)
    b = batcher(ex, max_rows=1, queue_limit=3, max_wait_s=0)
    running_ = b.submit([("a", 1)])
    await asyncio.sleep(0.01)                                  # "a" is in the executor, not queued
    queued = b.submit([("b", 1), ("c", 1)])
    with pytest.raises(QueueFull):
        b.submit([("d", 1), ("e", 1)])                         # 2 + 2 > 3: none of them
    assert len(b) == 2
    await _results(running_ + queued)
    await b.close()


async def test_discarded_rows_never_reach_the_executor_and_are_counted():
    ex, dropped = FakeExecutor(delay=0.05), []
    b = batcher(ex, max_rows=2, max_wait_s=0, on_dropped=dropped.append)
    a = b.submit([("a", 1)])
    await asyncio.sleep(0.01)
    gone = b.submit([("gone1", 1), ("gone2", 1)])
    kept = b.submit([("kept", 1)])
    cancelled = b.submit([("cancelled", 1)])
    b.discard(gone + a)                   # "a" is in the executor already: the worker counts it, not the queue
    cancelled[0].future.cancel()          # a caller gone without a discard: purged when a batch is taken
    assert len(b) == 2 and all(it.future.cancelled() for it in gone)
    await _results(kept)
    assert [p for batch in ex.batches for p in batch] == ["a", "kept"]
    assert sum(dropped) == 3, dropped
    await b.close()


async def test_close_drains_what_was_accepted():
    ex = FakeExecutor(delay=0.02)
    b = batcher(ex, max_rows=2, max_wait_s=0.5)
    items = b.submit([(i, 1) for i in range(5)])
    await b.close(drain=True)
    assert [it.future.result() for it in items] == [("done", i) for i in range(5)]


class RecordingEngine:
    """Stands in for lpt.Engine on the worker thread: echoes its rows, slowly enough that rows
    queue up behind each batch."""

    def __init__(self, delay: float):
        self.delay = delay

    def predict(self, rows):
        time.sleep(self.delay)
        return [("done", r) for r in rows]


async def test_the_engine_gets_its_next_batch_before_the_last_batch_is_answered():
    # When a batch finishes, the rows queued meanwhile go to the engine before the finished
    # rows' requests resume (their answers are written after): the engine does not wait behind
    # a batch's worth of responses on the event loop.
    from lpt_server.worker import EngineWorker

    worker = EngineWorker(RecordingEngine(delay=0.05))
    worker.start()
    events = []

    async def executor(items):
        events.append(("handed", [it.payload for it in items]))
        await worker.run(items)

    b = batcher(executor, max_rows=2, max_wait_s=0.0)

    async def request(payload):
        [it] = b.submit([(payload, 1)])
        await it.future
        events.append(("answered", payload))

    first = [asyncio.create_task(request(p)) for p in ("a", "b")]
    await asyncio.sleep(0.01)                      # a and b are in the engine
    later = [asyncio.create_task(request(p)) for p in ("c", "d")]
    await asyncio.gather(*first, *later)
    await b.close()
    worker.stop(5)
    assert events[0] == ("handed", ["a", "b"])
    order = [e[0] if e[0] == "handed" else e[1] for e in events]
    assert order.index("handed", 1) < order.index("a") and order.index("handed", 1) < order.index("b"), events
    assert {e[1] for e in events if e[0] == "answered"} == {"a", "b", "c", "d"}


# ---- through the app: timeouts, disconnects, failures -----------------------------------------------
async def test_queue_full_is_429_before_its_texts_are_tokenized(tmp_path, tiny_bb, monkeypatch):
    """Under overload a rejected request must cost little: it is answered before its texts are
    tokenized (a 64-input request tokenized for nothing took CPU from the requests being served)."""
    from lpt_server.routes import classify as classify_route

    encoded = []

    def counted(pairs, *args):
        encoded.append([text for text, _ in pairs])
        return real(pairs, *args)

    real = classify_route.encode_inputs
    monkeypatch.setattr(classify_route, "encode_inputs", counted)
    engine = HookedEngine(Engine(tiny_bb, 0), before=lambda rows: time.sleep(0.3))
    async with running(tmp_path, tiny_bb, engine_factory=lambda s: engine, max_batch_rows=1, queue_limit=2,
                       max_wait_ms=0) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        body = {"inputs": "great film", "task": "sent"}
        rt = app.state.runtime

        async def until(cond):
            for _ in range(200):
                if cond():
                    return
                await asyncio.sleep(0.005)
            raise AssertionError("condition not reached")

        busy = [asyncio.create_task(c.post("/v1/classify", json=body))]
        await until(lambda: len(engine.batches) == 1)          # the first row is in the engine
        busy += [asyncio.create_task(c.post("/v1/classify", json=body)) for _ in range(2)]
        await until(lambda: len(rt.batcher) == 2)              # two rows fill the queue
        r = await c.post("/v1/classify", json={"inputs": ["rejected"], "task": "sent"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "overloaded"
        assert len(encoded) == 3 and ["rejected"] not in encoded, encoded
        assert [x.status_code for x in await asyncio.gather(*busy)] == [200, 200, 200]
        assert 'lpt_requests_total{status="429",task="sent"} 1.0' in (await c.get("/metrics")).text


async def test_request_timeout_is_504_and_its_queued_rows_are_dropped(tmp_path, tiny_bb, caplog):
    engine = HookedEngine(Engine(tiny_bb, 0), before=lambda rows: time.sleep(0.4))
    async with running(tmp_path, tiny_bb, engine_factory=lambda s: engine, max_batch_rows=1,
                       request_timeout_s=0.25, max_wait_ms=0) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        first = asyncio.create_task(c.post("/v1/classify", json={"inputs": "first", "task": "sent"}))
        await asyncio.sleep(0.05)
        r = await c.post("/v1/classify", json={"inputs": "second", "task": "sent"})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert (await first).status_code == 504                 # its batch outlived the timeout too
        await asyncio.sleep(0.5)
        ran = [row.text for batch in engine.batches for row in batch]
        assert ran == ["first"]                                  # "second" never reached the engine
        assert app.state.runtime.worker.alive
    gc.collect()                     # an abandoned future whose error nobody read is logged when freed
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_client_that_disconnects_frees_its_rows(tmp_path, tiny_bb, caplog):
    caplog.set_level(logging.INFO, logger="lpt_server")
    engine = HookedEngine(Engine(tiny_bb, 0), before=lambda rows: time.sleep(0.3))
    async with running(tmp_path, tiny_bb, engine_factory=lambda s: engine, max_batch_rows=1,
                       max_wait_ms=0) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        rt = app.state.runtime
        first = asyncio.create_task(c.post("/v1/classify", json={"inputs": "first", "task": "sent"}))
        await asyncio.sleep(0.05)
        # a raw ASGI call whose client hangs up while its rows wait in the queue
        hang_up = asyncio.Event()
        body = json.dumps({"inputs": ["left1", "left2"], "task": "sent"}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            if messages:
                return messages.pop(0)
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json"), (b"host", b"t")],
                 "client": ("127.0.0.1", 1), "server": ("t", 80), "state": {}}
        call = asyncio.create_task(app(scope, receive, send))
        for _ in range(100):
            if len(rt.batcher) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(rt.batcher) == 2
        hang_up.set()
        await call
        assert len(rt.batcher) == 0                              # freed at once
        assert sent[0]["status"] == 499
        # no answer goes out, so no access line: the server says it (the id is on the line)
        assert sum("client disconnected before its answer" in r.getMessage() for r in caplog.records) == 1
        assert (await first).status_code == 200
        await asyncio.sleep(0.1)
        assert [row.text for batch in engine.batches for row in batch] == ["first"]


async def test_an_engine_failure_fails_only_its_batch(tmp_path, tiny_bb):
    def before(rows):
        if any(r.text == "boom" for r in rows):
            raise RuntimeError("simulated engine bug")

    engine = HookedEngine(Engine(tiny_bb, 0), before=before)
    async with running(tmp_path, tiny_bb, engine_factory=lambda s: engine, max_batch_rows=1) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        boom, ok = await asyncio.gather(c.post("/v1/classify", json={"inputs": "boom", "task": "sent"}),
                                        c.post("/v1/classify", json={"inputs": "fine", "task": "sent"}))
        assert boom.status_code == 500 and boom.json()["error"]["type"] == "engine_error"
        assert "simulated engine bug" in boom.json()["error"]["message"]
        assert ok.status_code == 200
        assert (await c.get("/ready")).status_code == 200
        assert (await c.post("/v1/classify", json={"inputs": "fine", "task": "sent"})).status_code == 200
        assert "lpt_batches_failed_total 1.0" in (await c.get("/metrics")).text


class Die(BaseException):
    """Not an Exception: nothing in the worker's batch handling catches it, so the thread dies."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_worker_turns_ready_503(tmp_path, tiny_bb):
    def before(rows):
        if any(r.text == "die" for r in rows):
            raise Die()

    engine = HookedEngine(Engine(tiny_bb, 0), before=before)
    async with running(tmp_path, tiny_bb, engine_factory=lambda s: engine) as (app, c):
        fatal: list[str] = []
        app.state.runtime.on_fatal = fatal.append          # `lpt serve` drains and exits 1 on it
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        assert (await c.get("/ready")).status_code == 200
        await asyncio.sleep(2 * WATCH_EVERY_S)
        assert fatal == []                                 # a healthy server is not reported
        r = await c.post("/v1/classify", json={"inputs": "die", "task": "sent"})
        assert r.status_code == 503
        for _ in range(40):
            if fatal:
                break
            await asyncio.sleep(WATCH_EVERY_S / 4)
        assert len(fatal) == 1 and "engine worker" in fatal[0], fatal
        r = await c.get("/ready")
        assert r.status_code == 503 and "worker" in r.json()["error"]["message"]
        assert (await c.get("/health")).status_code == 200      # alive, not ready
        r = await c.post("/v1/classify", json={"inputs": "fine", "task": "sent"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable"
        assert "lpt_worker_alive 0.0" in (await c.get("/metrics")).text


# ---- many clients, many tasks --------------------------------------------------------------------------
def _bucket(metrics: str, name: str, le: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith(f'{name}_bucket{{le="{le}"}}'))
    return float(line.split()[-1])


async def test_200_concurrent_requests_over_8_tasks_equal_each_request_alone(tmp_path, tiny_bb):
    rng = random.Random(0)
    tasks = [f"task{i}" for i in range(8)]
    requests = []
    for _ in range(200):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))) for _ in range(rng.randint(1, 3))]
        requests.append({"inputs": texts, "tasks": rng.sample(tasks, rng.randint(1, 2)), "raw_scores": True})
    # cache off: an answer alone must be computed afresh, not read back from the mixed batch
    async with running(tmp_path, tiny_bb, cache_entries=0, max_wait_ms=2) as (app, c):
        for i, name in enumerate(tasks):
            labels = [f"l{j}" for j in range(2 + i % 3)]
            await upload(c, name, adapter_file(tiny_bb, name, labels=labels, seed=i, layer=1 + i % 3,
                                               prompt_length=2 + i))
        together = await asyncio.gather(*(c.post("/v1/classify", json=r) for r in requests))
        metrics = (await c.get("/metrics")).text
        for req, r in zip(requests, together):
            assert r.status_code == 200, r.text
            alone = await c.post("/v1/classify", json=req)
            got, want = r.json()["results"], alone.json()["results"]
            assert len(got) == len(req["inputs"]) and all(len(x) == len(req["tasks"]) for x in got)
            for g_row, w_row in zip(got, want):
                for g, w in zip(g_row, w_row):
                    assert g["task"] == w["task"] and g["label"] == w["label"]
                    assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)
    batches = _bucket(metrics, "lpt_batch_tasks", "+Inf")
    single_task = _bucket(metrics, "lpt_batch_tasks", "1.0")
    assert batches - single_task >= 1, "no batch mixed tasks"
    assert _bucket(metrics, "lpt_batch_rows", "1.0") < batches     # and batches did form


async def test_one_deadline_covers_the_whole_request(tmp_path, tiny_bb):
    """A slow adapter load and a slow batch each within LPT_REQUEST_TIMEOUT_S, but not together:
    the request answers 504 at its deadline (each wait had the whole timeout, so 1.4 s here, and
    up to twice the timeout: past a load balancer's own wait)."""
    engine = HookedEngine(Engine(tiny_bb, 0), before=lambda rows: time.sleep(0.7))
    async with running(tmp_path, tiny_bb, engine_factory=lambda s: engine, request_timeout_s=1.0,
                       max_wait_ms=0, max_resident_adapters=1) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        await upload(c, "other", adapter_file(tiny_bb, "other"))             # "sent" leaves memory
        registry = app.state.runtime.registry
        read = registry.store.read
        registry.store.read = lambda *args: (time.sleep(0.7), read(*args))[1]   # a slow store
        t0 = time.perf_counter()
        r = await c.post("/v1/classify", json={"inputs": "fine", "task": "sent"})
        took = time.perf_counter() - t0
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout", r.text
    assert took < 1.3, took

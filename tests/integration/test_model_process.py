"""The model in processes of its own: the same answers as the engine in this process, adapters
crossing once and dropped past the bound, a dead process stopping its worker (503), and the
hand-off carrying token ids, not text or pickles."""
import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tiny import WORDS, make_backbone
from tiny_server import adapter_file, running, upload
from lpt import Engine, Row, load_adapter
from lpt_server.batcher import Item
from lpt_server.model_process import DESCRIPTORS_PER_ADAPTER, ModelProcess, ModelProcessLost, fork_model, pack, read_rows, rows_message, unpack
from lpt_server.worker import IDLE_TRIM_S, EngineWorker, WorkerDead, _Job

pytestmark = pytest.mark.integration


def texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (3 + int(j),), generator=g))
            for j in torch.randint(12, (n,), generator=g)]


def adapters(bb, n: int, seed: int = 0) -> list:
    out = []
    for i in range(n):
        a = load_adapter(adapter_file(bb, f"t{i}", labels=("a", "b", "c")[:2 + i % 2], seed=seed + i,
                                      layer=1 + i % 3), bb)
        for p in a.parameters():        # weights large enough that a wrong prompt shows in the scores
            p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed * 100 + i))
        out.append(a)
    return out


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.label == w.label and g.scores == pytest.approx(w.scores, abs=1e-6), (g, w)


@pytest.fixture
def proc(tiny_bb):
    p = ModelProcess(Engine(tiny_bb, cache_entries=0), adapters=3)
    yield p
    p.close()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_model_process_answers_what_the_engine_answers_here(family):
    """Mixed adapters at several layers, pairs and single texts, token types (BERT) and none
    (GPT-2), rows tokenized beforehand and rows not: every score as the engine in this process."""
    bb = make_backbone(family, lm_head=False)
    ads = adapters(bb, 4)
    xs = texts(24)
    rows = [Row(ads[i % 4], x, xs[(i + 5) % 24] if i % 3 == 0 else None) for i, x in enumerate(xs)]
    rows = [Row(r.adapter, r.text, r.text_pair, r.adapter.encoder.encode(r.text, r.text_pair)) if i % 2 else r
            for i, r in enumerate(rows)]
    p = ModelProcess(Engine(bb, cache_entries=0))
    try:
        assert_same(p.predict(rows), Engine(bb, cache_entries=0).predict(rows))
    finally:
        p.close()


def test_the_answer_moves_when_the_adapter_weights_move(tiny_bb, proc):
    """A module with the same config and other weights is another adapter to the child: its rows
    get its own answers, not the first module's."""
    a, = adapters(tiny_bb, 1, seed=0)
    b, = adapters(tiny_bb, 1, seed=7)
    xs = texts(8)
    first = proc.predict([Row(a, x) for x in xs])
    second = proc.predict([Row(b, x) for x in xs])
    assert_same(second, Engine(tiny_bb, cache_entries=0).predict([Row(b, x) for x in xs]))
    assert [p.scores for p in first] != [p.scores for p in second]


def test_a_reused_id_is_not_taken_for_the_adapter_that_had_it(tiny_bb, proc):
    """CPython reuses a freed object's id: the parent's mirror keys by id, so it must check that
    the module it holds is still the one asked for."""
    a, b = adapters(tiny_bb, 2)
    xs = texts(6)
    proc.predict([Row(a, x) for x in xs])
    proc._held[id(b)] = proc._held.pop(id(a))     # as if b had been allocated where a was
    assert_same(proc.predict([Row(b, x) for x in xs]), Engine(tiny_bb, cache_entries=0).predict([Row(b, x) for x in xs]))


def test_adapters_cross_once_and_the_child_holds_at_most_its_bound(tiny_bb, proc):
    ads = adapters(tiny_bb, 5)
    xs = texts(5)
    sent = []
    real = proc._message

    def spy(rows, encs):
        m = real(rows, encs)
        sent.append(unpack(m[0])[0])
        return m

    proc._message = spy
    reference = Engine(tiny_bb, cache_entries=0)
    for batch in ([0, 1], [0, 1], [2, 3], [4, 0], [0, 1, 2, 3, 4]):
        rows = [Row(ads[i], x) for i in batch for x in xs]
        assert_same(proc.predict(rows), reference.predict(rows))
        assert proc.child_adapters == len(proc._held) <= max(3, len(batch))
    added = [len(h["add"]) for h in sent]
    assert added[:2] == [2, 0]                    # the second batch sends no adapter again
    assert sum(len(h["drop"]) for h in sent) >= 2   # past 3 held, the least recent are dropped


def test_an_adapter_is_one_copy_in_memory_that_every_process_reads(tiny_bb, proc):
    """The parent's module and the child's adapter are the same pages: a change made here in
    place is what the child computes with (a copy would keep serving the old weights)."""
    a, = adapters(tiny_bb, 1)
    xs = texts(8)
    before = proc.predict([Row(a, x) for x in xs])
    maps = open(f"/proc/{proc.pid}/maps").read()
    assert maps.count("memfd:lpt-adapter-t0") >= 1 and proc.child_adapters == 1
    with torch.no_grad():
        a.head.linear.weight.mul_(-1.5)
    after = proc.predict([Row(a, x) for x in xs])
    assert_same(after, Engine(tiny_bb, cache_entries=0).predict([Row(a, x) for x in xs]))
    assert [p.scores for p in after] != [p.scores for p in before]


def test_the_hand_off_carries_token_ids_and_no_text(tiny_bb):
    a, = adapters(tiny_bb, 1)
    secret = "great movie w17 w42"
    enc = a.encoder.encode(secret, "the plot")
    message = rows_message([enc], [5], [], [])
    assert secret.encode() not in message and b"plot" not in message
    header, arrays = unpack(message)
    encs, slots = read_rows(header, arrays)
    assert encs == [enc] and slots == [5]
    assert pack({"x": 1}, {"b": b"\x00\x01", "t": torch.arange(3)})[:4] != b"\x80\x04"   # not a pickle
    h, arr = unpack(pack({"x": 1}, {"b": b"\x00\x01", "t": torch.arange(6).reshape(2, 3), "e": torch.zeros(0, 0)}))
    assert h == {"x": 1} and arr["b"] == b"\x00\x01" and arr["t"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert arr["e"].shape == (0, 0)


@pytest.mark.asyncio
async def test_a_killed_model_process_stops_its_worker_and_fails_the_batch_with_503s(tiny_bb):
    """Killed while a batch was on its way to it: the thread raises ModelProcessLost and stops,
    the batch's rows get WorkerDead (503); the worker was already not alive."""
    p = ModelProcess(Engine(tiny_bb, cache_entries=0))
    worker = EngineWorker(None, per_thread=[p])
    worker.start()
    a, = adapters(tiny_bb, 1)
    loop = asyncio.get_running_loop()
    try:
        ok = Item(Row(a, "great movie"), 1, loop.create_future())
        await worker.run([ok])
        assert ok.future.result().label in a.labels and worker.alive
        os.kill(p.pid, signal.SIGKILL)
        p.process.join(10)
        assert not worker.alive                      # seen at once: /ready says 503 before any batch
        with pytest.raises(WorkerDead):
            await worker.run([Item(Row(a, "great movie"), 1, loop.create_future())])
        lost = Item(Row(a, "great movie"), 1, loop.create_future())
        job = _Job([lost], loop.create_future(), loop)    # as run() queued it a moment before the death
        worker._jobs.put(job)
        with pytest.raises(WorkerDead):
            await asyncio.wait_for(job.done, 10)
    finally:
        worker.stop(10)
    assert isinstance(worker.error, ModelProcessLost) and "exited with code -9" in str(worker.error)
    with pytest.raises(WorkerDead):
        lost.future.result()


@pytest.mark.asyncio
async def test_a_server_runs_its_workers_in_model_processes_and_serves_what_the_engine_serves(tmp_path, tiny_bb):
    data = {f"t{i}": adapter_file(tiny_bb, f"t{i}", seed=i, layer=1 + i) for i in range(3)}
    xs = texts(9)
    async with running(tmp_path, tiny_bb, workers=2, cache_entries=64) as (app, client):
        rt = app.state.runtime
        assert len(rt.model_processes) == 2 and all(p.alive for p in rt.model_processes)
        assert (await client.get("/info")).json()["engine"]["model_processes"] == 2
        for name, d in data.items():
            assert (await upload(client, name, d)).status_code == 201
        body = {"inputs": xs, "tasks": list(data)}
        first = await client.post("/v1/classify", json=body)
        assert first.status_code == 200, first.text
        reference = Engine(tiny_bb, cache_entries=0)
        for name, d in data.items():
            a = load_adapter(d, tiny_bb)
            want = reference.predict([Row(a, x) for x in xs])
            got = [r[list(data).index(name)] for r in first.json()["results"]]
            assert [g["label"] for g in got] == [w.label for w in want]
            assert [g["score"] for g in got] == pytest.approx([w.score for w in want], abs=1e-6)
        metrics = (await client.get("/metrics")).text
        misses = [line for line in metrics.splitlines() if line.startswith("lpt_layer_cache_misses")]
        assert misses and float(misses[0].split()[-1]) >= len(xs)   # the children's cache counters reach /metrics
        pids = [p.pid for p in rt.model_processes]
    for pid in pids:                                        # stopped with the server
        assert not _running(pid)


@pytest.mark.asyncio
async def test_model_processes_off_runs_the_workers_as_threads(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, workers=2, model_processes=False) as (app, client):
        assert app.state.runtime.model_processes == []
        assert (await client.get("/info")).json()["engine"]["model_processes"] == 0


@pytest.mark.asyncio
async def test_a_server_whose_model_process_dies_says_503_and_not_ready(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, client):
        assert (await upload(client, "t", adapter_file(tiny_bb, "t"))).status_code == 201
        assert (await client.post("/v1/classify", json={"inputs": "great", "task": "t"})).status_code == 200
        p = app.state.runtime.model_processes[0]
        os.kill(p.pid, signal.SIGKILL)
        p.process.join(10)
        assert (await client.get("/ready")).status_code == 503        # before any batch reaches it
        r = await client.post("/v1/classify", json={"inputs": "great", "task": "t"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable", r.text
        assert (await client.get("/ready")).status_code == 503


def _running(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.asyncio
async def test_a_server_with_several_model_processes_stops_at_once(tmp_path, tiny_bb):
    """Each child closes the parent's ends of its siblings' pipes that it inherited: otherwise a
    child sees its pipe close only when the later siblings exit, and stopping waits on each."""
    async with running(tmp_path, tiny_bb, workers=3) as (app, client):
        assert (await upload(client, "t", adapter_file(tiny_bb, "t"))).status_code == 201
        assert (await client.post("/v1/classify", json={"inputs": ["great"] * 8, "task": "t"})).status_code == 200
        procs = app.state.runtime.model_processes
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3
    assert [p.process.exitcode for p in procs] == [0, 0, 0]     # each left on reading its pipe's end


def test_an_idle_model_process_gives_freed_memory_back_once(tiny_bb, proc):
    a, = adapters(tiny_bb, 1)
    proc.predict([Row(a, "great movie")])
    assert proc.child_trims == 0
    time.sleep(2 * IDLE_TRIM_S + 0.6)            # two idle periods: still one trim
    proc.predict([Row(a, "great movie")])
    assert proc.child_trims == 1                 # once per idle spell, not once per poll
    proc.predict([Row(a, "great movie")])
    assert proc.child_trims == 1


def test_forking_the_model_keeps_the_collector_off_what_the_processes_share(tiny_bb):
    """Objects alive at the fork are frozen out of the garbage collector's passes, which would
    write to each of them and so unshare every page they sit on."""
    import gc

    procs = fork_model(Engine(tiny_bb, cache_entries=8), 2)
    try:
        assert gc.get_freeze_count() > 0
        a, = adapters(tiny_bb, 1)
        assert_same(procs[1].predict([Row(a, x) for x in texts(4)]),
                    Engine(tiny_bb, cache_entries=0).predict([Row(a, x) for x in texts(4)]))
    finally:
        for p in procs:
            p.close()
        gc.unfreeze()


def test_more_new_adapters_in_one_batch_than_one_message_can_pass_descriptors_for(tiny_bb):
    """Linux passes at most 253 descriptors in one SCM_RIGHTS message: 260 adapters new to the
    process in one batch still cross, and every row gets its own adapter's answer."""
    ads = [load_adapter(adapter_file(tiny_bb, f"t{i}", seed=i), tiny_bb) for i in range(260)]
    rows = [Row(a, "great movie w7") for a in ads]
    p = ModelProcess(Engine(tiny_bb, cache_entries=0), adapters=300)
    try:
        assert_same(p.predict(rows), Engine(tiny_bb, cache_entries=0).predict(rows))
        assert p.child_adapters == 260
    finally:
        p.close()


def test_an_adapter_that_cannot_be_shared_fails_its_batch_and_leaves_the_next_one_whole(tiny_bb, proc, monkeypatch):
    import lpt_server.model_process as mp

    a, b = adapters(tiny_bb, 2)
    real, calls = mp.share, []

    def flaky(module, name="x"):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(24, "Too many open files")
        return real(module, name)

    monkeypatch.setattr(mp, "share", flaky)
    rows = [Row(a, "great movie"), Row(b, "bad film")]
    with pytest.raises(OSError):
        proc.predict(rows)
    assert_same(proc.predict(rows), Engine(tiny_bb, cache_entries=0).predict(rows))


def test_a_model_process_leaves_signals_to_the_server_and_exits_when_its_pipe_closes(tiny_bb):
    """It inherits the server's handlers at the fork. Ctrl-C and SIGTERM sent to the whole process
    group (a terminal, systemd) are the server's to handle: it drains, then closes the pipes."""
    before = signal.signal(signal.SIGTERM, lambda *_: None)     # as uvicorn's: set flags, go on
    try:
        p = ModelProcess(Engine(tiny_bb, cache_entries=0))
    finally:
        signal.signal(signal.SIGTERM, before)
    try:
        a, = adapters(tiny_bb, 1)
        p.predict([Row(a, "great")])
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(p.pid, sig)
            p.process.join(0.5)
            assert p.alive, sig
        assert p.predict([Row(a, "great")])[0].label in a.labels
    finally:
        t0 = time.monotonic()
        p.close()
    assert p.process.exitcode == 0 and time.monotonic() - t0 < 3


def test_model_processes_left_open_are_closed_at_the_interpreter_s_exit(tmp_path):
    """A server that exits without its shutdown (a second Ctrl-C) leaves its processes open:
    multiprocessing's exit hook would wait on them for good, so they are closed before it runs."""
    import subprocess
    import sys

    script = tmp_path / "leave.py"
    script.write_text("import sys; sys.path.insert(0, %r)\n" % str(Path(__file__).resolve().parents[1]) +
                      "from tiny import make_backbone\nfrom lpt import Engine\n"
                      "from lpt_server.model_process import fork_model\n"
                      "procs = fork_model(Engine(make_backbone('bert', lm_head=False)), 2)\n"
                      "print(' '.join(str(p.pid) for p in procs), flush=True)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    for pid in map(int, out.stdout.split()):
        assert not _running(pid)


@pytest.mark.asyncio
async def test_a_startup_that_fails_after_the_fork_stops_the_model_processes(tmp_path, tiny_bb, monkeypatch):
    import lpt_server.model_process as mp
    from lpt_server.registry import Registry

    forked, real = [], mp.fork_model
    monkeypatch.setattr(mp, "fork_model", lambda *a, **k: forked.extend(real(*a, **k)) or forked)

    def broken(self):
        raise RuntimeError("the store scan broke")

    monkeypatch.setattr(Registry, "scan", broken)
    with pytest.raises(RuntimeError, match="scan broke"):
        async with running(tmp_path, tiny_bb, workers=2):
            pass
    assert len(forked) == 2 and not any(p.alive for p in forked)


def test_forking_the_model_makes_room_for_the_open_files_of_every_adapter(tiny_bb):
    import gc
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(300, hard), hard))
    try:
        procs = fork_model(Engine(tiny_bb, cache_entries=0), 1, adapters=500)
        for p in procs:
            p.close()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert now >= min(DESCRIPTORS_PER_ADAPTER * 500 + 1024, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gc.unfreeze()


def test_model_processes_only_where_they_can_share_memory(monkeypatch):
    """memfd is Linux's: elsewhere (macOS) the workers stay threads rather than fail each batch."""
    import os as os_module

    from lpt_server import Settings
    from lpt_server.runtime import forks_model

    assert forks_model(Settings(demo_adapters=False))
    assert not forks_model(Settings(demo_adapters=False, model_processes=False))
    assert not forks_model(Settings(demo_adapters=False, device="cuda"))
    monkeypatch.delattr(os_module, "memfd_create")
    assert not forks_model(Settings(demo_adapters=False))


@pytest.mark.asyncio
async def test_a_server_whose_model_process_hangs_still_stops_within_its_drain(tmp_path, tiny_bb):
    """A model process that stops answering (here: SIGSTOP) holds its batch for good: its
    requests get 504, and stopping the server waits the drain (request timeout + 5 s), not
    forever, then kills the process."""
    stopped = []

    async def scenario():
        async with running(tmp_path, tiny_bb, request_timeout_s=1) as (app, client):
            assert (await upload(client, "t", adapter_file(tiny_bb, "t"))).status_code == 201
            assert (await client.post("/v1/classify", json={"inputs": "great", "task": "t"})).status_code == 200
            p = app.state.runtime.model_processes[0]
            os.kill(p.pid, signal.SIGSTOP)
            stopped.append(p)
            r = await client.post("/v1/classify", json={"inputs": "great", "task": "t"})
            assert r.status_code == 504, r.text
            t0 = time.monotonic()
        return time.monotonic() - t0

    try:
        took = await asyncio.wait_for(scenario(), 60)
        assert took < 1 + 5 + 5 + 3                 # the drain, then the process's 5 s to exit
        stopped[0].process.join(10)                 # killed (a stopped process left alone stays)
        assert not stopped[0].alive
    finally:
        for p in stopped:
            if p.alive:
                os.kill(p.pid, signal.SIGKILL)


def test_a_shared_adapter_holds_as_many_descriptors_as_the_open_files_limit_allows_for(tiny_bb):
    """The open-files budget counts what sharing really keeps open per adapter."""
    from lpt_server.shared_weights import share

    ads = adapters(tiny_bb, 10)
    before = len(os.listdir("/proc/self/fd"))
    for a in ads:
        share(a)
    assert len(os.listdir("/proc/self/fd")) - before == 10 * DESCRIPTORS_PER_ADAPTER


def test_a_model_process_reaped_by_someone_else_reads_as_gone(tiny_bb):
    """A child watcher that waits for any pid (asyncio's kinds, a library's) can reap a model
    process before multiprocessing does; waitpid then says nothing, and it must not read as alive."""
    p = ModelProcess(Engine(tiny_bb, cache_entries=0))
    try:
        os.kill(p.pid, signal.SIGKILL)
        os.waitpid(p.pid, 0)
        assert not p.alive and p.gone is not None
    finally:
        p.close()

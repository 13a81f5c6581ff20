"""A real `lpt serve` on a real S3 server (SeaweedFS) that hangs: it is frozen (SIGSTOP), so its
sockets accept connections and never answer. Requests for adapters not loaded wait at most the
store's timeout and answer 503; requests for an adapter already loaded are not held up by them
(they queued behind the store calls for a thread: one waited seconds); once the store is known
to be down, a task not loaded answers 503 at once; when it answers again, everything is served."""
import threading
import time

import httpx
import pytest
import torch
from seaweed import module_s3  # noqa: F401 (the module's own `s3` fixture: the test freezes it)
from serve_process import ADMIN, Server, all_ready

from lpt import Backbone, new_adapter
from lpt.adapter import adapter_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STORE_TIMEOUT_S = 2.0
COLD = 24        # past the store's threads and asyncio's default executor (min(32, cores + 4))


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    with all_ready([Server(s3.url(), tmp_path_factory.mktemp("logs") / "server.log", "--store-recheck-ms", "600000",
                           "--max-resident-adapters", "1",
                           env={**s3.env(), "LPT_STORE_TIMEOUT_S": str(STORE_TIMEOUT_S),
                                "LPT_STORE_CACHE_MB": "0"})]) as [srv]:
        yield srv


def classify(server, task, timeout=60):
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/v1/classify", json={"inputs": "a fine film", "task": task}, timeout=timeout)
    return r, time.monotonic() - t0


def test_a_hung_store_holds_up_only_the_requests_that_need_it(s3, server):
    bb = Backbone.load("minilm")
    files = {}
    for i, name in enumerate(["hot", "stored"]):
        torch.manual_seed(i)
        files[name] = adapter_bytes(new_adapter(bb, task=name, labels=["neg", "pos"], layer=3, prompt_length=4).eval())
        r = httpx.put(f"{server.url}/v1/adapters/{name}", content=files[name],
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        assert r.status_code == 201, r.text
    assert classify(server, "hot")[0].status_code == 200          # loaded; "stored" no longer is

    s3.freeze()
    try:
        cold: list = []
        workers = [threading.Thread(target=lambda i=i: cold.append(classify(server, f"cold{i}")))
                   for i in range(COLD)]
        for t in workers:
            t.start()
        time.sleep(0.3)              # the cold requests hold every store thread now
        hot = [classify(server, "hot") for _ in range(5)]
        for t in workers:
            t.join()
        late = [classify(server, name) for name in ("stored", "never-stored")]   # the store is known down now
    finally:
        s3.thaw()

    assert [r.status_code for r, _ in hot] == [200] * 5
    assert max(s for _, s in hot) < 1.0, [round(s, 2) for _, s in hot]
    assert sorted({r.status_code for r, _ in cold}) == [503]
    assert {r.json()["error"]["type"] for r, _ in cold} == {"store_unavailable"}
    # each waited at most one store timeout: none queued behind a full round of others
    assert max(s for _, s in cold) < STORE_TIMEOUT_S + 1.5, sorted(round(s, 2) for _, s in cold)
    for (r, seconds), name in zip(late, ("stored", "never-stored")):
        assert r.status_code == 503 and seconds < 0.5, (name, r.status_code, seconds)
        assert "is down" in r.json()["error"]["message"] and repr(name) in r.json()["error"]["message"], r.text

    deadline = time.monotonic() + 15                                # the probe sees it back within ~1 s
    while (r := classify(server, "stored")[0]).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert classify(server, "hot")[0].status_code == 200

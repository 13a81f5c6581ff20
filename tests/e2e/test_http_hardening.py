"""A real `lpt serve` against clients that are slow, huge, keyless or unlucky: none of them can
stall the others, hold a connection forever, or break a kept-alive connection."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import httpx
import pytest

from serve_process import Server
from thread_server import serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API = "e2e-api"
AUTH = {"Authorization": f"Bearer {API}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    s = Server(tmp / "store", tmp / "server.log", "--demo-adapters", "--api-key", API, "--threads", "1",
               "--header-timeout-s", "2", "--body-timeout-s", "3", "--max-body-bytes", str(64 << 20))
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_a_10_mb_text_neither_stalls_health_nor_keeps_memory(server):
    text = "The shares rose sharply after the report. " * 250_000            # 10.5 MB, one text
    before = rss_mb(server.proc.pid)
    result = {}

    def post():
        result["r"] = httpx.post(server.url + "/v1/classify", json={"inputs": text, "task": "sentiment"},
                                 headers=AUTH, timeout=60)

    t = threading.Thread(target=post)
    t.start()
    worst = 0.0
    while t.is_alive():
        t0 = time.perf_counter()
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.05)
    t.join()
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.json()["truncated_inputs"] == [0]
    assert worst < 1.0, f"/health took {worst:.2f} s while a 10 MB text was classified"
    grown = rss_mb(server.proc.pid) - before
    assert grown < 200, f"server RSS grew by {grown:.0f} MB for one 10 MB text"


def _raw(server, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(data)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_a_keyless_upload_is_refused_before_its_body_is_read(server):
    s = _raw(server, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 53477376\r\n\r\n" + b"x" * 1024)
    t0 = time.perf_counter()
    head = s.recv(4096)                       # answered while 51 MB are still unsent
    assert head.startswith(b"HTTP/1.1 401"), head[:200]
    assert time.perf_counter() - t0 < 2
    s.close()


def test_headers_sent_slowly_get_a_408_and_the_connection_closes(server):
    socks = [_raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\n") for _ in range(50)]   # never finished
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)               # sends nothing
    t0 = time.perf_counter()
    answers = [_read_all(s) for s in socks + [idle]]
    took = time.perf_counter() - t0
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    assert b"LPT_HEADER_TIMEOUT_S" in answers[0]
    assert took < 6, f"slow clients held their connections {took:.1f} s (timeout 2 s)"
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_body_sent_slowly_gets_a_408(server):
    s = _raw(server, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API.encode() +
             b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\": ")
    t0 = time.perf_counter()
    answer = _read_all(s)                     # the server closes the connection after its 408
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"LPT_BODY_TIMEOUT_S" in answer
    assert 2.5 < time.perf_counter() - t0 < 8


def test_a_server_error_leaves_the_kept_alive_connection_usable(tmp_path):
    """A real uvicorn with lpt's protocol and app; a route with a bug answers 500, and the
    client's next request on the same connection is answered."""
    def add_bug(app):
        @app.get("/bug")
        async def bug():
            raise RuntimeError("a bug")

    with serving(tmp_path / "store", add_routes=add_bug) as (app, url, bb):
        conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
        for path, status in (("/bug", 500), ("/health", 200), ("/bug", 500), ("/health", 200)):
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            assert r.status == status, (path, r.status, body)
        assert json.loads(body) == {"status": "ok"}
        conn.close()

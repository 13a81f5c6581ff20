"""Every answer carries its request's id (X-Request-ID: the caller's when sane, else a new one),
and every log line made while the request is handled carries it too."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest

from tiny_server import adapter_file, admin, running
from lpt_server.logging import TEXT, JsonFormatter, TextFormatter
from lpt_server.request_id import RequestIdFilter

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

HEX32 = re.compile(r"[0-9a-f]{32}")


async def test_each_answer_has_an_id_of_its_own(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        answers = [await c.get("/health"), await c.head("/ready"), await c.get("/v1/adapters/none"),
                   await c.get("/v1/adapters/a%0A"), await c.post("/v1/classify", json={"inputs": ""}),
                   await c.get("/no-such-route")]
        assert [r.status_code for r in answers] == [200, 200, 404, 400, 422, 404]
        ids = [r.headers["x-request-id"] for r in answers]
        assert all(HEX32.fullmatch(i) for i in ids) and len(set(ids)) == len(ids), ids


@pytest.mark.parametrize("sent, kept", [("lb-7f3a", True), ("0123456789abcdef0123456789abcdef", True),
                                        ("a" * 128, True), ("a" * 129, False), ("has space", False),
                                        ('quote"d', False), ("", False)])
async def test_a_callers_id_is_kept_when_it_is_a_sane_token(tmp_path, tiny_bb, sent, kept):
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.get("/health", headers={"X-Request-ID": sent})
        got = r.headers.get_list("x-request-id")
        assert len(got) == 1 and (got[0] == sent if kept else HEX32.fullmatch(got[0])), got


@pytest.fixture
def log_lines():
    """What the server's log handler (as `lpt serve` configures it) writes, in JSON and text."""
    streams = {"json": io.StringIO(), "text": io.StringIO()}
    handlers = []
    for kind, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter() if kind == "json" else TextFormatter(TEXT))
        handler.addFilter(RequestIdFilter())
        handlers.append(handler)
        logging.getLogger().addHandler(handler)
    try:
        yield lambda kind: streams[kind].getvalue().splitlines()
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)


async def test_a_500s_log_line_names_the_request(tmp_path, tiny_bb, log_lines):
    async with running(tmp_path, tiny_bb) as (app, c):
        @app.get("/boom")
        async def boom():
            raise RuntimeError("a bug")
        r = await c.get("/boom", headers={"X-Request-ID": "trace-123"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "trace-123"
        logging.getLogger("lpt_server.test").warning("outside any request")
    [line] = [json.loads(ln) for ln in log_lines("json") if ln.startswith("{") and "unhandled error" in ln]
    assert line["request_id"] == "trace-123" and line["level"] == "error"
    [outside] = [json.loads(ln) for ln in log_lines("json") if ln.startswith("{") and "outside any request" in ln]
    assert "request_id" not in outside
    text = log_lines("text")
    assert any("unhandled error on GET /boom" in ln and ln.endswith("[request trace-123]") for ln in text), text
    assert any(ln.endswith("outside any request") for ln in text), text


async def test_lines_logged_on_the_store_s_threads_name_the_request(tmp_path, tiny_bb, log_lines, caplog):
    """An upload's "stored" line is written on the store's own threads: it names the upload."""
    caplog.set_level(logging.INFO, logger="lpt_server")
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.put("/v1/adapters/traced", content=adapter_file(tiny_bb, "traced"),
                        headers={**admin(), "X-Request-ID": "upload-77"})
        assert r.status_code == 201, r.text
    [line] = [json.loads(ln) for ln in log_lines("json") if ln.startswith("{") and "'traced' stored" in ln]
    assert line["request_id"] == "upload-77"


async def test_a_failed_batch_s_traceback_names_its_requests(tmp_path, tiny_bb, log_lines):
    """The engine runs on its own threads, for rows of several requests at once: the line that
    logs a failed batch names each request whose rows it held."""
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.put("/v1/adapters/t", content=adapter_file(tiny_bb, "t"), headers=admin())
        assert r.status_code == 201, r.text

        def broken(rows):
            raise RuntimeError("the engine broke")
        for engine in app.state.runtime.worker.engines:     # the threads' own (a model process each)
            engine.predict = broken
        r = await c.post("/v1/classify", json={"inputs": "fine", "task": "t"}, headers={"X-Request-ID": "batch-9"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "engine_error", r.text
    [line] = [json.loads(ln) for ln in log_lines("json") if ln.startswith("{") and "rows failed" in ln]
    assert "(request batch-9)" in line["message"] and "the engine broke" in line["exc_info"]

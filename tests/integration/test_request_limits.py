"""Classify requests are bounded before they cost anything: body size, key before body, text
length before tokenizing; bad text is a 400 naming the input; overload and shutdown say when to retry."""
from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from tiny_server import Held, adapter_file, admin, running, upload

pytestmark = pytest.mark.integration


async def _with_task(client, bb, name="t"):
    assert (await upload(client, name, adapter_file(bb, name))).status_code == 201


@pytest.mark.asyncio
async def test_body_over_the_cap_is_413_naming_the_setting(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, max_body_bytes=10_000) as (app, c):
        await _with_task(c, tiny_bb)
        body = json.dumps({"inputs": "word " * 3000, "task": "t"})
        r = await c.post("/v1/classify", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert "LPT_MAX_BODY_BYTES" in r.json()["error"]["message"]

        # the same without a Content-Length (chunked): refused while streaming, not after
        async def chunks():
            for i in range(0, len(body), 1000):
                yield body[i:i + 1000].encode()
        r = await c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "LPT_MAX_BODY_BYTES" in r.json()["error"]["message"]
        # under the cap: answered
        r = await c.post("/v1/classify", json={"inputs": "word " * 100, "task": "t"})
        assert r.status_code == 200, r.text


@pytest.mark.asyncio
async def test_the_key_is_checked_before_the_body_is_read(tmp_path, tiny_bb):
    read = []

    async def body():
        read.append(1)
        yield b'{"inputs": "a", "task": "t"}'

    async with running(tmp_path, tiny_bb, api_key="k") as (app, c):
        r = await c.post("/v1/classify", content=body(), headers={"content-type": "application/json"})
        assert r.status_code == 401 and read == [], (r.status_code, read)
        # a body that is not even JSON still gets the 401, not a 400/422 that reveals parsing
        r = await c.post("/v1/tasks/t/classify", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 401
        r = await c.post("/v1/classify", content=body(), headers={"authorization": "Bearer k",
                                                                  "content-type": "application/json"})
        assert read == [1] and r.status_code == 404      # read once the key was right (no task t yet)


@pytest.mark.asyncio
async def test_a_key_without_bearer_is_named_as_such(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, api_key="k") as (app, c):
        r = await c.post("/v1/classify", json={"inputs": "a", "task": "t"}, headers={"authorization": "k"})
        assert r.status_code == 401
        msg = r.json()["error"]["message"]
        assert "Bearer" in msg and "missing" not in msg and "'k'" not in msg, msg
        r = await c.post("/v1/classify", json={"inputs": "a", "task": "t"})
        assert r.status_code == 401 and r.json()["error"]["message"].startswith("missing API key")


@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/v1/classify", "/v1/tasks/t/classify"])
@pytest.mark.parametrize("inputs,where", [
    (["fine", "bad \ud800 text"], "inputs[1]"),
    ([["fine", "also fine"], ["fine", "\udfff"]], "inputs[1][1]"),
    ("\ud800", "inputs[0]"),
])
async def test_invalid_unicode_is_a_400_naming_the_input(tmp_path, tiny_bb, route, inputs, where):
    async with running(tmp_path, tiny_bb) as (app, c):
        await _with_task(c, tiny_bb)
        body = {"inputs": inputs, **({"task": "t"} if route == "/v1/classify" else {})}
        # json.dumps escapes the lone surrogate as \ud800, as every JSON client does
        r = await c.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert where in r.json()["error"]["message"] and "Unicode" in r.json()["error"]["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize("body,where", [({"inputs": "ok", "task": "t\ud800"}, "task has a lone surrogate"),
                                        ({"inputs": "ok", "tasks": ["t", "\udfff"]}, "tasks[1] has a lone surrogate")])
async def test_invalid_unicode_anywhere_in_the_body_is_named(tmp_path, tiny_bb, body, where):
    """Not only in inputs: a task name with a lone surrogate was a 400 'unexpected end of hex escape'."""
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.post("/v1/classify", content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == 400 and f"invalid Unicode: {where}" in r.json()["error"]["message"], r.text


@pytest.mark.asyncio
async def test_a_body_with_a_utf8_byte_order_mark_is_read(tmp_path, tiny_bb):
    """Some Windows tools start UTF-8 with a byte-order mark; RFC 8259 lets a parser ignore it."""
    async with running(tmp_path, tiny_bb) as (app, c):
        await _with_task(c, tiny_bb)
        body = json.dumps({"inputs": "great film", "task": "t", "raw_scores": True}).encode()
        plain = await c.post("/v1/classify", content=body, headers={"content-type": "application/json"})
        marked = await c.post("/v1/classify", content=b"\xef\xbb\xbf" + body, headers={"content-type": "application/json"})
        assert marked.status_code == 200 and marked.json() == plain.json(), marked.text


@pytest.mark.asyncio
async def test_long_texts_are_cut_by_characters_and_the_answer_says_so(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, max_input_tokens=16, max_body_bytes=8 << 20) as (app, c):
        await _with_task(c, tiny_bb)
        huge = "lorem ipsum " * 200_000                     # 2.4 MB, one text
        r = await c.post("/v1/classify", json={"inputs": ["short text", huge], "task": "t"})
        assert r.status_code == 200, r.text
        assert r.json()["truncated_inputs"] == [1] and r.headers["x-truncated-inputs"] == "1"
        # the answer for the cut text is the answer for its first 16 tokens
        cut = " ".join(huge.split()[:16])
        alone = await c.post("/v1/classify", json={"inputs": cut, "task": "t", "raw_scores": True})
        again = await c.post("/v1/classify", json={"inputs": huge, "task": "t", "raw_scores": True})
        assert again.json()["results"][0][0]["scores"] == pytest.approx(alone.json()["results"][0][0]["scores"],
                                                                       abs=1e-5)
        assert "truncated_inputs" not in alone.json()


@pytest.mark.asyncio
async def test_truncation_off_refuses_a_long_text_with_413(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, max_input_tokens=16, truncate=False) as (app, c):
        await _with_task(c, tiny_bb)
        for text in ("word " * 40, "x" * 100_000):      # over in tokens; over in characters
            r = await c.post("/v1/classify", json={"inputs": ["ok", text], "task": "t"})
            assert r.status_code == 413 and "inputs[1]" in r.json()["error"]["message"], r.text


@pytest.mark.asyncio
@pytest.mark.parametrize("server_truncates", [True, False])
async def test_a_request_chooses_to_cut_or_refuse_a_long_text(tmp_path, tiny_bb, server_truncates):
    """`"truncate"` in the body overrides LPT_TRUNCATE for that request, both ways and on both
    routes; absent, the server's setting holds."""
    async with running(tmp_path, tiny_bb, max_input_tokens=16, truncate=server_truncates) as (app, c):
        await _with_task(c, tiny_bb)
        long = "word " * 40
        for path, body in [("/v1/classify", {"inputs": ["ok", long], "task": "t"}),
                           ("/v1/tasks/t/classify", {"inputs": ["ok", long]})]:
            cut = await c.post(path, json={**body, "truncate": True})
            assert cut.status_code == 200 and cut.json()["truncated_inputs"] == [1], cut.text
            refused = await c.post(path, json={**body, "truncate": False})
            message = refused.json()["error"]["message"]
            assert refused.status_code == 413 and message.startswith("inputs[1] has more than 16 tokens"), message
            assert 'the request asked "truncate": false' in message and '"truncate": true to have it cut' in message
            default = await c.post(path, json=body)
            assert default.status_code == (200 if server_truncates else 413), default.text
            if not server_truncates:
                assert "the server runs with LPT_TRUNCATE=false" in default.json()["error"]["message"]
        bad = await c.post("/v1/classify", json={"inputs": "ok", "task": "t", "truncate": "yes"})
        assert bad.status_code == 422 and "truncate" in bad.text


@pytest.mark.asyncio
async def test_unavailable_says_when_to_retry(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        await _with_task(c, tiny_bb)
        await app.state.runtime.batcher.close(drain=True)
        r = await c.post("/v1/classify", json={"inputs": "a", "task": "t"})
        assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.headers)
        r = await c.get("/ready")
        assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.headers)


@pytest.mark.asyncio
async def test_an_unhandled_error_is_a_logged_500_that_the_app_survives(tmp_path, tiny_bb, caplog):
    async with running(tmp_path, tiny_bb) as (app, c):
        @app.get("/boom")
        async def boom():
            raise RuntimeError("secret detail")
        r = await c.get("/boom")
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        assert "secret detail" not in r.text                              # the client sees only the type
        assert any("unhandled error" in rec.getMessage() for rec in caplog.records)
        assert (await c.get("/health")).status_code == 200


@pytest.mark.asyncio
async def test_a_large_body_is_parsed_off_the_event_loop(tmp_path, tiny_bb, monkeypatch):
    """/health answers while a large classify body is still being parsed."""
    from lpt_server import body as body_module

    held = Held(body_module.validate_json)
    monkeypatch.setattr(body_module, "validate_json", held)
    async with running(tmp_path, tiny_bb) as (app, c):
        await _with_task(c, tiny_bb)
        big = {"inputs": ["word " * 20_000], "task": "t"}             # ~100 KB
        assert len(json.dumps(big)) > body_module.PARSE_OFF_LOOP_BYTES
        assert (await held.health_answers_meanwhile(c, c.post("/v1/classify", json=big))).status_code == 200


@pytest.mark.asyncio
async def test_a_large_answer_is_built_off_the_event_loop_as_json_would_write_it(tmp_path, tiny_bb, monkeypatch):
    """/health answers while a many-row answer is still being built; a small one is built on the
    loop (no thread hop); both are the bytes JSONResponse would write."""
    import threading

    from starlette.responses import JSONResponse

    from lpt_server.routes import classify as classify_module

    held, on_loop = Held(classify_module.respond), []

    def respond(*args):
        on_loop.append(threading.current_thread() is threading.main_thread())   # the loop's thread here
        return held(*args)

    monkeypatch.setattr(classify_module, "respond", respond)
    async with running(tmp_path, tiny_bb) as (app, c):
        await _with_task(c, tiny_bb)
        n = classify_module.RESPOND_OFF_LOOP_ROWS
        big = {"inputs": [f"text n\u00b0{i}" for i in range(n)], "task": "t", "raw_scores": True}
        r = await held.health_answers_meanwhile(c, c.post("/v1/classify", json=big))
        assert r.status_code == 200 and len(r.json()["results"]) == n
        assert r.content == JSONResponse(r.json()).body
        small = await c.post("/v1/classify", json={**big, "inputs": big["inputs"][:n - 1]})
        assert small.status_code == 200 and small.content == JSONResponse(small.json()).body
        assert small.json()["results"] == r.json()["results"][:n - 1]
        assert on_loop == [False, True]
    answer = {"results": r.json()["results"][:3], "truncated_inputs": [0, 2]}    # what else an answer holds
    assert classify_module.RowsResponse(answer).body == JSONResponse(answer).body


@pytest.mark.asyncio
@pytest.mark.parametrize("method, path", [("POST", "/v1/classify"), ("POST", "/v1/tasks/t/classify"),
                                          ("PUT", "/v1/adapters/x"), ("POST", "/v1/train")])
async def test_a_client_gone_while_its_body_is_read_is_not_an_error(tmp_path, tiny_bb, caplog, method, path):
    """A client that hangs up mid-body is a 4xx for the access log (499), not a logged server error."""
    import asyncio
    import logging

    caplog.set_level(logging.INFO)
    async with running(tmp_path, tiny_bb) as (app, c):
        await _with_task(c, tiny_bb)
        messages = [{"type": "http.request", "body": b'{"inputs": ', "more_body": True}, {"type": "http.disconnect"}]
        sent = []

        async def receive():
            return messages.pop(0) if messages else await asyncio.Future()

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
                 "server": ("test", 80), "client": ("127.0.0.1", 1),
                 "headers": [(b"host", b"test"), (b"content-type", b"application/json"),
                             (b"content-length", b"100"), *admin_header()]}
        await asyncio.wait_for(app(scope, receive, send), 10)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
        assert 400 <= sent[0]["status"] < 500 and (await c.get("/health")).status_code == 200   # nobody reads it


def admin_header() -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in admin().items()]


def test_many_validation_errors_make_one_message_in_linear_time():
    """Each bad item gives an error per union branch; keeping the most specific location of each
    compared every location with every other (50,000 errors: minutes). Now a set of prefixes."""
    import threading

    from fastapi.exceptions import RequestValidationError

    from lpt_server.errors import validation_message

    n = 25_000
    errors = [e for i in range(n) for e in (
        {"type": "string_type", "loc": ("body", "inputs", "str"), "msg": "x", "input": [1]},
        {"type": "string_type", "loc": ("body", "inputs", "list[union[str,list[str]]]", i, "str"), "msg": "x", "input": 1},
        {"type": "list_type", "loc": ("body", "inputs", "list[union[str,list[str]]]", i, "list[str]"), "msg": "x",
         "input": 1})]
    out = []
    worker = threading.Thread(target=lambda: out.append(validation_message(RequestValidationError(errors))), daemon=True)
    worker.start()
    worker.join(60)                              # linear: well under a second; quadratic: many minutes
    assert out, "validation_message did not finish in 60 s"
    status, typ, message = out[0]
    assert (status, typ) == (422, "validation_error")
    assert message.startswith("invalid request: inputs[0]: each input must be a string") and f"and {n - 6} more" in message


@pytest.mark.asyncio
async def test_a_huge_task_name_is_refused_without_echoing_it_back(tmp_path, tiny_bb):
    """A 1.5 MB task name came back in full in the 404's message (and in the log line for it)."""
    async with running(tmp_path, tiny_bb) as (app, c):
        name = "a" * 1_500_000
        await _with_task(c, tiny_bb, "ok")
        for body in ({"inputs": "x", "task": name}, {"inputs": "x", "tasks": ["ok", name]}):
            r = await c.post("/v1/classify", json=body)
            assert r.status_code == 404 and len(r.content) < 400, (r.status_code, len(r.content))
            assert "1500000 characters" in r.json()["error"]["message"], r.text
        r = await c.delete("/v1/adapters/" + "b" * 4000, headers=admin())
        assert r.status_code == 400 and len(r.content) < 400 and "4000 characters" in r.text


@pytest.mark.asyncio
@pytest.mark.parametrize("stage", ["reading its body", "waiting for its batch"])
async def test_a_request_cancelled_at_shutdown_is_a_503_in_the_api_format(tmp_path, tiny_bb, monkeypatch, stage):
    """uvicorn cancels what still runs when the shutdown's drain time ends; its own answer was a
    plain-text 500 'Internal Server Error' (and /metrics counted a 499). A 503 in the API's
    format, with Retry-After, tells the client to retry elsewhere."""
    import asyncio

    from lpt_server.routes import classify as classify_module

    async def never(*args):
        await asyncio.sleep(3600)

    if stage == "waiting for its batch":
        monkeypatch.setattr(classify_module, "schedule", never)
    async with running(tmp_path, tiny_bb) as (app, c):
        await _with_task(c, tiny_bb)
        body = json.dumps({"inputs": "x", "task": "t"}).encode()
        sent, chunks = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if stage == "waiting for its batch" and chunks:
                return chunks.pop()
            await never()

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "root_path": "",
                 "query_string": b"", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        task = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.2)
        task.cancel()                                 # what uvicorn does when the drain time ends
        await asyncio.wait([task])
        start = next(m for m in sent if m["type"] == "http.response.start")
        answer = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
        assert start["status"] == 503 and (b"retry-after", b"2") in start["headers"]
        assert answer["error"]["type"] == "unavailable" and "the server stopped" in answer["error"]["message"]
        if stage == "waiting for its batch":          # the request counted as what it got
            metrics = (await c.get("/metrics")).text
            assert 'lpt_requests_total{status="503",task="t"} 1.0' in metrics, metrics[:2000]


@pytest.mark.asyncio
async def test_rows_given_up_while_queued_are_counted_as_dropped(tmp_path, tiny_bb):
    """Rows whose request timed out while they waited in the queue never reach the engine: the
    batcher drops them, and /metrics counts them (it counted only rows dropped in a closed batch)."""
    import asyncio

    async with running(tmp_path, tiny_bb, request_timeout_s=0.3, max_batch_rows=1) as (app, c):
        await _with_task(c, tiny_bb)
        batcher = app.state.runtime.batcher

        async def busy(items):                      # the engine stuck on one batch for a while
            await asyncio.sleep(1.0)
            for it in items:
                if not it.future.done():
                    it.future.set_result(None)
        batcher.execute = busy
        answers = await asyncio.gather(*(c.post("/v1/classify", json={"inputs": ["a", "b"], "task": "t"})
                                         for _ in range(3)))
        assert [r.status_code for r in answers] == [504] * 3
        dropped = re.search(r"^lpt_rows_dropped_total (\S+)$", (await c.get("/metrics")).text, re.M)
        assert float(dropped.group(1)) >= 5, dropped          # 6 rows; one batch of 1 row was taken


@pytest.mark.asyncio
async def test_a_task_deleted_while_its_requests_run_leaves_no_series_behind(tmp_path, tiny_bb, monkeypatch):
    """Deleting an adapter removes its /metrics series (a series per name ever served would grow
    without end); requests that were running for it must not bring them back."""
    import asyncio

    from lpt_server.routes import classify as classify_module

    go, real = asyncio.Event(), classify_module.schedule

    async def held(*args):
        await go.wait()
        return await real(*args)
    monkeypatch.setattr(classify_module, "schedule", held)
    async with running(tmp_path, tiny_bb) as (app, c):
        await upload(c, "gone", adapter_file(tiny_bb, "gone"))
        busy = [asyncio.create_task(c.post("/v1/classify", json={"inputs": "x", "task": "gone"})) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert (await c.delete("/v1/adapters/gone", headers=admin())).status_code == 204
        go.set()
        assert [(await r).status_code for r in busy] == [200] * 3       # they had the adapter already
        assert 'task="gone"' not in (await c.get("/metrics")).text


@pytest.mark.asyncio
async def test_an_app_whose_startup_has_not_run_answers_503_not_a_500(tmp_path, tiny_bb):
    """An app served in process without its lifespan (httpx.ASGITransport does not run it) has no
    model or store yet: a 503 that says so, not a 500 'this is a bug' from an AttributeError."""
    from tiny_server import tiny_app

    app = tiny_app(tmp_path / "store", tiny_bb, admin_key="k")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as c:
        for r in [await c.post("/v1/classify", json={"inputs": "x", "task": "t"}),
                  await c.post("/v1/tasks/t/classify", json={"inputs": "x"}), await c.get("/v1/adapters"),
                  await c.put("/v1/adapters/t", content=b"x", headers={"Authorization": "Bearer k"}),
                  await c.get("/v1/train", headers={"Authorization": "Bearer k"})]:
            assert r.status_code == 503 and "the server has not started" in r.json()["error"]["message"], r.text
        assert (await c.get("/health")).status_code == 200


@pytest.mark.asyncio
async def test_a_body_that_arrives_slowly_leaves_the_request_its_whole_deadline(tmp_path, tiny_bb):
    """LPT_BODY_TIMEOUT_S bounds the body, LPT_REQUEST_TIMEOUT_S the work after it: counted from
    the first byte, a body sent over 1.2 s (legal here) left a 1 s request no time, and an idle
    server answered 504 "overloaded"."""
    async with running(tmp_path, tiny_bb, request_timeout_s=1.0, body_timeout_s=10.0) as (app, c):
        assert (await upload(c, "sent", adapter_file(tiny_bb, "sent"))).status_code == 201

        async def slow():
            yield b'{"inputs": ["great film"],'
            await asyncio.sleep(1.2)
            yield b' "task": "sent"}'
        r = await c.post("/v1/classify", content=slow(), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text

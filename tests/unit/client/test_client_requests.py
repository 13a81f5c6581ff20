"""Every client method sends the right method, path, body and key, sync and async alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lpt_client import (
    AdapterInfo,
    AsyncClient,
    ClassifyResult,
    Client,
    NotFound,
    Probe,
    ServerInfo,
    UploadResult,
)

pytestmark = pytest.mark.unit

ADAPTER_BYTES = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      fake safetensors"

# (id, call on a client, method, path, JSON body or raw bytes or None, which key is sent)
CASES: list[tuple[str, Callable[[Any, Path], Any], str, str, Any, str]] = [
    (
        "classify-one-task",
        lambda c, f: c.classify("good film", task="sentiment"),
        "POST",
        "/v1/classify",
        {"inputs": ["good film"], "task": "sentiment"},
        "api",
    ),
    (
        "classify-two-tasks-raw",
        lambda c, f: c.classify(["a", "good b"], tasks=["sentiment", "topic"], raw_scores=True),
        "POST",
        "/v1/classify",
        {"inputs": ["a", "good b"], "tasks": ["sentiment", "topic"], "raw_scores": True},
        "api",
    ),
    (
        "classify-no-truncation",
        lambda c, f: c.classify("a long text", task="sentiment", truncate=False),
        "POST",
        "/v1/classify",
        {"inputs": ["a long text"], "task": "sentiment", "truncate": False},
        "api",
    ),
    (
        "classify-pairs-truncated",
        lambda c, f: c.classify_pairs([("premise", "hypothesis")], task="nli", truncate=True),
        "POST",
        "/v1/classify",
        {"inputs": [["premise", "hypothesis"]], "task": "nli", "truncate": True},
        "api",
    ),
    (
        "classify-pairs",
        lambda c, f: c.classify_pairs([("premise", "hypothesis")], task="nli"),
        "POST",
        "/v1/classify",
        {"inputs": [["premise", "hypothesis"]], "task": "nli"},
        "api",
    ),
    ("list", lambda c, f: c.list_adapters(), "GET", "/v1/adapters", None, "api"),
    (
        "get",
        lambda c, f: c.get_adapter("sentiment"),
        "GET",
        "/v1/adapters/sentiment",
        None,
        "api",
    ),
    (
        "upload",
        lambda c, f: c.upload_adapter("sentiment", f),
        "PUT",
        "/v1/adapters/sentiment",
        ADAPTER_BYTES,
        "admin",
    ),
    (
        "upload-data",
        lambda c, f: c.upload_adapter("sentiment", data=ADAPTER_BYTES),
        "PUT",
        "/v1/adapters/sentiment",
        ADAPTER_BYTES,
        "admin",
    ),
    (
        "delete",
        lambda c, f: c.delete_adapter("sentiment"),
        "DELETE",
        "/v1/adapters/sentiment",
        None,
        "admin",
    ),
    ("health", lambda c, f: c.health(), "GET", "/health", None, "api"),
    ("ready", lambda c, f: c.ready(), "GET", "/ready", None, "api"),
    ("info", lambda c, f: c.info(), "GET", "/info", None, "api"),
]


@pytest.fixture
def adapter_file(tmp_path: Path) -> Path:
    path = tmp_path / "sentiment.safetensors"
    path.write_bytes(ADAPTER_BYTES)
    return path


def check_request(server, method: str, path: str, body: Any, key: str) -> None:
    assert len(server.requests) == 1
    request = server.last
    assert request.method == method
    assert str(request.url) == "http://lpt.test" + path
    secret = server.API_KEY if key == "api" else server.ADMIN_KEY
    assert request.headers["authorization"] == f"Bearer {secret}"
    assert request.headers["user-agent"].startswith("lpt-client/")
    if isinstance(body, bytes):
        assert request.content == body
        assert request.headers["content-type"] == "application/octet-stream"
    elif body is not None:
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.content) == body
    else:
        assert request.content == b""


@pytest.mark.parametrize(("call", "method", "path", "body", "key"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_sync_request(
    client: Client, server, adapter_file: Path, call, method, path, body, key
) -> None:
    call(client, adapter_file)
    check_request(server, method, path, body, key)


@pytest.mark.asyncio
@pytest.mark.parametrize(("call", "method", "path", "body", "key"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
async def test_async_request(
    server, adapter_file: Path, call, method, path, body, key
) -> None:
    async with AsyncClient(
        "http://lpt.test",
        api_key=server.API_KEY,
        admin_key=server.ADMIN_KEY,
        transport=server.transport,
    ) as client:
        await call(client, adapter_file)
    check_request(server, method, path, body, key)


def test_classify_returns_one_list_per_input_in_task_order(client: Client) -> None:
    results = client.classify(["good", "bad"], tasks=["sentiment", "topic"], raw_scores=True)
    assert [[r.task for r in row] for row in results] == [["sentiment", "topic"]] * 2
    assert [row[0].label for row in results] == ["positive", "negative"]
    assert isinstance(results[0][0], ClassifyResult)
    assert results[0][0].scores == {"negative": 0.25, "positive": 0.75}


def test_classify_says_which_inputs_the_server_truncated(client: Client, server) -> None:
    assert client.classify(["good", "bad"], task="sentiment").truncated_inputs == []
    answer = {"results": [[{"task": "s", "label": "a", "score": 0.5}]] * 3, "truncated_inputs": [0, 2]}
    server.on("POST", "/v1/classify", server.reply(200, answer))
    results = client.classify_pairs([["a", "b"]] * 3, task="s")
    assert results.truncated_inputs == [0, 2]
    assert results == [[ClassifyResult(task="s", label="a", score=0.5)]] * 3   # still the plain list


@pytest.mark.asyncio
async def test_async_files_are_read_off_the_event_loop(server, tmp_path: Path, monkeypatch) -> None:
    import threading

    from lpt_client import _base, async_client

    readers: list[threading.Thread] = []
    uploads: list[threading.Thread] = []
    real = _base.read_train_file

    def recording(file):
        readers.append(threading.current_thread())
        return real(file)

    monkeypatch.setattr(_base, "read_train_file", recording)
    real_upload = async_client.read_upload
    monkeypatch.setattr(async_client, "read_upload",
                        lambda path, data: uploads.append(threading.current_thread()) or real_upload(path, data))
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    server.on("POST", "/v1/train", server.reply(202, {"id": "j1", "task": "t", "state": "queued", "created_at": 1.0,
                                                       "progress": {}, "history": []}))
    async with AsyncClient("http://lpt.test", admin_key="k", transport=server.transport) as client:
        await client.train("t", tmp_path / "train.csv")
        assert b"text,label" in server.last.content
        (tmp_path / "a.safetensors").write_bytes(ADAPTER_BYTES)
        await client.upload_adapter("sentiment", tmp_path / "a.safetensors")
        assert server.last.content == ADAPTER_BYTES
    assert readers and uploads and threading.main_thread() not in readers + uploads


def test_classify_without_raw_scores_has_no_scores(client: Client) -> None:
    [[result]] = client.classify("good", task="sentiment")
    assert result == ClassifyResult(task="sentiment", label="positive", score=0.75)


def test_adapter_results_are_typed(client: Client) -> None:
    [listed] = client.list_adapters()
    assert isinstance(listed, AdapterInfo)
    assert listed == client.get_adapter("sentiment")
    assert (listed.layer, listed.prompt_length, listed.resident) == (3, 5, True)


def test_list_accepts_bare_list_and_short_field_names(client: Client, server) -> None:
    short = {"name": "t", "version": "v", "labels": ["a"], "k": 2, "L": 4, "size": 9,
             "residency": False, "trained_on": "tweets"}
    server.on("GET", "/v1/adapters", server.reply(200, [short]))
    [adapter] = client.list_adapters()
    assert (adapter.layer, adapter.prompt_length, adapter.size_bytes) == (2, 4, 9)
    assert adapter.resident is False
    assert adapter.model_extra == {"trained_on": "tweets"}


def test_upload_tells_created_from_replaced(
    client: Client, server, adapter_file: Path
) -> None:
    created = client.upload_adapter("sentiment", adapter_file)
    assert created == UploadResult(created=True, adapter=AdapterInfo(**server.ADAPTER))
    server.on("PUT", "/v1/adapters/sentiment", server.reply(200, {"adapter": server.ADAPTER}))
    replaced = client.upload_adapter("sentiment", str(adapter_file))
    assert replaced.created is False and replaced.adapter is not None


def test_upload_with_unexpected_body_still_succeeds(client: Client, server) -> None:
    server.on("PUT", "/v1/adapters/sentiment", server.reply(201, {"ok": True}))
    assert client.upload_adapter("sentiment", data=b"x") == UploadResult(created=True)


def test_delete_returns_none(client: Client) -> None:
    assert client.delete_adapter("sentiment") is None


def test_probes_and_info(client: Client, server) -> None:
    assert client.health() == Probe(ok=True, status_code=200, body={"status": "ok"})
    assert client.ready()
    loading = {"error": {"type": "unavailable", "message": "loading"}}
    server.on("GET", "/ready", server.reply(503, loading))
    not_ready = client.ready()
    assert not not_ready and not_ready.status_code == 503
    info = client.info()
    assert isinstance(info, ServerInfo)
    assert info.model_extra == {"model": "minilm", "max_inputs": 64}


def test_adapter_names_are_escaped_in_the_path(client: Client, server) -> None:
    with pytest.raises(NotFound):
        client.get_adapter("a/../b c")
    assert server.last.url.raw_path == b"/v1/adapters/a%2F..%2Fb%20c"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.classify("x"),
        lambda c: c.classify("x", task="a", tasks=["b"]),
        lambda c: c.classify("x", tasks=[]),
        lambda c: c.classify("x", tasks="sentiment"),
        lambda c: c.classify([1], task="a"),
        lambda c: c.classify_pairs([("only one",)], task="a"),
        lambda c: c.classify_pairs(["ab"], task="a"),
        lambda c: c.get_adapter(""),
        lambda c: c.upload_adapter("x"),
        lambda c: c.upload_adapter("x", "f", data=b"y"),
    ],
)
def test_bad_arguments_fail_before_sending(client: Client, server, call) -> None:
    with pytest.raises((ValueError, TypeError)):
        call(client)
    assert server.requests == []


@pytest.mark.asyncio
async def test_async_client_serves_an_asgi_app_in_process() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        inputs = json.loads(body)["inputs"]
        payload = {"results": [[{"task": "t", "label": "yes", "score": 1.0}] for _ in inputs]}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    async with AsyncClient("http://app", transport=httpx.ASGITransport(app)) as client:
        results = await client.classify(["a", "b"], task="t")
    assert [row[0].label for row in results] == ["yes", "yes"]

"""The client against the real server app, in process: every method, sync and async, and the
errors and retries as the server really produces them (tests/unit/client uses a fake server).

Each test runs twice, once per client. The sync `Client` talks to the app through starlette's
TestClient (an `httpx.Client` that runs the app in a thread); the `AsyncClient` through
`httpx.ASGITransport`, on an event loop in a thread (an anyio portal), with the test calling
its coroutines from there. So every assertion is written once and holds for both clients.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.responses import JSONResponse
from starlette.testclient import TestClient
from tiny_server import adapter_file, tiny_app, with_config

from lpt import Engine, Row, load_adapter
from lpt_client import (AdapterInfo, AsyncClient, BadRequest, ClassifyResult, Client, Forbidden, NotFound,
                        Overloaded, PayloadTooLarge, Probe, ServerInfo, Unauthorized, UploadResult)

pytestmark = pytest.mark.integration

ADMIN = "contract-admin"
API = "contract-api"
TEXTS = ["great film , the actors were fun", "boring plot , bad actors"]


# -- the two clients, behind one blocking interface -------------------------------------------

class Blocking:
    """An `AsyncClient` whose coroutine methods are run to completion on the portal's loop."""

    def __init__(self, portal: BlockingPortal, client: AsyncClient):
        self.portal, self.client = portal, client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if not inspect.iscoroutinefunction(method):
            return method
        return lambda *args, **kwargs: self.portal.call(partial(method, *args, **kwargs))


@contextmanager
def sync_client(app, asgi, **options) -> Iterator[Client]:
    with TestClient(asgi) as http:         # runs the lifespan: model, registry, worker
        with Client(http_client=http, **options) as client:
            yield client


@contextmanager
def async_client(app, asgi, **options) -> Iterator[Blocking]:
    with start_blocking_portal() as portal:
        # ASGITransport runs no lifespan: start the app on the loop its requests will run on
        with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
            client = AsyncClient("http://lpt.test", transport=httpx.ASGITransport(app=asgi), **options)
            try:
                yield Blocking(portal, client)
            finally:
                portal.call(client.aclose)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("LPT_URL", "LPT_API_KEY", "LPT_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["sync", "async"])
def connect(request, tmp_path, tiny_bb) -> Iterator[Callable[..., Any]]:
    """`connect(wrap=None, client={...}, **server_settings)`: a client for a fresh, started app.

    The server has admin key ADMIN unless told otherwise; the client gets ADMIN as its admin
    key and no backoff unless `client=` says otherwise. `wrap` wraps the app in ASGI middleware.
    """
    opener = sync_client if request.param == "sync" else async_client
    n = itertools.count()
    with ExitStack() as stack:
        def connect(wrap=None, client: dict | None = None, **settings):
            store = tmp_path / f"store{next(n)}"
            app = tiny_app(store, tiny_bb, **{"admin_key": ADMIN, **settings})
            options = {"admin_key": ADMIN, "backoff_s": 0.0, **(client or {})}
            return stack.enter_context(opener(app, wrap(app) if wrap else app, **options))
        yield connect


@pytest.fixture(scope="module")
def files(tiny_bb) -> dict[str, bytes]:
    return {
        "sentiment": adapter_file(tiny_bb, "sentiment", ["negative", "positive"], seed=1),
        "sentiment-v2": adapter_file(tiny_bb, "sentiment", ["negative", "positive"], seed=2),
        "topic": adapter_file(tiny_bb, "topic", ["world", "sports", "business", "tech"], seed=3,
                              layer=1, prompt_length=6),
        "nli": adapter_file(tiny_bb, "nli", ["entailment", "neutral", "contradiction"], seed=4),
    }


def engine_answer(bb, data: bytes, text: str, pair: str | None = None):
    """What the engine, called directly in this process, answers for one row."""
    return Engine(bb, cache_entries=0).predict([Row(load_adapter(data, bb), text, pair)])[0]


# -- classify --------------------------------------------------------------------------------

def test_classify_one_task_and_two_tasks(connect, files, tiny_bb):
    client = connect()
    client.upload_adapter("sentiment", data=files["sentiment"])
    client.upload_adapter("topic", data=files["topic"])

    [[one]] = client.classify(TEXTS[0], task="sentiment")
    assert isinstance(one, ClassifyResult) and one.task == "sentiment" and one.scores is None
    want = engine_answer(tiny_bb, files["sentiment"], TEXTS[0])
    assert one.label == want.label and one.score == pytest.approx(want.score, abs=1e-5)

    results = client.classify(TEXTS, tasks=["topic", "sentiment"])
    assert [[r.task for r in row] for row in results] == [["topic", "sentiment"]] * 2
    for text, row in zip(TEXTS, results):
        for r in row:
            want = engine_answer(tiny_bb, files[r.task], text)
            assert r.label == want.label and r.score == pytest.approx(want.score, abs=1e-5)


def test_classify_raw_scores(connect, files):
    client = connect()
    client.upload_adapter("topic", data=files["topic"])
    [[r]] = client.classify([TEXTS[1]], task="topic", raw_scores=True)
    assert list(r.scores) == ["world", "sports", "business", "tech"]
    assert sum(r.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert r.score == max(r.scores.values()) and r.scores[r.label] == r.score


def test_classify_pairs(connect, files, tiny_bb):
    client = connect()
    client.upload_adapter("nli", data=files["nli"])
    client.upload_adapter("sentiment", data=files["sentiment"])
    pairs = [("the film was fun", "it was not boring"), ("the plot", "a movie")]
    results = client.classify_pairs(pairs, tasks=["nli", "sentiment"], raw_scores=True)
    assert [[r.task for r in row] for row in results] == [["nli", "sentiment"]] * 2
    for (text, pair), row in zip(pairs, results):
        want = engine_answer(tiny_bb, files["nli"], text, pair)
        assert row[0].label == want.label
        assert row[0].scores == pytest.approx(want.scores, abs=1e-5)


# -- adapters --------------------------------------------------------------------------------

def test_adapter_lifecycle(connect, files):
    client = connect()
    assert client.list_adapters() == []

    created = client.upload_adapter("sentiment", data=files["sentiment"])       # 201
    assert isinstance(created, UploadResult) and created.created is True
    info = created.adapter
    assert isinstance(info, AdapterInfo)
    assert (info.name, info.task, info.labels) == ("sentiment", "sentiment", ["negative", "positive"])
    assert (info.layer, info.prompt_length, info.generator, info.head_kind) == (2, 4, "npg", "linear")
    assert info.base_model == "tiny-bert" and info.resident is True
    assert info.size_bytes == len(files["sentiment"])
    assert info.version == hashlib.sha256(files["sentiment"]).hexdigest()
    assert info.model_extra == {}                     # every field the server sends is typed

    assert client.list_adapters() == [info]
    assert client.get_adapter("sentiment") == info

    replaced = client.upload_adapter("sentiment", data=files["sentiment-v2"])   # 200
    assert replaced.created is False
    assert replaced.adapter.version == hashlib.sha256(files["sentiment-v2"]).hexdigest()
    assert client.get_adapter("sentiment") == replaced.adapter

    assert client.delete_adapter("sentiment") is None
    assert client.list_adapters() == []
    with pytest.raises(NotFound):
        client.get_adapter("sentiment")


def test_upload_from_a_path(connect, files, tmp_path):
    path = tmp_path / "topic.safetensors"
    path.write_bytes(files["topic"])
    client = connect()
    assert client.upload_adapter("topic", path).created is True
    assert client.upload_adapter("topic", str(path)).created is False


# -- operations ------------------------------------------------------------------------------

def test_health_ready_info(connect, files):
    client = connect()
    assert client.health() == Probe(ok=True, status_code=200, body={"status": "ok"})
    ready = client.ready()
    assert ready and ready.status_code == 200 and ready.body == {"status": "ready"}
    client.upload_adapter("sentiment", data=files["sentiment"])
    info = client.info()
    assert isinstance(info, ServerInfo)
    assert info.ready is True and info.model["id"] == "tiny-bert" and info.model["layers"] == 4
    assert info.adapters["registered"] == 1
    assert info.settings["admin_key"] == "set"        # never the key itself


# -- errors, as the server words them ----------------------------------------------------------

def test_unknown_task_is_not_found_with_the_servers_message(connect, files):
    client = connect()
    client.upload_adapter("sentiment", data=files["sentiment"])
    for call in (lambda: client.classify("fun", task="nope"),
                 lambda: client.classify("fun", tasks=["sentiment", "nope"]),
                 lambda: client.classify_pairs([("a", "b")], task="nope")):
        with pytest.raises(NotFound) as err:
            call()
        assert (err.value.status_code, err.value.type) == (404, "not_found")
        assert err.value.message == err.value.response.json()["error"]["message"]
        assert err.value.message.startswith("unknown task 'nope'")
    with pytest.raises(NotFound, match="no adapter named 'nope'"):
        client.delete_adapter("nope")


def test_upload_without_the_admin_key_is_an_auth_error(connect, files):
    client = connect(client={"admin_key": None})
    with pytest.raises(Unauthorized, match="missing admin key") as err:
        client.upload_adapter("sentiment", data=files["sentiment"])
    assert err.value.status_code == 401
    with pytest.raises(Unauthorized):
        client.delete_adapter("sentiment")
    assert client.list_adapters() == []               # reads need no key on this server

    with pytest.raises(Forbidden, match="wrong admin key"):
        connect(client={"admin_key": "guess"}).upload_adapter("sentiment", data=files["sentiment"])
    with pytest.raises(Forbidden, match="adapter writes are disabled"):
        connect(admin_key=None).upload_adapter("sentiment", data=files["sentiment"])


def test_api_key(connect, files):
    with pytest.raises(Unauthorized, match="missing API key"):
        connect(api_key=API, client={"admin_key": None}).list_adapters()
    client = connect(api_key=API, client={"api_key": API})
    client.upload_adapter("sentiment", data=files["sentiment"])
    assert client.classify("fun", task="sentiment")[0][0].task == "sentiment"
    # the server takes the admin key wherever it takes the API key, and so does the client
    assert connect(api_key=API).list_adapters() == []


def test_bad_adapter_file_shows_the_servers_reasons(connect, files, other_bb):
    client = connect()
    bad_config = with_config(files["sentiment"], prompt_length=0, pooling="zzz")
    foreign = adapter_file(other_bb, "sentiment", ["negative", "positive"])   # other base weights
    for data, words in ((bad_config, ["prompt_length must be", "pooling must be"]),
                        (foreign, ["base model weights differ"]),
                        (b"hello, not an adapter", ["not a safetensors file"])):
        with pytest.raises(BadRequest) as err:
            client.upload_adapter("sentiment", data=data)
        assert (err.value.status_code, err.value.type) == (400, "invalid_adapter")
        problems = err.value.response.json()["error"]["problems"]
        assert len(problems) == len(words)
        for problem, word in zip(problems, words):
            assert word in problem and problem in str(err.value)
    assert client.list_adapters() == []


def test_invalid_and_oversized_requests(connect, files):
    client = connect(max_inputs=2)
    client.upload_adapter("sentiment", data=files["sentiment"])
    with pytest.raises(BadRequest, match=r"inputs\[1\] is empty") as err:
        client.classify(["fun", "   "], task="sentiment")
    assert err.value.status_code == 422
    with pytest.raises(BadRequest, match="names a task more than once"):
        client.classify("fun", tasks=["sentiment", "sentiment"])
    with pytest.raises(PayloadTooLarge, match="3 inputs in one request, the limit is 2"):
        client.classify(["a", "b", "c"], task="sentiment")


# -- retries, against the real app behind a middleware ----------------------------------------

class OverloadedOnce:
    """ASGI middleware: answers the first HTTP request 429 as the server does when its queue
    is full, then passes every request through to the app. `connect(wrap=gate.around)`."""

    def __init__(self):
        self.app = None
        self.seen: list[tuple[str, str, int]] = []    # (method, path, status answered here)

    def around(self, app) -> OverloadedOnce:
        self.app = app
        return self

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":                     # lifespan goes to the app
            return await self.app(scope, receive, send)
        if not self.seen:
            self.seen.append((scope["method"], scope["path"], 429))
            body = {"error": {"type": "overloaded", "message": "the queue is full (1024 rows waiting)"}}
            response = JSONResponse(body, status_code=429, headers={"Retry-After": "0"})
            return await response(scope, receive, send)
        self.seen.append((scope["method"], scope["path"], 0))
        await self.app(scope, receive, send)


def test_429_is_retried_and_then_served(connect, files):
    gate = OverloadedOnce()
    client = connect(wrap=gate.around)
    # the first request is an upload: PUT is idempotent, the retry sends the whole file again
    assert client.upload_adapter("sentiment", data=files["sentiment"]).created is True
    path = "/v1/adapters/sentiment"
    assert gate.seen == [("PUT", path, 429), ("PUT", path, 0)]
    assert client.get_adapter("sentiment").size_bytes == len(files["sentiment"])


def test_429_is_raised_when_retries_are_spent(connect, files):
    gate = OverloadedOnce()
    client = connect(wrap=gate.around, client={"max_retries": 0})
    with pytest.raises(Overloaded, match="the queue is full") as err:
        client.upload_adapter("sentiment", data=files["sentiment"])
    assert err.value.status_code == 429
    assert client.upload_adapter("sentiment", data=files["sentiment"]).created is True
    assert [status for _, _, status in gate.seen] == [429, 0]

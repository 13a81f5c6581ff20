"""A fake lpt-serve server on httpx.MockTransport, and clients wired to it.

Tests reach the helpers through the `server` fixture (`server.reply`, `server.ADAPTER`, ...)
rather than importing this file, so they work under any pytest import mode.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

Responder = Callable[[httpx.Request], httpx.Response]

API_KEY = "api-secret"
ADMIN_KEY = "admin-secret"

ADAPTER = {
    "name": "sentiment",
    "version": "ab" * 32,
    "labels": ["negative", "positive"],
    "layer": 3,
    "prompt_length": 5,
    "size_bytes": 1_234_567,
    "resident": True,
}


def reply(
    status: int = 200,
    json_body: Any = None,
    *,
    text: str | None = None,
    headers: dict[str, str] | None = None,
) -> Responder:
    """A responder building a fresh response each time it is called."""

    def respond(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        if json_body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=json_body, headers=headers)

    return respond


def fail_with(error: type[httpx.RequestError]) -> Responder:
    """A responder that fails like a network problem."""

    def respond(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return respond


def classify_answer(request: httpx.Request) -> httpx.Response:
    """Answer /v1/classify like the server: one list per input, one item per task."""
    body = json.loads(request.content)
    tasks = [body["task"]] if "task" in body else body["tasks"]
    results = []
    for text in body["inputs"]:
        label = "positive" if "good" in str(text) else "negative"
        items = []
        for task in tasks:
            item: dict[str, Any] = {"task": task, "label": label, "score": 0.75}
            if body.get("raw_scores"):
                item["scores"] = {"negative": 0.25, "positive": 0.75}
            items.append(item)
        results.append(items)
    return httpx.Response(200, json={"results": results})


class FakeServer:
    """Routes (method, path) to queued responders and records every request.

    Each route answers with its responders in turn; the last one repeats.
    """

    API_KEY = API_KEY
    ADMIN_KEY = ADMIN_KEY
    ADAPTER = ADAPTER
    reply = staticmethod(reply)
    fail_with = staticmethod(fail_with)

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], list[Responder]] = {}
        self.on("POST", "/v1/classify", classify_answer)
        self.on("GET", "/v1/adapters", reply(200, {"adapters": [ADAPTER]}))
        self.on("GET", "/v1/adapters/sentiment", reply(200, ADAPTER))
        self.on("PUT", "/v1/adapters/sentiment", reply(201, ADAPTER))
        self.on("DELETE", "/v1/adapters/sentiment", reply(204))
        self.on("GET", "/health", reply(200, {"status": "ok"}))
        self.on("GET", "/ready", reply(200, {"status": "ready"}))
        self.on("GET", "/info", reply(200, {"model": "minilm", "max_inputs": 64}))

    def on(self, method: str, path: str, *responders: Responder) -> None:
        """Replace the route's answers with `responders`, given in order."""
        self.routes[(method, path)] = list(responders)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404, json={"error": {"type": "not_found", "message": "no route"}})
        responder = queue.pop(0) if len(queue) > 1 else queue[0]
        return responder(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LPT_* settings leak in from the machine running the tests."""
    for name in ("LPT_URL", "LPT_API_KEY", "LPT_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(server: FakeServer) -> Iterator[Any]:
    from lpt_client import Client

    with Client(
        "http://lpt.test",
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        backoff_s=0,
        transport=server.transport,
    ) as c:
        yield c

"""Retries: 429/503 and connection failures are retried, boundedly, with backoff."""

from __future__ import annotations

import email.utils
import random
import time

import httpx
import pytest

from lpt_client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    NotFound,
    Overloaded,
    RetryPolicy,
    ServerError,
    Timeout,
    Unavailable,
)
from lpt_client._retry import parse_retry_after

pytestmark = pytest.mark.unit

RESULT = {"results": [[{"task": "sentiment", "label": "positive", "score": 0.9}]]}


def make_client(server, **kwargs) -> tuple[Client, list[float]]:
    """A client on the fake server whose sleeps are recorded instead of slept."""
    kwargs.setdefault("backoff_s", 0.1)
    client = Client("http://lpt.test", transport=server.transport, **kwargs)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, sleeps


def busy(status: int, server, **headers: str):
    body = {"error": {"type": "busy", "message": "try later"}}
    return server.reply(status, body, headers=headers)


@pytest.mark.parametrize("status", [429, 503])
def test_retries_then_succeeds(server, status: int) -> None:
    server.on("POST", "/v1/classify", busy(status, server), server.reply(200, RESULT))
    client, sleeps = make_client(server)
    [[result]] = client.classify("hi", task="sentiment")
    assert result.label == "positive"
    assert len(server.requests) == 2
    assert len(sleeps) == 1 and 0.05 <= sleeps[0] <= 0.1
    assert server.requests[0].content == server.requests[1].content


@pytest.mark.parametrize(("status", "error"), [(429, Overloaded), (503, Unavailable)])
def test_gives_up_after_max_retries(server, status: int, error: type) -> None:
    server.on("POST", "/v1/classify", busy(status, server))
    client, sleeps = make_client(server, max_retries=2)
    with pytest.raises(error) as caught:
        client.classify("hi", task="sentiment")
    assert len(server.requests) == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.99  # backoff doubles (with jitter)
    assert (caught.value.status_code, caught.value.type) == (status, "busy")
    assert caught.value.message == "try later"


def test_honours_retry_after(server) -> None:
    server.on("POST", "/v1/classify", busy(429, server, **{"Retry-After": "7"}),
              server.reply(200, RESULT))
    client, sleeps = make_client(server)
    client.classify("hi", task="sentiment")
    assert len(sleeps) == 1 and 7.0 <= sleeps[0] <= 7.0 * 1.25


def test_clients_turned_away_together_do_not_come_back_together(server) -> None:
    """The server says Retry-After: 1 to every client a full queue turns away: waiting exactly
    that long brought them all back at the same instant, three times, whatever the backoff."""
    waits = []
    for seed in range(8):
        server.on("POST", "/v1/classify", busy(429, server, **{"Retry-After": "1"}))
        client, sleeps = make_client(server, retry=RetryPolicy(max_retries=3, backoff_s=1.0,
                                                               rng=random.Random(seed)))
        with pytest.raises(Overloaded):
            client.classify("hi", task="sentiment")
        assert all(s >= 1.0 for s in sleeps) and sleeps[2] >= 2.0, sleeps   # a floor; backoff still grows
        waits.append(tuple(sleeps))
    assert len({w[0] for w in waits}) == 8                                  # spread, not in lockstep


def test_requests_not_safe_to_repeat_are_resent_only_if_never_sent(server) -> None:
    """A lost answer to POST /v1/train (the connection dropped after the server read it) was
    retried, and the server ran two jobs; a DELETE resent after its answer was lost got a 404."""
    job = {"id": "j1", "task": "t", "state": "queued", "created_at": 0.0}
    for error in (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        server.requests.clear()
        server.on("POST", "/v1/train", server.fail_with(error), server.reply(202, job))
        client, _ = make_client(server)
        with pytest.raises(ConnectionFailed):
            client.train("t", ("train.csv", b"text,label\\na,b\\n"))
        assert len(server.requests) == 1, error
        server.on("DELETE", "/v1/train/j1", server.fail_with(error), server.reply(409, {}))
        with pytest.raises(ConnectionFailed):
            client.cancel_training("j1")
    for error in (httpx.ConnectError, httpx.ConnectTimeout):     # never reached the server: resent
        server.requests.clear()
        server.on("POST", "/v1/train", server.fail_with(error), server.reply(202, job))
        client, _ = make_client(server)
        assert client.train("t", ("train.csv", b"x")).id == "j1" and len(server.requests) == 2
    server.on("POST", "/v1/train", busy(429, server), server.reply(202, job))    # refused before acting
    assert client.train("t", ("train.csv", b"x")).id == "j1"
    server.on("DELETE", "/v1/adapters/sentiment", server.fail_with(httpx.RemoteProtocolError),
              server.reply(404, {"error": {"type": "not_found", "message": "no adapter named 'sentiment'"}}))
    assert client.delete_adapter("sentiment") is None          # the lost attempt deleted it
    server.on("DELETE", "/v1/adapters/sentiment",
              server.reply(404, {"error": {"type": "not_found", "message": "no adapter named 'sentiment'"}}))
    with pytest.raises(NotFound):                              # a first attempt's 404 stays one
        client.delete_adapter("sentiment")


def test_errors_made_on_this_side_are_not_retried(server) -> None:
    for error in (httpx.UnsupportedProtocol, httpx.LocalProtocolError):
        server.requests.clear()
        server.on("GET", "/v1/adapters", server.fail_with(error))
        client, sleeps = make_client(server)
        with pytest.raises(ConnectionFailed):
            client.list_adapters()
        assert len(server.requests) == 1 and sleeps == [], error


def test_retry_after_is_capped(server) -> None:
    server.on("POST", "/v1/classify", busy(503, server, **{"Retry-After": "3600"}),
              server.reply(200, RESULT))
    client, sleeps = make_client(server, retry=RetryPolicy(max_backoff_s=5.0))
    client.classify("hi", task="sentiment")
    assert sleeps == [5.0]


def test_zero_retries_fails_at_once(server) -> None:
    server.on("POST", "/v1/classify", busy(503, server))
    client, sleeps = make_client(server, max_retries=0)
    with pytest.raises(Unavailable):
        client.classify("hi", task="sentiment")
    assert len(server.requests) == 1 and sleeps == []


def test_server_error_is_not_retried(server) -> None:
    server.on("POST", "/v1/classify", server.reply(500, {"error": {"type": "bug", "message": "x"}}))
    client, sleeps = make_client(server)
    with pytest.raises(ServerError):
        client.classify("hi", task="sentiment")
    assert len(server.requests) == 1


def test_connection_errors_are_retried(server) -> None:
    server.on("POST", "/v1/classify", server.fail_with(httpx.ConnectError),
              server.fail_with(httpx.RemoteProtocolError), server.reply(200, RESULT))
    client, sleeps = make_client(server)
    assert client.classify("hi", task="sentiment")[0][0].label == "positive"
    assert len(server.requests) == 3 and len(sleeps) == 2


def test_connection_failure_surfaces_after_retries(server) -> None:
    server.on("GET", "/v1/adapters", server.fail_with(httpx.ConnectError))
    client, _ = make_client(server, max_retries=1)
    with pytest.raises(ConnectionFailed) as caught:
        client.list_adapters()
    assert len(server.requests) == 2
    assert caught.value.status_code is None
    assert "http://lpt.test/v1/adapters" in caught.value.message


def test_read_timeout_is_not_retried(server) -> None:
    server.on("POST", "/v1/classify", server.fail_with(httpx.ReadTimeout))
    client, sleeps = make_client(server)
    with pytest.raises(Timeout) as caught:
        client.classify("hi", task="sentiment")
    assert len(server.requests) == 1 and sleeps == []
    assert caught.value.status_code is None and caught.value.type == "client_timeout"


def test_uploads_are_retried(server) -> None:
    server.on("PUT", "/v1/adapters/sentiment", busy(503, server), server.reply(201, server.ADAPTER))
    client, _ = make_client(server)
    assert client.upload_adapter("sentiment", data=b"weights").created
    assert [r.content for r in server.requests] == [b"weights", b"weights"]


def test_probes_are_not_retried(server) -> None:
    server.on("GET", "/ready", busy(503, server))
    server.on("GET", "/health", server.fail_with(httpx.ConnectError))
    client, sleeps = make_client(server)
    assert not client.ready()
    with pytest.raises(ConnectionFailed):
        client.health()
    assert len(server.requests) == 2 and sleeps == []


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_async_retries_then_succeeds(server, status: int) -> None:
    server.on("POST", "/v1/classify", busy(status, server, **{"Retry-After": "1"}),
              server.reply(200, RESULT))
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    async with AsyncClient("http://lpt.test", transport=server.transport) as client:
        client._sleep = record
        results = await client.classify("hi", task="sentiment")
    assert results[0][0].label == "positive"
    assert len(server.requests) == 2 and len(sleeps) == 1 and 1.0 <= sleeps[0] <= 1.25


@pytest.mark.asyncio
async def test_async_gives_up_after_max_retries(server) -> None:
    server.on("POST", "/v1/classify", busy(503, server))
    async with AsyncClient(
        "http://lpt.test", transport=server.transport, max_retries=2, backoff_s=0
    ) as client:
        with pytest.raises(Unavailable):
            await client.classify("hi", task="sentiment")
    assert len(server.requests) == 3


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    policy = RetryPolicy(max_retries=10, backoff_s=1.0, max_backoff_s=5.0, rng=random.Random(0))
    delays = [policy.delay_for_status(n, 503, None) for n in range(5)]
    for n, delay in enumerate(delays):
        base = min(2.0**n, 5.0)
        assert delay is not None and base / 2 <= delay <= base
    assert policy.delay_for_status(10, 503, None) is None
    assert policy.delay_for_status(0, 500, None) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("later") is None
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after(future) <= 61


def test_retry_policy_rejects_negative_bounds() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)

"""Server errors surface as typed exceptions carrying the server's type and message."""

from __future__ import annotations

import pickle

import httpx
import pytest

from lpt_client import (
    AuthError,
    BadRequest,
    Client,
    Forbidden,
    LptError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
)
from lpt_client.errors import error_from_response

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (405, BadRequest),
        (413, PayloadTooLarge),
        (422, BadRequest),
        (429, Overloaded),
        (500, ServerError),
        (502, ServerError),
        (503, Unavailable),
        (504, Timeout),
    ],
)
def test_status_maps_to_exception_class(status: int, cls: type[LptError]) -> None:
    body = {"error": {"type": "some_type", "message": "some message"}}
    error = error_from_response(httpx.Response(status, json=body))
    assert type(error) is cls
    assert (error.status_code, error.type, error.message) == (status, "some_type", "some message")
    assert str(error) == f"{status} some_type: some message"


def test_hierarchy_groups_related_errors() -> None:
    assert issubclass(PayloadTooLarge, BadRequest)
    assert issubclass(Unauthorized, AuthError) and issubclass(Forbidden, AuthError)
    assert issubclass(Unavailable, ServerError) and issubclass(Timeout, ServerError)
    assert all(issubclass(c, LptError) for c in (BadRequest, AuthError, NotFound, Overloaded))


@pytest.mark.parametrize(
    ("response", "type_", "message"),
    [
        (httpx.Response(422, json={"detail": "inputs: field required"}), "unprocessable_entity",
         "inputs: field required"),
        (httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "bad"}]}),
         "unprocessable_entity", '[{"loc": ["body"], "msg": "bad"}]'),
        (httpx.Response(502, text="<html>502 Bad Gateway</html>"), "bad_gateway",
         "<html>502 Bad Gateway</html>"),
        (httpx.Response(503), "service_unavailable", "Service Unavailable"),
        (httpx.Response(400, json={"error": "plain string"}), "bad_request", "plain string"),
        (httpx.Response(400, json={"error": {"message": "no type"}}), "bad_request", "no type"),
        (httpx.Response(400, json=["odd"]), "bad_request", '["odd"]'),
        (httpx.Response(599, text=""), "http_599", ""),
    ],
)
def test_odd_error_bodies_fall_back_gracefully(
    response: httpx.Response, type_: str, message: str
) -> None:
    error = error_from_response(response)
    assert (error.type, error.message) == (type_, message)


def test_long_raw_bodies_are_truncated() -> None:
    error = error_from_response(httpx.Response(500, text="x" * 10_000))
    assert len(error.message) == 500


def test_errors_pickle() -> None:
    error = NotFound(404, "not_found", "no adapter named 'x'")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.status_code, copy.type, copy.message) == (
        NotFound, 404, "not_found", "no adapter named 'x'"
    )


def test_client_raises_typed_error_with_server_type_and_message(client: Client, server) -> None:
    body = {"error": {"type": "unknown_task", "message": "no adapter named 'sarcasm'"}}
    server.on("POST", "/v1/classify", server.reply(404, body))
    with pytest.raises(NotFound) as caught:
        client.classify("hi", task="sarcasm")
    assert caught.value.type == "unknown_task"
    assert caught.value.message == "no adapter named 'sarcasm'"
    assert caught.value.response is not None and caught.value.response.status_code == 404


def test_unexpected_success_body_is_an_error(client: Client, server) -> None:
    server.on("POST", "/v1/classify", server.reply(200, {"answers": []}))
    with pytest.raises(LptError) as caught:
        client.classify("hi", task="t")
    assert caught.value.type == "invalid_response"
    server.on("GET", "/v1/adapters/sentiment", server.reply(200, text="not json"))
    with pytest.raises(LptError, match="invalid_response"):
        client.get_adapter("sentiment")


def test_a_server_failure_names_the_request_to_look_up_in_the_servers_log(client: Client, server) -> None:
    body = {"error": {"type": "internal_error", "message": "internal error (RuntimeError); see the server log"}}
    server.on("POST", "/v1/classify", server.reply(500, body, headers={"X-Request-ID": "req-42"}))
    with pytest.raises(ServerError) as caught:
        client.classify("hi", task="t")
    assert caught.value.request_id == "req-42"
    assert str(caught.value).endswith("see the server log (request req-42)")
    server.on("POST", "/v1/classify", server.reply(404, {"error": {"type": "not_found", "message": "no task"}},
                                                  headers={"X-Request-ID": "req-43"}))
    with pytest.raises(NotFound) as caught:
        client.classify("hi", task="t")
    assert caught.value.request_id == "req-43" and str(caught.value) == "404 not_found: no task"   # the fix is the message

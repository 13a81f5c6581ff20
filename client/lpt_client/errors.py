"""Exceptions raised by the client, one class per kind of failure.

Every error is an `LptError` carrying the HTTP status (None when no response came back), the
server's error `type` and its `message`, parsed from the server's
`{"error": {"type": ..., "message": ...}}` body, or made from whatever else came back (a
FastAPI `{"detail": ...}`, a proxy's HTML page).

    LptError
    |-- BadRequest          400, 422 and any other unlisted 4xx; a redirect (3xx, not followed)
    |   |-- PayloadTooLarge 413
    |   `-- Conflict        409
    |-- AuthError
    |   |-- Unauthorized    401
    |   `-- Forbidden       403
    |-- NotFound            404
    |-- Overloaded          429
    |-- ServerError         5xx
    |   |-- Unavailable     503
    |   `-- Timeout         504, and a client-side timeout (status_code None)
    `-- ConnectionFailed    no response at all
"""

from __future__ import annotations

import json
from typing import Any

import httpx

_MAX_RAW_MESSAGE = 500  # characters of a non-JSON body kept in the message


class LptError(Exception):
    """Base class of every error the client raises."""

    def __init__(
        self,
        status_code: int | None,
        type: str,  # noqa: A002 - the field is called "type" in the API
        message: str,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(status_code, type, message)
        self.status_code = status_code
        self.type = type
        self.message = message
        self.response = response

    @property
    def request_id(self) -> str | None:
        """The server's id for the request (its `X-Request-ID`): its log lines end with it."""
        return self.response.headers.get("x-request-id") if self.response is not None else None

    def __str__(self) -> str:
        status = f"{self.status_code} " if self.status_code is not None else ""
        # a server failure is looked up in the server's log: say which request it was
        tag = f" (request {self.request_id})" if self.request_id and (self.status_code or 0) >= 500 else ""
        return f"{status}{self.type}: {self.message}{tag}"


class BadRequest(LptError):
    """The server refused the request as malformed or invalid (400, 422, other 4xx)."""


class PayloadTooLarge(BadRequest):
    """Too many inputs, inputs too long, or an adapter file over the size limit (413)."""


class Conflict(BadRequest):
    """The request conflicts with the resource's state (409): e.g. cancelling a job that has ended."""


class AuthError(LptError):
    """Missing, wrong or insufficient credentials."""


class Unauthorized(AuthError):
    """No key or a wrong key (401)."""


class Forbidden(AuthError):
    """Not allowed (403): a wrong admin key, or adapter writes disabled on the server.

    A request with no key at all where one is needed is `Unauthorized` (401).
    """


class NotFound(LptError):
    """Unknown task or adapter (404)."""


class Overloaded(LptError):
    """The server's queue is full (429); retried automatically before it is raised."""


class ServerError(LptError):
    """The server failed (5xx)."""


class Unavailable(ServerError):
    """The server is not ready or its worker is unhealthy (503); retried before it is raised."""


class Timeout(ServerError):
    """The request ran past its deadline: on the server (504) or in the client (no status)."""


class ConnectionFailed(LptError):
    """No response: the server could not be reached or dropped the connection."""


_BY_STATUS: dict[int, type[LptError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: BadRequest,
    429: Overloaded,
    503: Unavailable,
    504: Timeout,
}


def error_class(status_code: int) -> type[LptError]:
    """The exception class for an HTTP error status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else BadRequest


def error_from_response(response: httpx.Response) -> LptError:
    """Build the typed exception for an error response, never failing on an odd body."""
    if response.is_redirect:  # not followed: a POST's body must not be replayed elsewhere unasked
        where = response.headers.get("Location", "(no Location header)")
        message = (f"the server redirects to {where}: the client does not follow redirects; "
                   "set the URL (LPT_URL, --url) to where it points")
        return BadRequest(response.status_code, "redirect", message, response)
    error_type, message = _parse_error_body(response)
    return error_class(response.status_code)(response.status_code, error_type, message, response)


def _parse_error_body(response: httpx.Response) -> tuple[str, str]:
    default_type = _snake(response.reason_phrase) or f"http_{response.status_code}"
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        text = response.text.strip()
        return default_type, text[:_MAX_RAW_MESSAGE] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return (
                str(error.get("type") or default_type),
                str(error.get("message") or response.reason_phrase),
            )
        if isinstance(error, str):
            return default_type, error
        if "detail" in body:  # FastAPI's default shape
            detail = body["detail"]
            return default_type, detail if isinstance(detail, str) else json.dumps(detail)
    return default_type, json.dumps(body)[:_MAX_RAW_MESSAGE]


def _snake(phrase: str) -> str:
    return "_".join(phrase.lower().replace("-", " ").split())

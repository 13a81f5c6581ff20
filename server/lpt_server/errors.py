"""Every error becomes HTTP here, and only here.

Body: `{"error": {"type": ..., "message": ...}}` (an invalid adapter adds `"problems": [...]`).
Other modules raise their own exceptions (the batcher's QueueFull, the registry's
UnknownAdapter, lpt's AdapterError, ...) or an ApiError; `describe` maps each to a status.
A 500 is a bug: it is logged with its traceback and the client sees only its type.
"""
from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lpt import AdapterError, RowError

from .batcher import BatcherClosed, QueueFull
from .registry import UnknownAdapter
from .runtime import NotStarted
from .schemas import TOO_MANY
from .store_layout import InvalidName, StoreFull
from .stores import StoreConflict, StoreUnavailable
from .texts import InputTooLong
from .train_form import FormError
from .train_jobs import JobFinished, TrainQueueFull, UnknownJob
from .upload import UploadError
from .worker import BatchFailed, WorkerDead

log = logging.getLogger("lpt_server.errors")


class ApiError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(ApiError):
    status, type = 400, "bad_request"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, type = 403, "forbidden"


class WritesDisabled(Forbidden):
    """The server was started without an admin key: no key the client sends would help."""

    type = "writes_disabled"


class NotFound(ApiError):
    status, type = 404, "not_found"


class Unprocessable(ApiError):
    status, type = 422, "validation_error"


class ClientClosed(ApiError):
    """The client went away before its answer (nginx's 499); nobody reads this response."""

    status, type = 499, "client_closed_request"


class PayloadTooLarge(ApiError):
    status, type = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, type = 415, "unsupported_media_type"


class Overloaded(ApiError):
    status, type = 429, "overloaded"


class Unavailable(ApiError):
    status, type = 503, "unavailable"


class RequestTimeout(ApiError):
    status, type = 408, "request_timeout"

    def __init__(self, message: str):
        super().__init__(message, {"Connection": "close"})


class GatewayTimeout(ApiError):
    status, type = 504, "timeout"


_STATUS_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 408: "request_timeout", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "validation_error", 429: "overloaded",
                 503: "unavailable", 504: "timeout"}

# The one table: exception type -> (HTTP status, error type). The first matching row wins, so
# subclasses come before their bases. ApiError and Starlette's HTTPException carry their own
# status and are handled in `describe`; everything not listed here is a bug (500, logged).
ERROR_TABLE: list[tuple[type[BaseException], int, str]] = [
    (UnknownAdapter, 404, "not_found"),
    (UnknownJob, 404, "not_found"),
    (JobFinished, 409, "conflict"),
    (TrainQueueFull, 429, "overloaded"),
    (FormError, 400, "bad_request"),
    (UploadError, 400, "bad_request"),
    (InputTooLong, 413, "payload_too_large"),
    (InvalidName, 400, "invalid_name"),
    (AdapterError, 400, "invalid_adapter"),
    (RowError, 400, "invalid_input"),
    (QueueFull, 429, "overloaded"),
    (BatchFailed, 500, "engine_error"),
    (BatcherClosed, 503, "unavailable"),
    (WorkerDead, 503, "unavailable"),
    (NotStarted, 503, "unavailable"),
    (StoreFull, 507, "insufficient_storage"),
    (StoreUnavailable, 503, "store_unavailable"),
    (StoreConflict, 409, "conflict"),
    (asyncio.TimeoutError, 504, "timeout"),
    (ClientDisconnect, 499, "client_closed_request"),   # gone while its body was read: nobody to answer
]

# How a row's exception is worded for the client, where str(exc) alone would not say enough.
_MESSAGES = {
    AdapterError: lambda e: "invalid adapter file: " + "; ".join(e.problems),
    RowError: lambda e: f"an input cannot be classified: {e}",
    BatchFailed: lambda e: f"{e} (logged on the server; other requests are unaffected)",
    asyncio.TimeoutError: lambda e: "the request was not answered in time",
}
# Statuses a client should retry after a pause: they say when.
RETRY_AFTER_S = {429: "1", 503: "2"}


def describe(exc: BaseException) -> tuple[int, str, str, dict]:
    """exception -> (status, type, message, extra body fields)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.type, exc.message, {}
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, _STATUS_TYPES.get(exc.status_code, "http_error"), str(exc.detail), {}
    if isinstance(exc, RequestValidationError):
        return *validation_message(exc), {}
    for cls, status, typ in ERROR_TABLE:
        if isinstance(exc, cls):
            message = _MESSAGES.get(cls, str)(exc)
            extra = {"problems": exc.problems} if isinstance(exc, AdapterError) else {}
            return status, typ, message, extra
    return 500, "internal_error", f"internal error ({type(exc).__name__}); this is a bug, see the server log", {}


def status_of(exc: BaseException) -> int:
    return describe(exc)[0]


def error_response(exc: BaseException) -> JSONResponse:
    status, typ, message, extra = describe(exc)
    headers = dict(getattr(exc, "headers", None) or {})
    if status in RETRY_AFTER_S:
        headers.setdefault("Retry-After", RETRY_AFTER_S[status])
    return JSONResponse({"error": {"type": typ, "message": message, **extra}}, status_code=status,
                        headers=headers or None)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
BODY_SHAPE = ('{"inputs": "text" | ["text", ...] | [["text", "text_pair"], ...], '
              '"task": "name" (or "tasks": ["a", "b"]), "raw_scores": false, "truncate": true (optional)}')
FIELD_HINTS = {
    ("inputs",): "must be a string, a list of strings, or a list of [text, text_pair] pairs",
    ("inputs", 0): "each input must be a string or a [text, text_pair] list of two strings",
    ("task",): "must be one task name (a string)",
    ("tasks",): "must be a list of task names (strings)",
    ("raw_scores",): "must be true or false",
    ("truncate",): "must be true or false (or absent: the server's LPT_TRUNCATE)",
}


def _clean_loc(loc: tuple) -> tuple:
    """('body', 'inputs', 'list[union[...]]', 0, 'str') -> ('inputs', 0): drop union branch tags."""
    return tuple(p for p in loc[1:] if isinstance(p, int) or (p not in _TYPE_TAGS and "[" not in p
                                                             and not p.startswith("function-")))


def _show_loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "body"


def _shown(value) -> str:
    r = repr(value)
    return r if len(r) <= 60 else type(value).__name__


def _too_many(loc: tuple, count: int, limit: int) -> str:
    if loc == ("tasks",):
        return f"{count} tasks in one request, more than the queue holds ({limit}, LPT_QUEUE_LIMIT): split the request"
    return f"{count} inputs in one request, the limit is {limit} (LPT_MAX_INPUTS): split the request"


def validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    """Pydantic's errors as one message that says what to fix."""
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            return 400, "invalid_json", f"the request body is not valid JSON ({detail}): send a JSON object {BODY_SHAPE}"
    for e in errors:
        if e.get("type") == TOO_MANY:           # a list past the server's bound (schemas.py): 413
            return 413, PayloadTooLarge.type, _too_many(_clean_loc(tuple(e.get("loc", ()))), **e["ctx"])
    found: dict[tuple, str] = {}
    for e in errors:
        loc, typ = _clean_loc(tuple(e.get("loc", ()))), e.get("type")
        if not loc and typ in ("model_attributes_type", "model_type", "dict_type", "missing"):
            hint = " with Content-Type: application/json" if isinstance(e.get("input"), bytes) else ""
            found[loc] = f"the body must be a JSON object{hint}: {BODY_SHAPE}"
        elif typ == "too_short" and loc == ("inputs",):     # wins over the other branch's complaint
            found[loc] = "inputs is an empty list: send at least one text"
        elif typ == "missing":
            found.setdefault(loc, f"{_show_loc(loc)}: field required")
        elif typ == "extra_forbidden":
            found.setdefault(loc, f"{_show_loc(loc)}: unknown field (check the spelling; the body is {BODY_SHAPE})")
        elif typ == "value_error":
            msg = str((e.get("ctx") or {}).get("error", e.get("msg", "")))
            found.setdefault(loc, msg if not loc else f"{_show_loc(loc)}: {msg}")
        else:
            key = tuple(0 if isinstance(p, int) else p for p in loc)
            hint = FIELD_HINTS.get(key, e.get("msg", "invalid"))
            found.setdefault(loc, f"{_show_loc(loc)}: {hint} (got {_shown(e.get('input'))})")
    # a union reports each of its branches: keep the most specific location of each problem
    # (one that is no other's prefix; a set of prefixes, so that many errors cost linear time)
    prefixes = {loc[:i] for loc in found for i in range(len(loc))}
    locs = [loc for loc in found if loc not in prefixes]
    parts = [found[loc] for loc in locs]
    if len(parts) > 6:
        parts = parts[:6] + [f"... and {len(parts) - 6} more"]
    return 422, "validation_error", "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:      # Starlette's Allow names only the first route that matched the path
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(app, request.scope))}
        return error_response(exc)

    async def _known(request: Request, exc: Exception):
        return error_response(exc)

    # Known exceptions get their own handlers (Starlette's ExceptionMiddleware answers them);
    # everything else reaches the catch-all middleware below.
    for cls in (ApiError, *(row[0] for row in ERROR_TABLE)):
        app.add_exception_handler(cls, _known)

    app.add_middleware(CatchAll)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(app: FastAPI, scope) -> list[str]:
    """Every method some route serves at this path (asked of the routes themselves, so that
    nested routers count too)."""
    from starlette.routing import Match

    return [m for m in _METHODS
            if any(r.matches({**scope, "method": m})[0] == Match.FULL for r in app.router.routes)]


class CatchAll:
    """Turns an unhandled exception (a bug) into a logged 500 JSON answer.

    Not Starlette's `exception_handler(Exception)`: that one answers and then re-raises, and
    uvicorn closes a connection whose app raised, so a client's next request on the same
    kept-alive connection would fail. Here the answer is complete and the connection lives on.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when a graceful shutdown's drain time ends;
            # its own answer would be a plain-text 500. Answer a 503 the client retries elsewhere.
            if started:
                raise
            log.warning("%s %s cancelled: the server stopped before it was answered",
                        scope.get("method"), scope.get("path"))
            await error_response(Unavailable("the server stopped before this request was answered: "
                                              "retry (another replica, or this one once it is back)"))(
                scope, receive, send)
        except Exception as exc:
            log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:        # half an answer went out: only closing the connection is honest
                raise
            await error_response(exc)(scope, receive, send)

"""Each request's id, in its answer and in every log line made while it is handled.

The id is the caller's `X-Request-ID` when it is a sane token (nginx in front sends its
`$request_id`, and logs it as `rid=`), else a new one. It comes back in the response's
`X-Request-ID` and is attached to each log record made while the request is handled (uvicorn's
access line, a 500's traceback), so one id finds a request in the load balancer's log and in the
log of the replica that served it.
"""
from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("lpt_request_id", default=None)
HEADER = b"x-request-id"
# what is echoed into a header and a log line: no spaces, quotes or control characters
_SANE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")


def _incoming(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == HEADER:
            return value.decode("ascii") if _SANE.fullmatch(value) else None
    return None


class RequestIdMiddleware:
    """ASGI middleware: sets REQUEST_ID for the request's handling and answers with the header."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _incoming(scope) or uuid.uuid4().hex
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to a record made while a request is handled (a log handler's filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True

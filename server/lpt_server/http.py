"""The HTTP protocol uvicorn runs, with a deadline on request headers.

uvicorn bounds the idle time between requests (its keep-alive timeout) but neither a new
connection that sends nothing nor one that sends its headers a byte at a time: such clients
each hold a connection forever. Here a request's headers must be complete within
`header_timeout_s` of the connection opening (or of its first byte after a previous answer);
if not, the client gets a 408 and the connection is closed. Bodies are bounded where they are
read (body.py), since the app reads them.

    config = uvicorn.Config(app, http=protocol_class(header_timeout_s=10.0), ...)
"""
from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("lpt_server.http")


def _base_protocol() -> type:
    """The protocol uvicorn's "auto" would pick: httptools when installed, else h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        return H11Protocol


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps({"error": {"type": "request_timeout", "message":
                       f"the request headers did not arrive within {seconds:g} s (LPT_HEADER_TIMEOUT_S)"}}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def protocol_class(header_timeout_s: float) -> type:
    base = _base_protocol()

    class HeaderDeadlineProtocol(base):
        # Both uvicorn protocols set `self.cycle` to a new request cycle once a request's headers
        # are parsed: the deadline is met when `cycle` is no longer the one seen when it started.
        _deadline: asyncio.TimerHandle | None = None
        _cycle_at_start = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_deadline()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._start_deadline()        # the first byte of the next request on this connection
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._cycle_at_start:
                self._stop_deadline()         # headers complete

        def connection_lost(self, exc) -> None:
            self._stop_deadline()
            super().connection_lost(exc)

        def _start_deadline(self) -> None:
            self._cycle_at_start = self.cycle
            self._deadline = self.loop.call_later(header_timeout_s, self._on_deadline)

        def _stop_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _on_deadline(self) -> None:
            self._deadline = None
            if self.cycle is not self._cycle_at_start or self.transport.is_closing():
                return
            log.info("closing a connection from %s: request headers not complete within %g s",
                     "%s:%s" % self.client if self.client else "?", header_timeout_s)
            self.transport.write(_timeout_response(header_timeout_s))
            self.transport.close()

    return HeaderDeadlineProtocol

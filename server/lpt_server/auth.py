"""Bearer keys: LPT_API_KEY guards inference and reads, LPT_ADMIN_KEY guards adapter writes.

The admin key also works wherever the API key does. Keys are compared in constant time.
The checks are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool,
a thread hand-off per request for a few microseconds of work.
"""
from __future__ import annotations

import hmac

from fastapi import Request

from .errors import Forbidden, Unauthorized


def _bearer(request: Request) -> str | None:
    h = request.headers.get("authorization")
    if not h:
        return None
    scheme, _, token = h.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


async def require_api_key(request: Request) -> None:
    """Inference and reads: open unless LPT_API_KEY is set."""
    s = request.app.state.runtime.settings
    if not s.api_key:
        return
    token = _bearer(request)
    if token is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <LPT_API_KEY>'")
    if not (_same(token, s.api_key) or (s.admin_key and _same(token, s.admin_key))):
        raise Unauthorized("invalid API key")


async def require_admin_key(request: Request) -> None:
    """Adapter writes: refused unless LPT_ADMIN_KEY is set, then only with that key."""
    s = request.app.state.runtime.settings
    if not s.admin_key:
        raise Forbidden("adapter writes are disabled: set LPT_ADMIN_KEY")
    token = _bearer(request)
    if token is None:
        raise Unauthorized("missing admin key: send 'Authorization: Bearer <LPT_ADMIN_KEY>'")
    if not _same(token, s.admin_key):
        raise Forbidden("wrong admin key: adapter writes need LPT_ADMIN_KEY")

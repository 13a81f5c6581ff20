"""Bearer keys: LPT_API_KEY guards inference and reads, LPT_ADMIN_KEY guards adapter writes.

The admin key also works wherever the API key does. Keys are compared in constant time.
The checks are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool,
a thread hand-off per request for a few microseconds of work.
"""
from __future__ import annotations

import hmac

from fastapi import Request

from .errors import Forbidden, Unauthorized, WritesDisabled


def _bearer(request: Request, kind: str, key_name: str) -> str:
    """The token of `Authorization: Bearer <token>`; Unauthorized naming what is wrong."""
    h = request.headers.get("authorization")
    if not h or not h.strip():
        raise Unauthorized(f"missing {kind} key: send the header 'Authorization: Bearer <{key_name}>'")
    scheme, _, token = h.strip().partition(" ")
    if scheme.lower() != "bearer":
        # never echo the header: it may be the key itself
        raise Unauthorized(f"the Authorization header needs the Bearer scheme: send 'Authorization: Bearer <{key_name}>'")
    if not token.strip():
        raise Unauthorized(f"the Authorization header has 'Bearer' but no key: send 'Bearer <{key_name}>'")
    return token.strip()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


async def require_api_key(request: Request) -> None:
    """Inference and reads: open unless LPT_API_KEY is set."""
    s = request.app.state.runtime.settings
    if not s.api_key:
        return
    token = _bearer(request, "API", "LPT_API_KEY")
    if not (_same(token, s.api_key) or (s.admin_key and _same(token, s.admin_key))):
        raise Unauthorized("invalid API key: send the server's LPT_API_KEY (or LPT_ADMIN_KEY)")


async def require_admin_key(request: Request) -> None:
    """Adapter writes: refused unless LPT_ADMIN_KEY is set, then only with that key."""
    s = request.app.state.runtime.settings
    if not s.admin_key:
        raise WritesDisabled("adapter writes are disabled: start the server with LPT_ADMIN_KEY (or --admin-key) set")
    token = _bearer(request, "admin", "LPT_ADMIN_KEY")
    if not _same(token, s.admin_key):
        raise Forbidden("wrong admin key: adapter writes need the server's LPT_ADMIN_KEY")

"""A request path holding a control character is a 400 before any route sees it.

No adapter name, task name or job id holds one. Without this, Starlette's route pattern
(`^.../(?P<name>.*)$`) lets `$` match before a final newline, so `DELETE /v1/adapters/a%0A`
reached the handler as the name `a` and deleted adapter `a`.
"""
from __future__ import annotations

import re

from .errors import BadRequest, error_response

_CONTROL_CLASS = r"\u0000-\u001f\u007f"     # ECMA (JSON Schema) and Python read the same escapes
_CONTROL = re.compile(f"[{_CONTROL_CLASS}]")
# The rule as a JSON Schema pattern, for path parameters in the OpenAPI schema: what a client may
# send without meeting this guard's 400.
NO_CONTROL_PATTERN = f"^[^{_CONTROL_CLASS}]+$"


class ControlCharacterGuard:
    """ASGI middleware: answers 400 naming the first control character of the decoded path."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            found = _CONTROL.search(scope["path"])
            if found is not None:
                message = (f"the request path holds a control character (%{ord(found.group()):02X} at character "
                           f"{found.start() + 1}); names and ids never do: check how the URL was built")
                return await error_response(BadRequest(message))(scope, receive, send)
        return await self.app(scope, receive, send)

"""Where the client's settings come from: arguments first, then `LPT_*` environment variables.

Settings are checked here, once, so a URL or key that cannot be sent is a `ValueError` naming
where it came from, not a traceback from deep inside httpx at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
# Longer than the server's own request deadline (30 s by default), so a request the server
# gives up on comes back as its 504, which says why, rather than a client-side timeout.
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Settings:
    """Resolved connection settings. Keys are None when not configured."""

    base_url: str
    api_key: str | None
    admin_key: str | None


def resolve_settings(
    base_url: str | None = None,
    api_key: str | None = None,
    admin_key: str | None = None,
    *,
    fallback_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Fill unset arguments from `LPT_URL`, `LPT_API_KEY`, `LPT_ADMIN_KEY`, and check them.

    `fallback_url` (the base URL of an injected httpx client) sits between an explicit
    argument and the environment. Empty strings count as unset.
    """
    env = os.environ if env is None else env
    url = _pick(("base_url (--url)", base_url), ("the http client's base_url", fallback_url),
                ("LPT_URL", env.get("LPT_URL")), ("the default URL", DEFAULT_URL))
    api = _pick(("api_key (--api-key)", api_key), ("LPT_API_KEY", env.get("LPT_API_KEY")))
    admin = _pick(("admin_key (--admin-key)", admin_key), ("LPT_ADMIN_KEY", env.get("LPT_ADMIN_KEY")))
    return Settings(
        base_url=_checked_url(*url).rstrip("/"),  # type: ignore[misc]
        api_key=_checked_key(*api) if api else None,
        admin_key=_checked_key(*admin) if admin else None,
    )


def _pick(*candidates: tuple[str, str | None]) -> tuple[str, str] | None:
    """The first set value, with the name of where it came from."""
    for source, value in candidates:
        if value:
            return source, value
    return None


def _checked_url(source: str, url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ValueError(f"{source} is not a valid URL ({exc}): {url[:100]!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{source} must be an http:// or https:// URL with a host, "
                         f"like {DEFAULT_URL}: got {url[:100]!r}")
    return url


def _checked_key(source: str, key: str) -> str:
    """A key goes in an `Authorization: Bearer` header: visible ASCII only. The key itself is
    never quoted back (it is a secret); the position of the first bad character is."""
    for i, ch in enumerate(key):
        if not "!" <= ch <= "~":
            what = "a space" if ch == " " else f"U+{ord(ch):04X}"
            raise ValueError(f"{source} cannot be sent in an HTTP header: character {i + 1} of "
                             f"{len(key)} is {what} (keys are printable ASCII without spaces)")
    return key

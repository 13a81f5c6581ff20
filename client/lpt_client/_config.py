"""Where the client's settings come from: arguments first, then `LPT_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0


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
    """Fill unset arguments from `LPT_URL`, `LPT_API_KEY`, `LPT_ADMIN_KEY`.

    `fallback_url` (the base URL of an injected httpx client) sits between an explicit
    argument and the environment. Empty strings count as unset.
    """
    env = os.environ if env is None else env
    url = base_url or fallback_url or env.get("LPT_URL") or DEFAULT_URL
    return Settings(
        base_url=url.rstrip("/"),
        api_key=api_key or env.get("LPT_API_KEY") or None,
        admin_key=admin_key or env.get("LPT_ADMIN_KEY") or None,
    )

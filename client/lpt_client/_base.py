"""What the sync and async clients share: settings, retry decisions, error mapping.

The two clients differ only in how they send a request and how they sleep; everything
that decides (which URL, which key, retry or not, which exception) lives here or in `_api`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Union

import httpx

from ._version import __version__
from . import _api
from ._api import Call
from ._config import DEFAULT_TIMEOUT_S, resolve_settings
from ._retry import RetryPolicy
from .errors import ConnectionFailed, LptError, Timeout

USER_AGENT = f"lpt-client/{__version__}"


class ClientCore:
    """Settings and retry logic common to `Client` and `AsyncClient`."""

    def __init__(
        self,
        base_url: str | None,
        *,
        api_key: str | None,
        admin_key: str | None,
        max_retries: int,
        backoff_s: float,
        retry: RetryPolicy | None,
        fallback_url: str | None,
    ) -> None:
        self.settings = resolve_settings(base_url, api_key, admin_key, fallback_url=fallback_url)
        self.retry = retry or RetryPolicy(max_retries=max_retries, backoff_s=backoff_s)

    @property
    def base_url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return self.settings.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _delay_after_response(
        self, call: Call[Any], attempt: int, response: httpx.Response
    ) -> float | None:
        """Seconds to wait before retrying, or None when `response` is the final answer."""
        if not call.retry or response.status_code in call.ok_statuses:
            return None
        retry_after = response.headers.get("Retry-After")
        return self.retry.delay_for_status(attempt, response.status_code, retry_after)

    def _delay_after_error(
        self, call: Call[Any], attempt: int, error: httpx.RequestError
    ) -> float:
        """Seconds to wait before retrying; raises the typed error when giving up."""
        delay = self.retry.delay_for_error(attempt, error, call.repeatable) if call.retry else None
        if delay is None:
            raise request_error(error, self.settings.base_url + call.path) from error
        return delay


def request_error(error: httpx.RequestError, url: str) -> LptError:
    """The typed error for a request that got no response."""
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
        message = f"no response from {url} in time ({type(error).__name__})"
        return Timeout(None, "client_timeout", message)
    reason = str(error) or type(error).__name__
    return ConnectionFailed(None, "connection_failed", f"cannot reach {url}: {reason}")


def http_client_options(timeout: float | httpx.Timeout | None) -> dict[str, Any]:
    """Keyword arguments for an httpx client the lpt client creates (and so owns)."""
    if isinstance(timeout, (int, float)) and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds above 0 (or None for the default), got {timeout!r}")
    return {
        "timeout": DEFAULT_TIMEOUT_S if timeout is None else timeout,
        "headers": {"User-Agent": USER_AGENT},
        "trust_env": True,
    }


def injected_base_url(http_client: httpx.Client | httpx.AsyncClient | None) -> str | None:
    """The base URL configured on a caller's httpx client, if any."""
    if http_client is None:
        return None
    return str(http_client.base_url) or None


TrainFile = Union[str, "os.PathLike[str]", tuple[str, bytes]]


def read_train_file(file: TrainFile | None) -> tuple[str, bytes] | None:
    """A training file as (file name, bytes): from a path (its name tells the server the format),
    or a (name, bytes) pair as given."""
    if file is None or isinstance(file, tuple):
        return file
    with open(file, "rb") as f:
        return os.path.basename(os.fspath(file)), f.read()


def train_call(task: str, data: TrainFile, dev: TrainFile | None, test: TrainFile | None,
               options: dict[str, Any]) -> Call[Any]:
    """`POST /v1/train` with its files read: what both clients' `train` send."""
    return _api.train(task, read_train_file(data), read_train_file(dev), read_train_file(test), options)


class TrainingWait:
    """When `wait_training` polls next and when it gives up: shared by both clients."""

    def __init__(self, job_id: str, poll_s: float, timeout_s: float | None) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        self.job_id, self.poll_s = job_id, poll_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def next_delay(self) -> float:
        """Seconds until the next poll; raises `Timeout` once the deadline has passed."""
        if self.deadline is None:
            return self.poll_s
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout(None, "client_timeout", f"training job {self.job_id} has not finished in time")
        return min(self.poll_s, left)


def read_upload(path: str | os.PathLike[str] | None, data: bytes | None) -> bytes:
    """The adapter bytes to upload, from exactly one of a file path or in-memory data."""
    if data is not None and path is None:
        return bytes(data)
    if path is None or data is not None:
        raise ValueError("pass exactly one of path or data=")
    with open(path, "rb") as f:
        return f.read()

"""The blocking client."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from . import _api
from ._base import ClientCore, http_client_options, injected_base_url, read_upload
from ._retry import RetryPolicy
from .models import AdapterInfo, ClassifyResult, Probe, ServerInfo, UploadResult

T = TypeVar("T")


class Client(ClientCore):
    """A blocking client for an lpt-serve server.

    Settings not passed come from `LPT_URL` (default http://127.0.0.1:8080), `LPT_API_KEY`
    and `LPT_ADMIN_KEY`. Requests answered 429 or 503, and connection failures, are retried
    up to `max_retries` times with exponential backoff and jitter (honouring `Retry-After`).
    Errors are raised as `lpt_client.errors.LptError` subclasses.

    Args:
        base_url: server URL, e.g. "http://127.0.0.1:8080".
        api_key: Bearer key for inference and reads; without one, the admin key (which the
            server also takes there) is sent.
        admin_key: Bearer key for adapter uploads and deletes.
        timeout: seconds (or an `httpx.Timeout`) for the httpx client this client creates.
        max_retries, backoff_s: retry bounds; or pass a whole `RetryPolicy` as `retry`.
        transport: an httpx transport for the created client (e.g. `httpx.MockTransport`,
            `httpx.WSGITransport`).
        http_client: an `httpx.Client` to use instead; the caller keeps ownership of it.

    Example:
        >>> with Client("http://127.0.0.1:8080") as client:  # doctest: +SKIP
        ...     [[sentiment, topic]] = client.classify("I love it", tasks=["sentiment", "topic"])
        ...     sentiment.label
        'positive'
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 3,
        backoff_s: float = 0.25,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        if http_client is not None and transport is not None:
            raise ValueError("pass transport= or http_client=, not both")
        super().__init__(
            base_url,
            api_key=api_key,
            admin_key=admin_key,
            max_retries=max_retries,
            backoff_s=backoff_s,
            retry=retry,
            fallback_url=injected_base_url(http_client),
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            transport=transport, **http_client_options(timeout)
        )
        self._sleep = time.sleep

    # -- inference ---------------------------------------------------------------------------

    def classify(
        self,
        inputs: str | Sequence[str],
        *,
        task: str | None = None,
        tasks: Sequence[str] | None = None,
        raw_scores: bool = False,
    ) -> list[list[ClassifyResult]]:
        """Classify texts with one task (`task=`) or several (`tasks=`).

        Returns one list per input (a lone string counts as one input), holding one
        `ClassifyResult` per task in the order asked. `raw_scores=True` adds every label's score.

        Example:
            >>> client.classify(["great", "awful"], task="sentiment")  # doctest: +SKIP
            [[ClassifyResult(task='sentiment', label='positive', ...)], [...]]
        """
        return self._send(_api.classify(inputs, task, tasks, raw_scores))

    def classify_pairs(
        self,
        pairs: Sequence[Sequence[str]],
        *,
        task: str | None = None,
        tasks: Sequence[str] | None = None,
        raw_scores: bool = False,
    ) -> list[list[ClassifyResult]]:
        """Classify (text, text_pair) inputs, e.g. premise and hypothesis; as `classify`."""
        return self._send(_api.classify_pairs(pairs, task, tasks, raw_scores))

    # -- adapters ----------------------------------------------------------------------------

    def list_adapters(self) -> list[AdapterInfo]:
        """Every adapter the server knows."""
        return self._send(_api.list_adapters())

    def get_adapter(self, name: str) -> AdapterInfo:
        """One adapter; raises `NotFound` if there is none by that name."""
        return self._send(_api.get_adapter(name))

    def upload_adapter(
        self,
        name: str,
        path: str | os.PathLike[str] | None = None,
        *,
        data: bytes | None = None,
    ) -> UploadResult:
        """Upload an adapter's safetensors file (from `path`, or in-memory `data=`) as `name`.

        Needs the admin key. The server validates it, stores it and serves it at once;
        `UploadResult.created` tells a new adapter from a replaced one.
        """
        return self._send(_api.upload_adapter(name, read_upload(path, data)))

    def delete_adapter(self, name: str) -> None:
        """Delete an adapter; needs the admin key."""
        self._send(_api.delete_adapter(name))

    # -- server ------------------------------------------------------------------------------

    def health(self) -> Probe:
        """Whether the process is alive (no retries). Raises `ConnectionFailed` if unreachable."""
        return self._send(_api.health())

    def ready(self) -> Probe:
        """Whether the server can serve now; a falsy `Probe` when it answers 503 (no retries)."""
        return self._send(_api.ready())

    def info(self) -> ServerInfo:
        """What the server reports about itself (model, limits, version)."""
        return self._send(_api.info())

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, call: _api.Call[T]) -> T:
        attempt = 0
        while True:
            request = _api.build_request(self._http, self.settings, call)
            try:
                response = self._http.send(request)
            except httpx.RequestError as exc:
                delay = self._delay_after_error(call, attempt, exc)
            else:
                maybe_delay = self._delay_after_response(call, attempt, response)
                if maybe_delay is None:
                    return _api.finish(call, response)
                response.close()
                delay = maybe_delay
            self._sleep(delay)
            attempt += 1

    def close(self) -> None:
        """Close the underlying httpx client, unless it was passed in by the caller."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

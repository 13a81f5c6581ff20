"""The asyncio client: the same API as `Client`, awaited."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _api
from ._base import (ClientCore, TrainFile, TrainingWait, http_client_options, injected_base_url, read_upload,
                    train_call)
from ._retry import RetryPolicy
from .models import AdapterInfo, Probe, Results, ServerInfo, TrainingJob, UploadResult

T = TypeVar("T")


class AsyncClient(ClientCore):
    """An asyncio client for an lpt-serve server; arguments and behaviour as `Client`.

    `transport=` takes an async httpx transport, so an app can be served in process:

    Example:
        >>> async with AsyncClient(transport=httpx.ASGITransport(app)) as client:  # doctest: +SKIP
        ...     results = await client.classify("hello", task="sentiment")
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
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
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
        self._http = http_client or httpx.AsyncClient(
            transport=transport, **http_client_options(timeout)
        )
        self._sleep = asyncio.sleep

    async def classify(
        self,
        inputs: str | Sequence[str],
        *,
        task: str | None = None,
        tasks: Sequence[str] | None = None,
        raw_scores: bool = False,
        truncate: bool | None = None,
    ) -> Results:
        """Classify texts with one task or several; see `Client.classify`."""
        return await self._send(_api.classify(inputs, task, tasks, raw_scores, truncate))

    async def classify_pairs(
        self,
        pairs: Sequence[Sequence[str]],
        *,
        task: str | None = None,
        tasks: Sequence[str] | None = None,
        raw_scores: bool = False,
        truncate: bool | None = None,
    ) -> Results:
        """Classify (text, text_pair) inputs; see `Client.classify_pairs`."""
        return await self._send(_api.classify_pairs(pairs, task, tasks, raw_scores, truncate))

    async def list_adapters(self) -> list[AdapterInfo]:
        """Every adapter the server knows."""
        return await self._send(_api.list_adapters())

    async def get_adapter(self, name: str) -> AdapterInfo:
        """One adapter; raises `NotFound` if there is none by that name."""
        return await self._send(_api.get_adapter(name))

    async def upload_adapter(
        self,
        name: str,
        path: str | os.PathLike[str] | None = None,
        *,
        data: bytes | None = None,
    ) -> UploadResult:
        """Upload an adapter file (or `data=`) as `name`; see `Client.upload_adapter`."""
        # read in a thread: a large file read inline would stall every other task on the loop
        content = read_upload(None, data) if path is None else await asyncio.to_thread(read_upload, path, data)
        return await self._send(_api.upload_adapter(name, content))

    async def delete_adapter(self, name: str) -> None:
        """Delete an adapter; needs the admin key."""
        await self._send(_api.delete_adapter(name))

    # -- training ------------------------------------------------------------------------------

    async def train(
        self,
        task: str,
        data: TrainFile,
        *,
        dev: TrainFile | None = None,
        test: TrainFile | None = None,
        text_column: str | None = None,
        label_column: str | None = None,
        text_pair_column: str | None = None,
        method: str | None = None,
        epochs: int | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> TrainingJob:
        """Start a training job on the server; see `Client.train`."""
        fields = dict(text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
                      method=method, epochs=epochs, seed=seed, **options)
        # training files can be tens of megabytes: read them in a thread, off the event loop
        return await self._send(await asyncio.to_thread(train_call, task, data, dev, test, fields))

    async def get_training(self, job_id: str) -> TrainingJob:
        """One training job; raises `NotFound` for an unknown id."""
        return await self._send(_api.get_training(job_id))

    async def list_trainings(self) -> list[TrainingJob]:
        """The training jobs the server remembers, newest first."""
        return await self._send(_api.list_trainings())

    async def cancel_training(self, job_id: str) -> TrainingJob:
        """Cancel a queued or running job; raises `Conflict` (409) if it has ended."""
        return await self._send(_api.cancel_training(job_id))

    async def wait_training(
        self,
        job_id: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_update: Callable[[TrainingJob], None] | None = None,
    ) -> TrainingJob:
        """Poll a job until it ends and return it; see `Client.wait_training`."""
        wait = TrainingWait(job_id, poll_s, timeout_s)
        while True:
            job = await self.get_training(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                return job
            await self._sleep(wait.next_delay())

    async def health(self) -> Probe:
        """Whether the process is alive (no retries)."""
        return await self._send(_api.health())

    async def ready(self) -> Probe:
        """Whether the server can serve now; a falsy `Probe` on 503 (no retries)."""
        return await self._send(_api.ready())

    async def info(self) -> ServerInfo:
        """What the server reports about itself."""
        return await self._send(_api.info())

    async def _send(self, call: _api.Call[T]) -> T:
        attempt = 0
        while True:
            request = _api.build_request(self._http, self.settings, call)
            try:
                response = await self._http.send(request)
            except httpx.RequestError as exc:
                delay = self._delay_after_error(call, attempt, exc)
            else:
                maybe_delay = self._delay_after_response(call, attempt, response)
                if maybe_delay is None:
                    return _api.finish(call, response, retried=attempt > 0)
                await response.aclose()
                delay = maybe_delay
            await self._sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        """Close the underlying httpx client, unless it was passed in by the caller."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

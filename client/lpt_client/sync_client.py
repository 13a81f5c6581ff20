"""The blocking client."""

from __future__ import annotations

import os
import time
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
        truncate: bool | None = None,
    ) -> Results:
        """Classify texts with one task (`task=`) or several (`tasks=`).

        Returns one list per input (a lone string counts as one input), holding one
        `ClassifyResult` per task in the order asked. `raw_scores=True` adds every label's score.
        The list's `truncated_inputs` holds the indices of inputs the server cut to its token
        limit (`LPT_MAX_INPUT_TOKENS`) before classifying them. `truncate=False` asks for a 413
        instead of a cut, `truncate=True` for a cut whatever the server's `LPT_TRUNCATE`.

        Example:
            >>> client.classify(["great", "awful"], task="sentiment")  # doctest: +SKIP
            [[ClassifyResult(task='sentiment', label='positive', ...)], [...]]
        """
        return self._send(_api.classify(inputs, task, tasks, raw_scores, truncate))

    def classify_pairs(
        self,
        pairs: Sequence[Sequence[str]],
        *,
        task: str | None = None,
        tasks: Sequence[str] | None = None,
        raw_scores: bool = False,
        truncate: bool | None = None,
    ) -> Results:
        """Classify (text, text_pair) inputs, e.g. premise and hypothesis; as `classify`."""
        return self._send(_api.classify_pairs(pairs, task, tasks, raw_scores, truncate))

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

    # -- training ------------------------------------------------------------------------------

    def train(
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
        """Start a training job on the server: an adapter named `task` from a labelled file.

        `data` (and `dev`, `test`) is a path to a .csv, .tsv or .jsonl file, or a (file name,
        bytes) pair. Options are those of `lpt train` with `_` for `-` (`prompt_length=8`,
        `labels=["neg", "pos"]`); unset ones take `lpt train`'s defaults. Needs the admin key.
        Returns the queued job at once; bad data raises `BadRequest` with `lpt train`'s message.

        Example:
            >>> job = client.train("my-task", "train.csv", epochs=2)  # doctest: +SKIP
            >>> client.wait_training(job.id).state  # doctest: +SKIP
            'succeeded'
        """
        fields = dict(text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
                      method=method, epochs=epochs, seed=seed, **options)
        return self._send(train_call(task, data, dev, test, fields))

    def get_training(self, job_id: str) -> TrainingJob:
        """One training job; raises `NotFound` for an unknown id."""
        return self._send(_api.get_training(job_id))

    def list_trainings(self) -> list[TrainingJob]:
        """The training jobs the server remembers, newest first."""
        return self._send(_api.list_trainings())

    def cancel_training(self, job_id: str) -> TrainingJob:
        """Cancel a queued or running job; raises `Conflict` (409) if it has ended."""
        return self._send(_api.cancel_training(job_id))

    def wait_training(
        self,
        job_id: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_update: Callable[[TrainingJob], None] | None = None,
    ) -> TrainingJob:
        """Poll a job every `poll_s` seconds until it ends; returns it (check `state`: a failed
        job is returned, not raised). `on_update` hears every poll's answer. Raises `Timeout`
        if it has not ended within `timeout_s`."""
        wait = TrainingWait(job_id, poll_s, timeout_s)
        while True:
            job = self.get_training(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                return job
            self._sleep(wait.next_delay())

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
                    return _api.finish(call, response, retried=attempt > 0)
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

"""The HTTP API (v1) as data: what each method sends and how its answer is read.

Each public method of `Client` and `AsyncClient` is one function here that returns a `Call`
(method, path, body, which key, how to parse the response). The clients only send calls,
so request building and response parsing exist once, free of any I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from ._config import Settings
from .errors import LptError, error_from_response
from .models import AdapterInfo, ClassifyResult, Probe, Results, ServerInfo, TrainingJob, UploadResult

T = TypeVar("T")

KeyKind = Literal["api", "admin", "none"]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and the function that turns its response into a result."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    content: bytes | None = None
    form: dict[str, list[str]] | None = None  # multipart/form-data fields (with `files`)
    files: list[tuple[str, tuple[str, bytes]]] | None = None  # (field, (file name, bytes))
    key: KeyKind = "api"  # which key goes in the Bearer header
    retry: bool = True  # probes answer at once: no retries
    repeatable: bool = True  # False: sent again only if surely never sent (see _retry)
    ok_statuses: frozenset[int] = field(default_factory=frozenset)  # non-2xx handed to parse
    # non-2xx that, on a retry, mean the attempt before did it (a DELETE whose answer was lost)
    done_if_retried: frozenset[int] = field(default_factory=frozenset)


# -- sending: shared by both clients ---------------------------------------------------------


def build_request(
    http: httpx.Client | httpx.AsyncClient, settings: Settings, call: Call[Any]
) -> httpx.Request:
    """The httpx request for a call: absolute URL, JSON or raw body, Bearer key."""
    headers = {"Accept": "application/json"}
    # The server takes the admin key wherever it takes the API key: a client given only the
    # admin key can read and classify too.
    api_key = settings.api_key or settings.admin_key
    key = {"api": api_key, "admin": settings.admin_key, "none": None}[call.key]
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if call.content is not None:
        headers["Content-Type"] = "application/octet-stream"
    return http.build_request(
        call.method,
        settings.base_url + call.path,
        json=call.json,
        content=call.content,
        data=call.form,
        files=call.files,
        headers=headers,
    )


def finish(call: Call[T], response: httpx.Response, retried: bool = False) -> T:
    """Parse a final response, or raise the typed error it stands for."""
    ok = call.ok_statuses | call.done_if_retried if retried else call.ok_statuses
    if not response.is_success and response.status_code not in ok:
        raise error_from_response(response)
    try:
        return call.parse(response)
    except (ValueError, KeyError, TypeError, ValidationError) as exc:  # not the expected JSON
        message = f"unexpected response from server: {exc!r}"
        raise LptError(response.status_code, "invalid_response", message, response) from exc


# -- the calls ---------------------------------------------------------------------------------

_RESULTS = TypeAdapter(list[list[ClassifyResult]])
_INDICES = TypeAdapter(list[int])
_ADAPTERS = TypeAdapter(list[AdapterInfo])


def classify(
    inputs: str | Sequence[str],
    task: str | None = None,
    tasks: Sequence[str] | None = None,
    raw_scores: bool = False,
    truncate: bool | None = None,
) -> Call[Results]:
    """`POST /v1/classify` for single texts; a lone string is sent as a one-item list."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"inputs must be strings, got {type(text).__name__}")
    return _classify(texts, task, tasks, raw_scores, truncate)


def classify_pairs(
    pairs: Sequence[Sequence[str]],
    task: str | None = None,
    tasks: Sequence[str] | None = None,
    raw_scores: bool = False,
    truncate: bool | None = None,
) -> Call[Results]:
    """`POST /v1/classify` for (text, text_pair) inputs, e.g. NLI premise and hypothesis."""
    rows: list[list[str]] = []
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise TypeError(f"each pair must be two strings, got {pair!r}")
        rows.append([pair[0], pair[1]])
    return _classify(rows, task, tasks, raw_scores, truncate)


def _classify(
    inputs: list[Any], task: str | None, tasks: Sequence[str] | None, raw_scores: bool, truncate: bool | None
) -> Call[Results]:
    if (task is None) == (tasks is None):
        raise ValueError("pass exactly one of task= or tasks=")
    if isinstance(tasks, str):
        raise TypeError("tasks= takes a list of task names; use task= for one")
    body: dict[str, Any] = {"inputs": inputs}
    if task is not None:
        body["task"] = task
    else:
        body["tasks"] = list(tasks or [])
        if not body["tasks"]:
            raise ValueError("tasks= must name at least one task")
    if raw_scores:
        body["raw_scores"] = True
    if truncate is not None:          # absent: the server's LPT_TRUNCATE
        body["truncate"] = bool(truncate)
    return Call("POST", "/v1/classify", _parse_results, json=body)


def _parse_results(response: httpx.Response) -> Results:
    body = response.json()
    truncated = _INDICES.validate_python(body.get("truncated_inputs") or [])
    return Results(_RESULTS.validate_python(body["results"]), truncated_inputs=truncated)


def list_adapters() -> Call[list[AdapterInfo]]:
    """`GET /v1/adapters`; accepts `{"adapters": [...]}` or a bare list."""
    return Call("GET", "/v1/adapters", _parse_adapter_list)


def _parse_adapter_list(response: httpx.Response) -> list[AdapterInfo]:
    body = response.json()
    return _ADAPTERS.validate_python(body["adapters"] if isinstance(body, dict) else body)


def get_adapter(name: str) -> Call[AdapterInfo]:
    """`GET /v1/adapters/{name}`."""
    return Call("GET", _adapter_path(name), _parse_adapter)


def upload_adapter(name: str, data: bytes) -> Call[UploadResult]:
    """`PUT /v1/adapters/{name}` with the safetensors file as the body; needs the admin key.

    PUT is idempotent (the store is keyed by content hash), so retrying it is safe.
    """
    return Call("PUT", _adapter_path(name), _parse_upload, content=data, key="admin")


def _parse_upload(response: httpx.Response) -> UploadResult:
    created = response.status_code == 201
    if not response.content:
        return UploadResult(created=created)
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("adapter"), dict):
        body = body["adapter"]
    try:
        adapter = AdapterInfo.model_validate(body)
    except ValidationError:
        adapter = None  # the upload succeeded; only the description is unexpected
    return UploadResult(created=created, adapter=adapter)


def delete_adapter(name: str) -> Call[None]:
    """`DELETE /v1/adapters/{name}`; needs the admin key. Retried: a 404 on a retry means the
    attempt whose answer was lost deleted it."""
    return Call("DELETE", _adapter_path(name), lambda response: None, key="admin",
                done_if_retried=frozenset({404}))


def train(
    task: str,
    data: tuple[str, bytes],
    dev: tuple[str, bytes] | None = None,
    test: tuple[str, bytes] | None = None,
    options: dict[str, Any] | None = None,
) -> Call[TrainingJob]:
    """`POST /v1/train`: files as (file name, bytes); options are `lpt train`'s, `_` for `-`
    (a list is sent as a repeated field); None values are left out. Needs the admin key."""
    form: dict[str, list[str]] = {"task": [task]}
    for name, value in (options or {}).items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        form[name] = [str(v) for v in values]
    files = [(field, file) for field, file in (("data", data), ("dev", dev), ("test", test)) if file is not None]
    # not repeatable: a request whose answer was lost may have started a job already
    return Call("POST", "/v1/train", _parse_job, form=form, files=files, key="admin", repeatable=False)


def get_training(job_id: str) -> Call[TrainingJob]:
    """`GET /v1/train/{id}`."""
    return Call("GET", _job_path(job_id), _parse_job, key="admin")


def list_trainings() -> Call[list[TrainingJob]]:
    """`GET /v1/train`: newest first."""
    return Call("GET", "/v1/train", _parse_job_list, key="admin")


def cancel_training(job_id: str) -> Call[TrainingJob]:
    """`DELETE /v1/train/{id}`: the job, now cancelled (not repeated once sent: a second
    cancel of a job the first one ended is a 409)."""
    return Call("DELETE", _job_path(job_id), _parse_job, key="admin", repeatable=False)


_JOBS = TypeAdapter(list[TrainingJob])


def _parse_job(response: httpx.Response) -> TrainingJob:
    return TrainingJob.model_validate(response.json())


def _parse_job_list(response: httpx.Response) -> list[TrainingJob]:
    return _JOBS.validate_python(response.json()["jobs"])


def _job_path(job_id: str) -> str:
    if not job_id:
        raise ValueError("job id must not be empty")
    return "/v1/train/" + quote(job_id, safe="")


def health() -> Call[Probe]:
    """`GET /health`: is the process alive."""
    return Call("GET", "/health", _parse_probe, retry=False)


def ready() -> Call[Probe]:
    """`GET /ready`: model loaded and worker healthy. A 503 means "not ready", not an error."""
    return Call("GET", "/ready", _parse_probe, retry=False, ok_statuses=frozenset({503}))


def info() -> Call[ServerInfo]:
    """`GET /info`."""
    return Call("GET", "/info", lambda response: ServerInfo.model_validate(response.json()))


def _parse_adapter(response: httpx.Response) -> AdapterInfo:
    return AdapterInfo.model_validate(response.json())


def _parse_probe(response: httpx.Response) -> Probe:
    try:
        body = response.json()
    except ValueError:
        body = {}
    return Probe(
        ok=response.is_success,
        status_code=response.status_code,
        body=body if isinstance(body, dict) else {"value": body},
    )


def _adapter_path(name: str) -> str:
    if not name:
        raise ValueError("adapter name must not be empty")
    return "/v1/adapters/" + quote(name, safe="")

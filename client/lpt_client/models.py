"""Typed results returned by the client.

These models are the client's own view of the HTTP API (v1); they share no code with the
server, so the client installs without it. Models of server objects accept extra fields, so a
newer server that adds a field does not break an older client.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class ClassifyResult(BaseModel):
    """One task's answer for one input.

    Example:
        >>> r = ClassifyResult(task="sentiment", label="positive", score=0.97)
        >>> r.label, r.scores
        ('positive', None)
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    task: str
    label: str
    score: float
    scores: dict[str, float] | None = None  # every label's score, only when raw_scores=True


class Results(list[list[ClassifyResult]]):
    """What `classify` returns: one list per input, one `ClassifyResult` per task, in request
    order; a plain list, plus `truncated_inputs`: the indices of the inputs the server cut to
    its token limit (`LPT_MAX_INPUT_TOKENS`) before classifying them (empty when none was).

    Example:
        >>> r = Results([[ClassifyResult(task="t", label="a", score=1.0)]], truncated_inputs=[0])
        >>> len(r), r.truncated_inputs
        (1, [0])
    """

    def __init__(self, rows: Any = (), truncated_inputs: list[int] | None = None) -> None:
        super().__init__(rows)
        self.truncated_inputs: list[int] = list(truncated_inputs or [])


class AdapterInfo(BaseModel):
    """An adapter as the server describes it (`GET /v1/adapters/{name}`).

    `layer` is the insertion layer k and `prompt_length` the prompt length L of the paper;
    the short names `k`, `L`, `size` and `residency` are accepted as well.
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    name: str
    version: str  # sha256 of the adapter file
    labels: list[str]
    layer: int = Field(validation_alias=AliasChoices("layer", "k"))
    prompt_length: int = Field(validation_alias=AliasChoices("prompt_length", "L"))
    size_bytes: int = Field(validation_alias=AliasChoices("size_bytes", "size"))
    resident: bool = Field(validation_alias=AliasChoices("resident", "residency"))
    task: str | None = None  # the task name the adapter was trained under
    generator: str | None = None  # prompt generator kind, e.g. "npg"
    head_kind: str | None = None  # classification head kind, e.g. "linear"
    base_model: str | None = None  # id of the model the adapter was made for


class UploadResult(BaseModel):
    """What `PUT /v1/adapters/{name}` answered: the stored adapter, and whether it is new."""

    model_config = ConfigDict(frozen=True)

    created: bool  # True: 201, a new adapter; False: 200, a new version replaced the old one
    adapter: AdapterInfo | None = None  # None when the server's body described no adapter


class ServerInfo(BaseModel):
    """`GET /info`: whatever the server reports about itself (model, limits, versions)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Probe(BaseModel):
    """The answer of a probe (`/health`, `/ready`). Truthy when the server said yes.

    Example:
        >>> bool(Probe(ok=False, status_code=503))
        False
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    status_code: int
    body: dict[str, Any] = Field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


TRAINING_FINISHED = ("succeeded", "failed", "cancelled")


class TrainingProgress(BaseModel):
    """Where a training job is: `step` of `steps` (all epochs counted), in epoch `epoch`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None  # mean training loss of the current epoch so far
    dev_accuracy: float | None = None  # after the last finished epoch


class TrainingPoint(BaseModel):
    """One point of a job's (bounded) loss curve."""

    model_config = ConfigDict(extra="allow", frozen=True)

    step: int
    epoch: float
    loss: float | None = None
    dev_accuracy: float | None = None  # set at the end of an epoch


class TrainedAdapter(BaseModel):
    """The adapter a succeeded job stored (served under `name` at once)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str


class TrainingJob(BaseModel):
    """A training job (`POST /v1/train`, `GET /v1/train/{id}`).

    Example:
        >>> job = TrainingJob(id="a1", task="my-task", state="queued", created_at=0.0)
        >>> job.finished
        False
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    task: str
    state: str  # queued, running, succeeded, failed or cancelled
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: TrainingProgress = Field(default_factory=TrainingProgress)
    history: list[TrainingPoint] = Field(default_factory=list)
    error: str | None = None  # why it failed
    adapter: TrainedAdapter | None = None
    metrics: dict[str, Any] | None = None  # {"dev": {...}, "test": {...} or None}

    @property
    def finished(self) -> bool:
        """The job has ended: succeeded, failed or cancelled."""
        return self.state in TRAINING_FINISHED

"""Request and response bodies of the HTTP API (v1), as pydantic models.

These define the OpenAPI schema shown at /docs, and parse requests strictly: a number where
a string belongs is an error, not silently turned into "1".
"""
from __future__ import annotations

import re
from typing import Annotated, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

# A text must hold a visible character: not only whitespace, control characters (C0, DEL, C1)
# or the default-ignorable ones of the Basic Multilingual Plane (zero-width space and joiners,
# soft hyphen, word joiner, BOM, variation selectors, ...), which tokenizers drop: such a text
# would be classified as if it were empty. The class is spelled out (JSON Schema's \s and
# Python's differ) so that the schema at /docs and the server's check agree exactly.
INVISIBLE = (r" \u0000-\u001f\u007f-\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f"
             r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8")
NON_BLANK = f"[^{INVISIBLE}]"
_NON_BLANK_RE = re.compile(NON_BLANK)


def is_blank(text: str) -> bool:
    return _NON_BLANK_RE.search(text) is None


# The pattern only documents the rule (the route words its own message for a blank text).
Text = Annotated[StrictStr, Field(json_schema_extra={"pattern": NON_BLANK})]
TextPair = Annotated[list[Text], Field(min_length=2, max_length=2)]
Input = Union[Text, TextPair]
Inputs = Union[Text, Annotated[list[Input], Field(min_length=1)]]


# The server's own bounds on a request's lists, given as validation context by the route:
# {"inputs": LPT_MAX_INPUTS, "tasks": LPT_QUEUE_LIMIT} (more tasks than the queue has rows could
# never run). A list past its bound is refused before its items are checked: a body of a million
# bad items would otherwise cost seconds of building one error per item.
TOO_MANY = "too_many_items"


def _bounded(value, handler, info: ValidationInfo):
    limit = (info.context or {}).get(info.field_name)
    if limit is not None and isinstance(value, list) and len(value) > limit:
        raise PydanticCustomError(TOO_MANY, "{count} items, the limit is {limit}",
                                  {"count": len(value), "limit": limit})
    return handler(value)


TRUNCATE_DOC = ("inputs longer than the server's LPT_MAX_INPUT_TOKENS: true cuts them (their indices come back in "
                "`truncated_inputs`), false refuses the request (413); absent: the server's LPT_TRUNCATE")


class ClassifyRequest(BaseModel):
    """`inputs`: one text, a list of texts, or a list of [text, text_pair]; `task` or `tasks`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["task"]}, {"required": ["tasks"]}], "examples": [
        # the demo adapters, so that "Try it out" on a fresh server answers
        {"inputs": ["I loved this film", "Shares of the maker rose 5% on Monday"],
         "tasks": ["sentiment", "news-topic"]},
        {"inputs": "The central bank raised interest rates again", "task": "news-topic", "raw_scores": True}]})

    inputs: Inputs = Field(description="a text, a list of texts, or a list of [text, text_pair] pairs")
    task: StrictStr = Field(None, description="the adapter to run (or use `tasks`)")
    tasks: list[StrictStr] = Field(None, description="several adapters, each run on every input",
                                   json_schema_extra={"minItems": 1, "uniqueItems": True})
    raw_scores: StrictBool = Field(False, description="also return every label's probability")
    truncate: StrictBool | None = Field(None, description=TRUNCATE_DOC)

    _bounded = field_validator("inputs", "tasks", mode="wrap")(_bounded)

    @model_validator(mode="after")
    def _one_of_task_or_tasks(self):
        if (self.task is None) == (self.tasks is None):
            raise ValueError('name the adapter(s) with exactly one of "task": "name" or "tasks": ["a", "b"]')
        if self.tasks is not None:
            if not self.tasks:
                raise ValueError('"tasks" must name at least one task')
            if len(set(self.tasks)) != len(self.tasks):
                raise ValueError('"tasks" names a task more than once')
        return self

    def task_names(self) -> list[str]:
        return [self.task] if self.task is not None else list(self.tasks)


class TaskClassifyRequest(BaseModel):
    """Body of `POST /v1/tasks/{task}/classify`: the task is in the URL."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "I loved this film"}]})

    inputs: Inputs
    raw_scores: StrictBool = False
    truncate: StrictBool | None = Field(None, description=TRUNCATE_DOC)

    _bounded = field_validator("inputs", mode="wrap")(_bounded)


class TaskResult(BaseModel):
    task: str
    label: str
    score: float
    scores: dict[str, float] | None = None


class ClassifyResponse(BaseModel):
    results: list[list[TaskResult]] = Field(description="one list per input, one item per task, in request order")
    truncated_inputs: list[int] | None = Field(
        None, description="indices of the inputs that were cut to LPT_MAX_INPUT_TOKENS (absent when none was)")


class AdapterInfo(BaseModel):
    name: str
    task: str | None = Field(None, description="the task name the adapter was trained under")
    version: str = Field(description="sha256 of the adapter file")
    labels: list[str]
    layer: int = Field(description="insertion layer k")
    prompt_length: int = Field(description="prompt length L")
    generator: str | None = None
    head_kind: str | None = None
    base_model: str | None = None
    size_bytes: int
    resident: bool = Field(description="loaded in memory now")


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- training jobs (POST/GET/DELETE /v1/train) -------------------------------------------------
_JOB_EXAMPLE = {
    "id": "3f2a9c1b7d4e5a60", "task": "my-task", "state": "running", "created_at": 1767225600.0,
    "started_at": 1767225600.4, "finished_at": None,
    "progress": {"epoch": 1, "epochs": 2, "step": 3, "steps": 4, "loss": 0.6931, "dev_accuracy": None},
    "history": [{"step": 1, "epoch": 0.5, "loss": 0.70, "dev_accuracy": None},
                {"step": 2, "epoch": 1.0, "loss": 0.69, "dev_accuracy": 0.75}],
    "error": None, "adapter": None, "metrics": None}


class TrainProgress(BaseModel):
    epoch: int = Field(description="the epoch running (1-based; 0 before the first step)")
    epochs: int
    step: int = Field(description="steps done, all epochs counted")
    steps: int = Field(description="steps in all: epochs x steps per epoch")
    loss: float | None = Field(description="mean training loss of the current epoch so far")
    dev_accuracy: float | None = Field(description="dev accuracy after the last finished epoch")


class TrainPoint(BaseModel):
    step: int
    epoch: float = Field(description="epochs done at this step (fractional)")
    loss: float | None
    dev_accuracy: float | None = Field(description="set at the end of an epoch")


class TrainedAdapter(BaseModel):
    name: str
    version: str = Field(description="sha256 of the stored adapter file")


class TrainMetrics(BaseModel):
    dev: dict | None = Field(description="the chosen checkpoint on the dev set: accuracy, macro_f1, per_class, "
                             "confusion_matrix")
    test: dict | None = Field(description="the same on the test file, if one was sent")


class TrainJobView(BaseModel):
    """A training job. `history` is bounded (long runs are downsampled)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: str
    task: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled",
                       json_schema_extra={"enum": ["queued", "running", "succeeded", "failed", "cancelled"]})
    created_at: float = Field(description="unix seconds")
    started_at: float | None
    finished_at: float | None
    progress: TrainProgress
    history: list[TrainPoint]
    error: str | None = Field(description="why the job failed (the message `lpt train` would print)")
    adapter: TrainedAdapter | None = Field(description="the stored adapter, once the job succeeded")
    metrics: TrainMetrics | None


class TrainJobList(BaseModel):
    jobs: list[TrainJobView] = Field(description="newest first")

"""POST /v1/classify and POST /v1/tasks/{task}/classify.

Stages: parse (validate, resolve tasks to adapters) -> admit (a full queue answers 429 before any
tokenizing) -> encode (texts once per task's template, off the loop) -> schedule (one row per
(input, task) into the batcher, wait) -> the engine, on its thread -> respond (results back in
request order). Rows of one request share their texts, so the engine runs the lower layers
once per input whatever the number of tasks.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, NamedTuple

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from lpt import Row

from ..auth import require_api_key
from ..batcher import Item
from ..body import json_body_schema, parse_json
from ..errors import ClientClosed, GatewayTimeout, NotFound, PayloadTooLarge, Unavailable, Unprocessable, status_of
from ..runtime import Runtime, started
from ..schemas import ClassifyRequest, ClassifyResponse, ErrorResponse, TaskClassifyRequest, is_blank
from ..store_layout import NAME_RE, InvalidName, shown
from ..texts import EncodedInputs, InputTooLong, encode_inputs

# the answer's own headers (app.py exposes them to pages on other origins)
QUEUE_TIME, INFERENCE_TIME, TRUNCATED = "x-queue-time-ms", "x-inference-time-ms", "x-truncated-inputs"
CLASSIFY_HEADERS = (QUEUE_TIME, INFERENCE_TIME, TRUNCATED)

# no router-wide key check: classify() checks the key itself, so that a refused key is counted too
router = APIRouter(prefix="/v1", tags=["inference"])
log = logging.getLogger("lpt_server.classify")

ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 404, 408, 413, 415, 422, 429, 503, 504)}


@dataclass(frozen=True)
class Parsed:
    """A validated request: tasks resolved to adapter modules (opaque here)."""

    tasks: list[str]
    adapters: list                  # lpt.LatePrompt per task, held for the whole request
    inputs: list[tuple[str, str | None]]

    @property
    def rows(self) -> int:
        return len(self.inputs) * len(self.tasks)


@dataclass(frozen=True)
class Job(Parsed):
    """A parsed request with its inputs encoded for each task: what schedule queues."""

    encoded: EncodedInputs          # each input encoded for each task: carried to the engine


# ---- parse -----------------------------------------------------------------------------------
def _normalize(inputs) -> list[tuple[str, str | None]]:
    if isinstance(inputs, str):
        inputs = [inputs]           # an empty list never gets here: the schema wants at least one
    out = []
    for i, x in enumerate(inputs):
        text, pair = (x, None) if isinstance(x, str) else (x[0], x[1])
        if is_blank(text) or (pair is not None and is_blank(pair)):
            raise Unprocessable(f"invalid request: inputs[{i}] is empty: every text must have some visible characters "
                                "(not only spaces, control or zero-width characters)")
        out.append((text, pair))
    return out


def _left(deadline: float) -> float:
    """Seconds left before the request's deadline (a wait of 0 would not wait at all)."""
    return max(deadline - time.monotonic(), 0.001)


async def _resolve(rt: Runtime, name: str, deadline: float):
    module = rt.registry.lookup(name)          # resident and fresh: no I/O
    if module is None:                         # pointer check or load: on the store's threads
        module = await rt.store_io(rt.registry.get, name, timeout_s=_left(deadline))
    return module


async def parse(rt: Runtime, inputs, tasks: list[str], deadline: float) -> Parsed:
    pairs = _normalize(inputs)     # at most LPT_MAX_INPUTS: the schema's bound (schemas.py)
    if (rows := len(pairs) * len(tasks)) > rt.settings.queue_limit:
        raise PayloadTooLarge(f"{len(pairs)} inputs x {len(tasks)} tasks = {rows} rows, "
                              f"more than the queue holds ({rt.settings.queue_limit}): split the request")
    adapters = []
    for name in tasks:
        try:
            adapters.append(await _resolve(rt, name, deadline))
        except InvalidName:
            raise NotFound(f"unknown task {shown(name)}: not a valid adapter name") from None
    return Parsed(tasks, adapters, pairs)


# ---- encode ----------------------------------------------------------------------------------
async def encode(rt: Runtime, p: Parsed, asked: bool | None) -> Job:
    """Tokenizing is CPU work: off the loop. `asked`: the request's "truncate" (None: the
    server's LPT_TRUNCATE). InputTooLong (413) says which of the two kept the text whole."""
    truncate = rt.settings.truncate if asked is None else asked
    try:
        encoded = await asyncio.to_thread(encode_inputs, p.inputs, p.tasks, p.adapters, rt.settings.max_input_tokens,
                                          truncate)
    except InputTooLong as e:
        why = ("the request asked \"truncate\": false" if asked is not None
               else "the server runs with LPT_TRUNCATE=false")
        raise InputTooLong(f"{e}; {why}: shorten the text, or send \"truncate\": true to have it cut") from None
    return Job(p.tasks, p.adapters, p.inputs, encoded)


# ---- schedule --------------------------------------------------------------------------------
async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: only a disconnect comes now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _retrieve(future: asyncio.Future) -> None:
    """Mark a finished future's outcome as read (its exception, if any, was answered already)."""
    if not future.cancelled():
        future.exception()


async def schedule(rt: Runtime, request: Request, job: Job, deadline: float) -> list[Item]:
    rows = [(Row(adapter, text, pair, enc), len(enc.input_ids))
            for (text, pair), encs in zip(job.inputs, job.encoded.rows) for adapter, enc in zip(job.adapters, encs)]
    items = rt.batcher.submit(rows)               # QueueFull -> 429, closed -> 503
    answers = asyncio.ensure_future(asyncio.gather(*(it.future for it in items)))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({answers, gone}, timeout=_left(deadline),
                                     return_when=asyncio.FIRST_COMPLETED)
        if answers in done:
            if answers.cancelled():               # a row was dropped under us (shutdown)
                raise Unavailable("the request's rows were dropped: the server is shutting down")
            answers.result()                      # a failed row raises its error here
            return items
        if gone in done:
            raise ClientClosed("the client disconnected")
        raise GatewayTimeout(f"no answer within {rt.settings.request_timeout_s:g} s "
                             "(LPT_REQUEST_TIMEOUT_S): the server is overloaded")
    finally:
        gone.cancel()
        if not answers.done():
            answers.cancel()                      # a cancelled gather ends holding a CancelledError:
            answers.add_done_callback(_retrieve)  # read it, or asyncio logs it as never retrieved
        else:
            _retrieve(answers)
        rt.batcher.discard(items)                 # rows not run yet are dropped before the engine


# ---- respond ---------------------------------------------------------------------------------
# An answer of this many rows or more is built in a worker thread, a row at a time: 1,024 rows
# with every label's score take ~20 ms to encode, and one json.dumps of them all would hold the
# GIL (and so the event loop) for all of it; between rows other threads get their turn.
RESPOND_OFF_LOOP_ROWS = 64


class RowsResponse(JSONResponse):
    """The same bytes as JSONResponse, encoded one result row at a time."""

    def render(self, content: dict) -> bytes:
        encode = super().render
        rows = b",".join(encode(row) for row in content["results"])
        rest = {k: v for k, v in content.items() if k != "results"}
        return b'{"results":[' + rows + b"]" + (b"," + encode(rest)[1:] if rest else b"}")


def respond(job: Job, predictions: list, queue_s: float, inference_s: float, raw_scores: bool,
            response_class: type[JSONResponse] = JSONResponse) -> JSONResponse:
    """`predictions` in row order: input by input, task by task (as schedule() queued them)."""
    n_tasks = len(job.tasks)
    results = []
    for i in range(len(job.inputs)):
        row = []
        for j, task in enumerate(job.tasks):
            p = predictions[i * n_tasks + j]
            r = {"task": task, "label": p.label, "score": p.score}
            if raw_scores:
                r["scores"] = p.scores
            row.append(r)
        results.append(row)
    headers = {QUEUE_TIME: f"{queue_s * 1000:.2f}", INFERENCE_TIME: f"{inference_s * 1000:.2f}"}
    body: dict = {"results": results}
    truncated = job.encoded.truncated
    if truncated:
        headers[TRUNCATED] = str(len(truncated))
        body["truncated_inputs"] = truncated
    return response_class(body, headers=headers)


async def answer(job: Job, items: list[Item], raw_scores: bool) -> JSONResponse:
    args = (job, [it.future.result() for it in items], max(it.queue_s for it in items),
            max(it.inference_s for it in items), raw_scores)
    if len(items) >= RESPOND_OFF_LOOP_ROWS:
        return await asyncio.to_thread(respond, *args, RowsResponse)
    return respond(*args)


class Asked(NamedTuple):
    """What a classify body asks for, whichever route it came by."""

    inputs: Any
    tasks: list[str]
    raw_scores: bool
    truncate: bool | None          # None: the server's LPT_TRUNCATE


Unpack = Callable[[Any], Asked]


async def classify(request: Request, model: type, unpack: Unpack) -> JSONResponse:
    """The whole request, counted in the metrics whichever stage answers it: the key check
    (401), the body (400, 408, 413, 415, 422), then the stages above."""
    rt = started(request)
    t0 = time.perf_counter()
    status, known_tasks = 500, []
    rt.metrics.in_flight.inc()
    try:
        await require_api_key(request)
        asked = unpack(await _body(request, model))          # bounded by LPT_BODY_TIMEOUT_S
        deadline = time.monotonic() + rt.settings.request_timeout_s      # then one for all the rest
        parsed = await parse(rt, asked.inputs, asked.tasks, deadline)
        known_tasks = parsed.tasks
        rt.batcher.admit(parsed.rows)       # QueueFull (429) before tokenizing: rechecked at submit
        job = await encode(rt, parsed, asked.truncate)
        items = await schedule(rt, request, job, deadline)
        response = await answer(job, items, asked.raw_scores)
        status = 200
        return response
    except asyncio.CancelledError:          # the server stopped first (errors.CatchAll answers 503)
        status = 503
        raise
    except Exception as e:
        status = status_of(e)
        if isinstance(e, ClientClosed):     # no answer is sent, so no access line: say it here
            log.info("the client disconnected before its answer (%.0f ms in)", (time.perf_counter() - t0) * 1000)
        raise
    finally:
        rt.metrics.in_flight.dec()
        # a task deleted while this request ran is not counted under its name: that would bring
        # back the series its deletion removed (metrics.forget_task)
        rt.metrics.observe_request([t for t in known_tasks if rt.registry.known(t)], status,
                                   time.perf_counter() - t0)


async def _body(request: Request, model):
    s = request.app.state.runtime.settings
    return await parse_json(request, model, limit=s.max_body_bytes, setting="LPT_MAX_BODY_BYTES",
                            timeout_s=s.body_timeout_s, context={"inputs": s.max_inputs, "tasks": s.queue_limit})


# The body is parsed in the route, not by FastAPI: FastAPI reads and parses a body parameter
# before any dependency runs, and the key check must come before a byte of the body is read.
@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS,
             openapi_extra=json_body_schema(ClassifyRequest), summary="Classify inputs with one or more tasks")
async def classify_route(request: Request):
    """One list per input, one item per task. Each (input, task) is one row of a mixed batch."""
    return await classify(request, ClassifyRequest,
                          lambda body: Asked(body.inputs, body.task_names(), body.raw_scores, body.truncate))


# the example names a demo adapter, so that "Try it out" on a fresh server answers
TaskName = Annotated[str, Path(description="the adapter to run", openapi_examples={"demo": {"value": "sentiment"}},
                               json_schema_extra={"pattern": NAME_RE.pattern})]


@router.post("/tasks/{task}/classify", response_model=ClassifyResponse, responses=ERRORS,
             openapi_extra=json_body_schema(TaskClassifyRequest), summary="Classify inputs with the task named in the URL")
async def task_classify_route(task: TaskName, request: Request):
    return await classify(request, TaskClassifyRequest,
                          lambda body: Asked(body.inputs, [task], body.raw_scores, body.truncate))

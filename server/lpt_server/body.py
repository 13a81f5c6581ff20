"""Request bodies, read with bounds: a size cap and a deadline, before anything is parsed.

    data = await read_body(request, limit=s.max_body_bytes, setting="LPT_MAX_BODY_BYTES",
                           timeout_s=s.body_timeout_s)
    body = await parse_json(request, ClassifyRequest, limit=..., setting=..., timeout_s=...)

Routes read their bodies here, after their dependencies (the key check) have run: a client
without a key never gets its body read, and no client can make the server buffer more than
the cap or hold a request open by sending it slowly.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from .errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)


async def chunks(request: Request, *, timeout_s: float, what: str = "request body") -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; 408 if the whole body has not arrived in `timeout_s`;
    415 before reading for a compressed body (read as it is, gzip would be 'not valid JSON')."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"the {what} is sent with Content-Encoding: {encoding[:40]}; the server reads "
                                   "bodies uncompressed: send it without compression")
    deadline = time.monotonic() + timeout_s
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(deadline - time.monotonic(), 0.001))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the {what} was not received within {timeout_s:g} s "
                                 "(LPT_BODY_TIMEOUT_S): send it faster or in a smaller request") from None
        yield chunk


def refuse_declared(request: Request, *, body_limit: int, limit: int, setting: str, what: str) -> None:
    """413 before a byte is read when the declared Content-Length passes `body_limit` (the limit
    named to the client is `limit`, the file's, which a form body may pass by its own headers)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > body_limit:
        raise PayloadTooLarge(f"the {what} is {int(declared)} bytes, over the limit of {limit} bytes ({setting})")


async def read_body(request: Request, *, limit: int, setting: str, timeout_s: float, what: str = "request body") -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` (a declared Content-Length
    over it is refused before a byte is read) and with 408 if it is not complete in `timeout_s`."""
    refuse_declared(request, body_limit=limit, limit=limit, setting=setting, what=what)
    parts, size = [], 0
    async for chunk in chunks(request, timeout_s=timeout_s, what=what):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is over the limit of {limit} bytes ({setting})")
        parts.append(chunk)
    return b"".join(parts)


async def stream_into(request: Request, reader, *, limit: int, body_limit: int, setting: str, timeout_s: float,
                      what: str = "upload"):
    """Feed the body to an upload reader (`feed(chunk)`, `finish()`, see upload.py) as it
    arrives and return what `finish` returns. A declared Content-Length over `body_limit` (the
    file limit `limit` plus a form's own bytes) is a 413 before reading; the reader's TooLarge a
    413 naming `setting` (its UploadError is a 400 through the error table)."""
    from . import upload

    refuse_declared(request, body_limit=body_limit, limit=limit, setting=setting, what=what)
    try:
        async for chunk in chunks(request, timeout_s=timeout_s, what=what):
            reader.feed(chunk)
        return reader.finish()
    except upload.TooLarge as e:
        raise PayloadTooLarge(f"{e} ({setting})") from None


def _lone_surrogate(data: bytes) -> str | None:
    """Where a JSON body that the strict parser refused holds a lone surrogate ("\\ud800"), as
    `inputs[2]`, `inputs[2][1]` or `task`; None if that is not why it was refused."""
    try:
        raw = json.loads(data)      # the stdlib parser accepts lone surrogates, the strict one does not
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, object]] = [("", raw)]
    while stack:                    # depth-first, in document order: the first one is named
        where, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in reversed(value.items())]
            stack += [(f"the key {where + '.' if where else ''}{k!r}", k) for k in reversed(value)]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value)))]
        elif isinstance(value, str):
            where = "inputs[0]" if where == "inputs" else where    # one text is input 0, as elsewhere
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"{where or 'the body'} has a lone surrogate ({value[e.start]!r}) at character {e.start}"
    return None


def validate_json(data: bytes, model: type[M], context: dict | None = None) -> M:
    """Strict JSON -> model; errors as FastAPI's own (a 422 naming each field, 400 for bad JSON).
    context: the model's validation context (schemas.py: the request's bounds). A leading UTF-8
    byte-order mark (some Windows tools write one) is ignored, as RFC 8259 allows."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return model.model_validate_json(data, context=context)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if any(err.get("type") == "json_invalid" for err in errors):
            where = _lone_surrogate(data)
            if where:
                raise BadRequest(f"invalid Unicode: {where}; send text as valid UTF-8") from None
        raise RequestValidationError([{**err, "loc": ("body", *err.get("loc", ()))} for err in errors]) from None


# Parsing costs ~45 ms per MiB of JSON: a body past this size is parsed in a worker thread, so
# that it does not hold up the event loop; smaller ones are parsed at once (a thread hop costs
# more than they do).
PARSE_OFF_LOOP_BYTES = 64 * 1024


async def parse_json(request: Request, model: type[M], *, limit: int, setting: str, timeout_s: float,
                     context: dict | None = None) -> M:
    data = await read_body(request, limit=limit, setting=setting, timeout_s=timeout_s)
    if len(data) > PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(validate_json, data, model, context)
    return validate_json(data, model, context)


def json_body_schema(model: type[BaseModel]) -> dict:
    """OpenAPI `requestBody` for a route that parses its own body (so that /docs still shows it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}

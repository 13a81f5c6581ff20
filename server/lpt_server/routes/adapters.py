"""The adapter API: list, describe, upload (validate -> store -> serve), delete."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from .. import upload
from ..auth import require_admin_key, require_api_key
from ..body import stream_into
from ..errors import NotFound
from ..runtime import started
from ..schemas import AdapterInfo, AdapterList, ErrorResponse
from ..store_layout import NAME_RE, check_name

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 403, 404, 413, 503)}
# The pattern documents the name rule; check_name enforces it with a 400 that says what to fix.
Name = Annotated[str, Path(description="adapter name", json_schema_extra={"pattern": NAME_RE.pattern})]


@router.get("", response_model=AdapterList, dependencies=[Depends(require_api_key)],
            summary="List the adapters in the store")
async def list_adapters(request: Request):
    rt = started(request)

    def listing() -> bytes:     # the check of the answer (~8 us per adapter) too, off the event loop
        return AdapterList.model_validate({"adapters": rt.registry.list()}).model_dump_json()

    return Response(await rt.store_io(listing), media_type="application/json")


# `{name:path}` so that names with '/' or '..' reach the name check (400), not the router
@router.get("/{name:path}", response_model=AdapterInfo, responses=ERRORS,
            dependencies=[Depends(require_api_key)], summary="Describe one adapter")
async def get_adapter(name: Name, request: Request):
    check_name(name)
    rt = started(request)
    return await rt.store_io(rt.registry.describe, name)


async def _read_body(request: Request, limit: int) -> bytes:
    """The adapter file, the body itself or the one part of a multipart/form-data body; refused
    with 413 as soon as it passes the limit (not after reading it all)."""
    content_type = request.headers.get("content-type", "")
    body = upload.reader(content_type, limit)          # UploadError: 400
    return await stream_into(request, body, limit=limit, body_limit=upload.body_limit(content_type, limit),
                             setting="LPT_MAX_ADAPTER_BYTES", timeout_s=started(request).settings.body_timeout_s)


@router.put("/{name:path}", response_model=AdapterInfo, status_code=201,
            responses={**ERRORS, 200: {}, **{c: {"model": ErrorResponse} for c in (408, 409, 415, 507)}},
            dependencies=[Depends(require_admin_key)],
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary",
                                            "description": "the .safetensors file (any field name)"}}}}}}},
            summary="Upload an adapter: the .safetensors file as the body, or as the one field of a form")
async def put_adapter(name: Name, request: Request):
    """Validated in full before anything is stored; stored atomically; 201 new, 200 replaced.
    Requests already holding the old version finish on it.

    `curl --data-binary @my-task.safetensors` (the file as the body) and `curl -F file=@my-task.safetensors`
    (a multipart/form-data body with the file as its one part, under any field name) both work."""
    rt = started(request)
    check_name(name)
    data = await _read_body(request, rt.settings.max_adapter_bytes)
    info, created = await rt.store_io(rt.registry.put, name, data)
    return JSONResponse(info, status_code=201 if created else 200)


@router.delete("/{name:path}", status_code=204, responses=ERRORS, dependencies=[Depends(require_admin_key)],
               summary="Delete an adapter")
async def delete_adapter(name: Name, request: Request):
    check_name(name)
    rt = started(request)
    if not await rt.store_io(rt.registry.delete, name):
        raise NotFound(f"no adapter named {name!r}")
    return Response(status_code=204)

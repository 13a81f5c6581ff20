"""The adapter API: list, describe, upload (validate -> store -> serve), delete."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ..auth import require_admin_key, require_api_key
from ..errors import NotFound, PayloadTooLarge
from ..runtime import Runtime
from ..schemas import AdapterInfo, AdapterList, ErrorResponse
from ..store import check_name

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 403, 404, 413)}


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime


@router.get("", response_model=AdapterList, dependencies=[Depends(require_api_key)],
            summary="List the adapters in the store")
async def list_adapters(request: Request):
    return {"adapters": await asyncio.to_thread(_rt(request).registry.list)}


# `{name:path}` so that names with '/' or '..' reach the name check (400), not the router
@router.get("/{name:path}", response_model=AdapterInfo, responses=ERRORS,
            dependencies=[Depends(require_api_key)], summary="Describe one adapter")
async def get_adapter(name: str, request: Request):
    check_name(name)
    return await asyncio.to_thread(_rt(request).registry.describe, name)


async def _read_body(request: Request, limit: int) -> bytes:
    """The upload, refused with 413 as soon as it passes the limit (not after reading it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"adapter file is {int(declared)} bytes, the limit is {limit} (LPT_MAX_ADAPTER_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"adapter file is over the limit of {limit} bytes (LPT_MAX_ADAPTER_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


@router.put("/{name:path}", response_model=AdapterInfo, status_code=201, responses={**ERRORS, 200: {}},
            dependencies=[Depends(require_admin_key)],
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
            summary="Upload an adapter (the .safetensors file as the body)")
async def put_adapter(name: str, request: Request):
    """Validated in full before anything is stored; stored atomically; 201 new, 200 replaced.
    Requests already holding the old version finish on it."""
    rt = _rt(request)
    check_name(name)
    data = await _read_body(request, rt.settings.max_adapter_bytes)
    info, created = await asyncio.to_thread(rt.registry.put, name, data)
    return JSONResponse(info, status_code=201 if created else 200)


@router.delete("/{name:path}", status_code=204, responses=ERRORS, dependencies=[Depends(require_admin_key)],
               summary="Delete an adapter")
async def delete_adapter(name: str, request: Request):
    check_name(name)
    if not await asyncio.to_thread(_rt(request).registry.delete, name):
        raise NotFound(f"no adapter named {name!r}")
    return Response(status_code=204)

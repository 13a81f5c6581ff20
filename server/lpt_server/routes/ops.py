"""Operations: /health (alive), /ready (can serve), /info, /metrics. (`/` is the console: console.py.)"""
from __future__ import annotations

import platform
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..errors import RETRY_AFTER_S
from ..runtime import Runtime

router = APIRouter(tags=["operations"])


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime


# HEAD too: some load balancers and uptime checkers probe with HEAD (the status, no body)
@router.head("/health", include_in_schema=False)
@router.get("/health", summary="The process is alive")
async def health():
    return {"status": "ok"}


@router.head("/ready", include_in_schema=False)
@router.get("/ready", summary="The model is loaded and the engine worker runs (503 otherwise)")
async def ready(request: Request):
    ok, reason = _rt(request).readiness()
    if ok:
        return {"status": "ready"}
    return JSONResponse({"status": "not ready", "error": {"type": "unavailable", "message": reason}},
                        status_code=503, headers={"Retry-After": RETRY_AFTER_S[503]})


@router.get("/info", summary="Model, limits, adapters, versions")
def info(request: Request):
    # A plain def (FastAPI's thread pool): thousands of unusable stored files make a long list.
    import lpt
    import torch

    rt = _rt(request)
    bb = rt.engine.backbone if rt.engine is not None else None
    ok, reason = rt.readiness()
    return {
        "version": __version__,
        "model": {"id": getattr(bb, "model_id", rt.settings.model),
                  "type": bb.config.model_type if bb is not None else None,
                  "layers": bb.num_layers if bb is not None else None,
                  "hidden_size": bb.hidden_size if bb is not None else None,
                  "has_lm_head": bb.has_lm_head if bb is not None else None,
                  "modules": bb.modules_from if bb is not None else None,
                  "device": rt.settings.device,
                  "dtype": bb.precision if bb is not None else rt.settings.dtype,
                  "load_seconds": rt.load_seconds},
        "ready": ok, "status": reason,
        "adapters": {"registered": rt.registry.registered if rt.registry else 0,
                     "resident": rt.registry.resident_count if rt.registry else 0,
                     "demo_seeded": rt.seeded,
                     "problems": rt.registry.problems() if rt.registry else {}},
        "store": rt.store_info(),
        "engine": {"workers": rt.plan.workers, "torch_threads": rt.plan.torch_threads,
                   "model_processes": len(rt.model_processes)},
        "settings": rt.settings.public(),
        "docs": request.app.state.docs_mode,
        "uptime_s": round(time.time() - rt.started_at, 1),
        "versions": {"lpt_server": __version__, "lpt": lpt.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request):
    # A plain def: FastAPI runs it in its thread pool, so a scrape never holds up the event loop.
    return Response(_rt(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""The app factory: `create_app(settings)` builds a complete, independent server.

    app = create_app(Settings(store="/tmp/s"))                                    # the real model
    app = create_app(Settings(store=tmp), engine_factory=lambda s: Engine(tiny))  # tests

No globals: two apps in one process share nothing (each has its own runtime and metrics).
The model loads in the lifespan startup, so a server only accepts connections once it can
answer; shutdown drains the batcher before the worker threads stop.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from . import __version__, console, docs, errors
from .paths import ControlCharacterGuard
from .request_id import RequestIdMiddleware
from .routes import adapters, classify, ops
from .routes.classify import CLASSIFY_HEADERS
from .routes import train as train_routes
from .runtime import EngineFactory, Runtime
from .settings import Settings

DEMO_DIR = Path(__file__).parent / "demo_adapters"


class QuietStartupFailure:
    """ASGI middleware: a startup refused for a reason the runtime logged in one line (a model
    that cannot be loaded, a store that cannot be used) reaches uvicorn without its traceback,
    which uvicorn would print after that line: 50 lines of library frames under the one that says
    what to fix. A failure the runtime did not explain (a bug) keeps its traceback."""

    def __init__(self, app, runtime: Runtime):
        self.app, self.runtime = app, runtime

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_quietly(message):
            if message["type"] == "lifespan.startup.failed" and self.runtime.startup_error is not None:
                message = {**message, "message": ""}
            await send(message)
        return await self.app(scope, receive, send_quietly)


def create_app(settings: Settings | None = None, engine_factory: EngineFactory | None = None,
               demo_dir: Path | None = DEMO_DIR) -> FastAPI:
    settings = settings or Settings()
    runtime = Runtime(settings, engine_factory, demo_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        # FastAPI builds the schema on the first GET /openapi.json (~70 ms), on the event loop:
        # build it now, in a thread, before the server takes requests
        await asyncio.to_thread(app.openapi)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="lpt-serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Many Late-Prompt-Tuning task adapters on one frozen transformer; "
                              "requests for different tasks share each forward pass.")
    app.state.runtime = runtime
    errors.install(app)
    app.include_router(classify.router)
    app.include_router(adapters.router)
    app.include_router(train_routes.router)
    app.include_router(ops.router)
    app.state.docs_mode = docs.install(app, docs.swagger_assets())
    console.install(app)
    app.add_middleware(ControlCharacterGuard)
    if settings.cors_origin_list:
        # outside the routes and their error answers, so that a page may read a 401 or 429 too;
        # a preflight is answered here, before the key check (browsers send it without a key)
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After", *CLASSIFY_HEADERS], max_age=600)
    app.add_middleware(RequestIdMiddleware)      # every answer carries its id, a preflight's too
    app.add_middleware(QuietStartupFailure, runtime=runtime)
    return app

"""The web console at `/`: plain HTML, CSS and JavaScript modules from `console/`, no build step
and nothing loaded from elsewhere (the page's Content-Security-Policy allows this server only).

The console is a client of the public HTTP API like any other: it holds no state on the server.
`/` serves the page; its assets are under `/console/`. Every URL in the page is relative, so it
also works behind a proxy that serves lpt-serve under a path prefix.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

CONSOLE_DIR = Path(__file__).parent / "console"
# 'self' only: a page that tried to load a script, a style or a font from a CDN would break here
# first. The charts are drawn on a canvas; the bars are styled elements.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


def install(app: FastAPI, directory: Path = CONSOLE_DIR) -> None:
    """Add GET / (the console page) and its assets under /console/."""
    app.mount("/console", StaticFiles(directory=directory), name="console")
    index = directory / "index.html"

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def console_page():
        # no-cache: a new version's page is fetched again (its assets carry ETags of their own)
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff"})

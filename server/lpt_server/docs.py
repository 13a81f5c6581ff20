"""/docs without any CDN.

With the `fastapi-offline` package installed (a dependency of lpt-serve), the real Swagger UI
is served from its bundled JavaScript and CSS under /docs/static. Without it, a small
self-contained page lists the routes from /openapi.json: still offline, only plainer.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")


def swagger_assets() -> Path | None:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    static = Path(spec.origin).parent / "static"
    return static if all((static / a).is_file() for a in ASSETS) else None


FALLBACK = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} .op{border:1px solid #ddd;border-radius:6px;margin:.6em 0;padding:.5em .8em}
.m{display:inline-block;min-width:4.5em;font-weight:bold;font-family:monospace}
.get{color:#1a7f37}.post{color:#0550ae}.put{color:#9a6700}.delete{color:#cf222e}
code,pre{font-family:ui-monospace,monospace;font-size:12px} pre{background:#f6f8fa;padding:.5em;overflow:auto}
summary{cursor:pointer}
</style></head>
<body><h1>%(title)s</h1>
<p>The full schema is at <a href="%(openapi)s">%(openapi)s</a>. (Install <code>fastapi-offline</code> for Swagger UI.)</p>
<div id="ops">loading...</div>
<script>
fetch(%(openapi_js)s).then(r => r.json()).then(spec => {
  const ops = document.getElementById('ops'); ops.textContent = '';
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [m, op] of Object.entries(methods)) {
      const d = document.createElement('details'); d.className = 'op';
      const s = document.createElement('summary');
      s.innerHTML = '<span class="m ' + m + '"></span> <code></code> <span></span>';
      s.children[0].textContent = m.toUpperCase(); s.children[1].textContent = path;
      s.children[2].textContent = op.summary || '';
      d.appendChild(s);
      const pre = document.createElement('pre');
      pre.textContent = JSON.stringify({description: op.description, parameters: op.parameters,
        requestBody: op.requestBody, responses: op.responses}, null, 2);
      d.appendChild(pre); ops.appendChild(d);
    }
  }
  const sch = document.createElement('details'); sch.className = 'op';
  sch.innerHTML = '<summary>schemas</summary><pre></pre>';
  sch.children[1].textContent = JSON.stringify((spec.components || {}).schemas, null, 2);
  ops.appendChild(sch);
}).catch(e => { document.getElementById('ops').textContent = 'could not load the schema: ' + e; });
</script></body></html>
"""


def install(app: FastAPI, assets: Path | None = None) -> str:
    """Add GET /docs; returns which kind of page it serves (shown in /info)."""
    openapi = app.openapi_url or "/openapi.json"
    if assets is not None:
        app.mount("/docs/static", StaticFiles(directory=assets), name="docs-static")

        @app.get("/docs", include_in_schema=False)
        async def swagger_ui():
            return get_swagger_ui_html(openapi_url=openapi, title=f"{app.title} - docs",
                                       swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                       swagger_css_url="/docs/static/swagger-ui.css",
                                       swagger_favicon_url="/docs/static/favicon.png",
                                       oauth2_redirect_url=None)

        return "swagger-ui (fastapi-offline assets)"

    import json

    page = FALLBACK % {"title": f"{app.title} - API", "openapi": openapi, "openapi_js": json.dumps(openapi)}

    @app.get("/docs", include_in_schema=False)
    async def plain_docs():
        return HTMLResponse(page)

    return "builtin route list"

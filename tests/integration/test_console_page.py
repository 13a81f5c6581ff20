"""The console at `/` is served by the server itself: every asset it names loads from this server
(no CDN, a self-only Content-Security-Policy), its JavaScript modules are served as JavaScript and
import only each other, and the package ships every console file. (What the page does is tested in
a real browser: tests/e2e/test_console_browser.py.)"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
from tiny_server import running

from lpt_server.console import CONSOLE_DIR

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
URL_ATTR = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
IMPORT = re.compile(r"""^\s*import\b[^'"]*["']([^"']+)["']""", re.M)


def console_files() -> list[Path]:
    files = sorted(p for p in CONSOLE_DIR.rglob("*") if p.is_file())
    assert {"index.html", "main.js", "console.css"} <= {p.name for p in files}, files
    return files


@pytest.mark.asyncio
async def test_the_page_and_every_asset_it_names_come_from_this_server(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        page = await c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert (await c.head("/")).status_code == 200
        urls = URL_ATTR.findall(page.text)
        assert "console/main.js" in urls and "console/console.css" in urls and "docs" in urls
        for url in urls:
            assert not re.match(r"(https?:)?//", url), f"the page loads {url} from elsewhere"
            assert not url.startswith("/"), f"{url}: absolute, breaks under a path prefix"
            if not url.startswith(("data:", "#")):
                assert (await c.get("/" + url)).status_code == 200, url
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), "an inline script: the CSP blocks it"
        assert not re.search(r"\sstyle=", page.text), "an inline style attribute: the CSP blocks it"


@pytest.mark.asyncio
async def test_every_module_is_served_as_javascript_and_imports_only_console_modules(tmp_path, tiny_bb):
    modules = [p for p in console_files() if p.suffix == ".js"]
    async with running(tmp_path, tiny_bb) as (app, c):
        for path in modules:
            r = await c.get(f"/console/{path.name}")
            # a module script with another MIME type is refused by the browser
            assert r.status_code == 200 and "javascript" in r.headers["content-type"], (path.name, r.headers)
            for target in IMPORT.findall(r.text):
                assert target.startswith("./") and (CONSOLE_DIR / target).is_file(), f"{path.name} imports {target}"
            assert not re.search(r"""fetch\(\s*["'`]/""", r.text), f"{path.name}: an absolute API URL"
        missing = await c.get("/console/nothing-here.js")
        assert missing.status_code == 404 and missing.json()["error"]["type"]


def test_the_package_data_ships_every_console_file():
    """A non-editable install copies only what pyproject's package-data names."""
    # (read with a pattern, not tomllib: the project supports Python 3.10, which has no tomllib)
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    patterns = re.findall(r'"([^"]+)"', re.search(r"^lpt_server\s*=\s*\[(.*?)\]", section, re.M | re.S).group(1))
    package = CONSOLE_DIR.parent
    for path in console_files():
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), \
            f"{rel} is not in pyproject's package-data for lpt_server: a wheel would not ship it"

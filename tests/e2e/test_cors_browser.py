"""A web page on another origin calls the API from headless Chromium: with its origin in
LPT_CORS_ORIGINS it classifies (with a key, after the browser's own preflight) and reads the
request id and a 401's message; without it, the browser keeps every answer from the page."""
from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from browser import chromium, require_chromium, wait
from thread_server import serving
from tiny_server import adapter_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

require_chromium()     # else the module is skipped, saying what installs it

PAGE = """<!doctype html><meta charset="utf-8"><title>another app</title><pre id="out">waiting</pre>
<script>
async function call(api, key) {
  const headers = {"Content-Type": "application/json"};
  if (key) headers.Authorization = "Bearer " + key;
  try {
    const r = await fetch(api + "/v1/classify", {method: "POST", headers,
                          body: JSON.stringify({inputs: "great film", task: "sent"})});
    const body = await r.json();
    return r.status + " " + (r.headers.get("X-Request-ID") ? "id " : "no-id ") +
           (body.error ? body.error.message : body.results[0][0].label);
  } catch (e) {
    return "blocked: " + e;
  }
}
const q = new URLSearchParams(location.search);
Promise.all([call(q.get("api"), "reader"), call(q.get("api"), "")]).then(
  (out) => { document.getElementById("out").textContent = out.join("\\n"); });
</script>"""


class Page:
    """The page above, served from its own origin (another port on loopback)."""

    def __init__(self, root):
        (root / "index.html").write_text(PAGE)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def results(browser, page: Page, api: str) -> list[str]:
    browser.get(f"{page.origin}/index.html?api={api}")
    text = wait(browser, lambda d: (t := d.find_element("id", "out").text) != "waiting" and t, what="the calls")
    return text.splitlines()


def test_a_page_on_an_allowed_origin_calls_the_api_and_one_on_another_cannot(browser, tmp_path):
    (tmp_path / "site").mkdir()
    page = Page(tmp_path / "site")
    try:
        with serving(tmp_path / "allowed", cors_origins=page.origin, api_key="reader",
                     admin_key="writer") as (app, url, bb):
            assert httpx.put(f"{url}/v1/adapters/sent", content=adapter_file(bb, "sent"),
                             headers={"Authorization": "Bearer writer"}).status_code == 201
            ok, refused = results(browser, page, url)
            assert ok.startswith("200 id ") and ok.split()[-1] in ("neg", "pos"), ok
            assert refused.startswith("401 id ") and "key" in refused, refused
        with serving(tmp_path / "other", cors_origins="https://somewhere.else.example", api_key="reader",
                     admin_key="writer") as (app, url, bb):
            assert httpx.put(f"{url}/v1/adapters/sent", content=adapter_file(bb, "sent"),
                             headers={"Authorization": "Bearer writer"}).status_code == 201
            assert results(browser, page, url) == ["blocked: TypeError: Failed to fetch"] * 2
    finally:
        page.close()
        browser.get("about:blank")

"""Pages on other origins (LPT_CORS_ORIGINS): preflights answered before the key check, every
answer (errors included) readable by an allowed origin and by no other; none without the setting.
A real browser checks the same in tests/e2e/test_cors_browser.py."""
import pytest

from tiny_server import adapter_file, running, upload

pytestmark = pytest.mark.integration
APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.mark.asyncio
async def test_an_allowed_origin_may_call_and_read_every_answer(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, cors_origins=f"{APP},http://localhost:3000", api_key="reader") as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        r = await c.options("/v1/classify", headers=PREFLIGHT)           # no key: browsers send none here
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
        assert r.headers["x-request-id"]                                   # a preflight's answer has its id too
        assert {"authorization", "content-type"} <= set(r.headers["access-control-allow-headers"].lower().split(", "))
        assert "POST" in r.headers["access-control-allow-methods"]
        body = {"inputs": "great film", "task": "sent"}
        ok = await c.post("/v1/classify", json=body, headers={"Origin": APP, "Authorization": "Bearer reader"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP
        exposed = set(ok.headers["access-control-expose-headers"].lower().split(", "))
        assert {h for h in ok.headers if h.startswith("x-")} <= exposed      # every header of the answer
        refused = await c.post("/v1/classify", json=body, headers={"Origin": APP})   # no key: a 401 it can read
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == APP
        for method, path, headers in [("PUT", "/v1/adapters/x", "authorization,content-type"),
                                      ("DELETE", "/v1/adapters/x", "authorization"), ("HEAD", "/health", "x-request-id")]:
            r = await c.options(path, headers={"Origin": APP, "Access-Control-Request-Method": method,
                                               "Access-Control-Request-Headers": headers})
            assert r.status_code == 200, (method, r.text)
        other = await c.options("/v1/classify", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        answer = await c.post("/v1/classify", json=body, headers={"Origin": "https://evil.example",
                                                                  "Authorization": "Bearer reader"})
        assert "access-control-allow-origin" not in answer.headers       # the browser keeps it from the page


@pytest.mark.asyncio
async def test_any_origin_with_a_star_and_none_without_the_setting(tmp_path, tiny_bb):
    async with running(tmp_path / "a", tiny_bb, cors_origins="*") as (app, c):
        r = await c.get("/health", headers={"Origin": "https://anything.example"})
        assert r.headers["access-control-allow-origin"] == "*"
    async with running(tmp_path / "b", tiny_bb) as (app, c):
        r = await c.get("/health", headers={"Origin": APP})
        assert "access-control-allow-origin" not in r.headers
        r = await c.options("/v1/classify", headers=PREFLIGHT)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


def test_origins_are_checked_when_the_server_starts():
    from pydantic import ValidationError

    from lpt_server.settings import Settings

    # written as browsers send them (the comparison is by string): lowercase, no default port, IPv6 short
    assert Settings(cors_origins=" https://App.Example:443/ , http://[0:0:0:0:0:0:0:1]:8080,http://h:80 ") \
        .cors_origin_list == ["https://app.example", "http://[::1]:8080", "http://h"]
    for bad, why in [("https://a.example/app", "not an origin"), ("a.example", "not an origin"),
                     ("*,https://a.example", "give it alone"), ("http://a..b", "not a host name"),
                     ("https://x:99999", "not an origin"), ("ftp://a.example", "not an origin")]:
        with pytest.raises(ValidationError, match=why):
            Settings(cors_origins=bad)

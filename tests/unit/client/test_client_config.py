"""Settings come from arguments, then LPT_* environment variables, then defaults."""

from __future__ import annotations

import re

import httpx
import pytest

from lpt_client import AsyncClient, Client
from lpt_server.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults(server) -> None:
    with Client(transport=server.transport) as client:
        assert client.base_url == "http://127.0.0.1:8080"
        client.health()
    assert str(server.last.url) == "http://127.0.0.1:8080/health"
    assert "authorization" not in server.last.headers


def test_environment(server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPT_URL", "http://env.test:9000/")
    monkeypatch.setenv("LPT_API_KEY", "env-api")
    monkeypatch.setenv("LPT_ADMIN_KEY", "env-admin")
    with Client(transport=server.transport) as client:
        client.list_adapters()
        assert str(server.last.url) == "http://env.test:9000/v1/adapters"
        assert server.last.headers["authorization"] == "Bearer env-api"
        client.delete_adapter("sentiment")
        assert server.last.headers["authorization"] == "Bearer env-admin"


def test_arguments_beat_environment(server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPT_URL", "http://env.test")
    monkeypatch.setenv("LPT_API_KEY", "env-api")
    with Client("http://arg.test", api_key="arg-api", transport=server.transport) as client:
        client.list_adapters()
    assert server.last.url.host == "arg.test"
    assert server.last.headers["authorization"] == "Bearer arg-api"


def test_empty_environment_values_count_as_unset(server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPT_URL", "")
    monkeypatch.setenv("LPT_API_KEY", "")
    with Client(transport=server.transport) as client:
        client.list_adapters()
    assert server.last.url.host == "127.0.0.1"
    assert "authorization" not in server.last.headers


def test_writes_send_no_api_key_when_admin_key_missing(server) -> None:
    with Client("http://lpt.test", api_key="api", transport=server.transport) as client:
        client.delete_adapter("sentiment")
    assert "authorization" not in server.last.headers


def test_reads_send_the_admin_key_when_no_api_key(server) -> None:
    # the server takes the admin key wherever it takes the API key
    with Client("http://lpt.test", admin_key="adm", transport=server.transport) as client:
        client.list_adapters()
        assert server.last.headers["authorization"] == "Bearer adm"
    with Client("http://lpt.test", api_key="api", admin_key="adm", transport=server.transport) as c:
        c.list_adapters()
        assert server.last.headers["authorization"] == "Bearer api"


def test_base_url_path_prefix_is_kept(server) -> None:
    server.on("GET", "/lpt/health", server.reply(200, {"status": "ok"}))
    with Client("http://lb.test/lpt/", transport=server.transport) as client:
        assert client.base_url == "http://lb.test/lpt"
        client.health()
    assert server.last.url.path == "/lpt/health"


def test_injected_http_client_is_used_and_not_closed(server) -> None:
    http = httpx.Client(transport=server.transport, base_url="http://injected.test")
    with Client(http_client=http, api_key="k") as client:
        client.list_adapters()
    assert server.last.url.host == "injected.test"
    assert not http.is_closed
    http.close()


def test_owned_http_client_is_closed(server) -> None:
    client = Client(transport=server.transport)
    client.close()
    assert client._http.is_closed


def test_transport_and_http_client_are_exclusive(server) -> None:
    with pytest.raises(ValueError):
        Client(transport=server.transport, http_client=httpx.Client())
    with pytest.raises(ValueError):
        AsyncClient(transport=httpx.MockTransport(server), http_client=httpx.AsyncClient())


@pytest.mark.asyncio
async def test_async_environment(server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPT_URL", "http://env.test")
    monkeypatch.setenv("LPT_ADMIN_KEY", "env-admin")
    http = httpx.AsyncClient(transport=server.transport)
    async with AsyncClient(http_client=http) as client:
        await client.upload_adapter("sentiment", data=b"w")
    assert str(server.last.url) == "http://env.test/v1/adapters/sentiment"
    assert server.last.headers["authorization"] == "Bearer env-admin"
    assert not http.is_closed
    await http.aclose()


def test_timeout_is_applied_to_the_created_client(server) -> None:
    with Client(transport=server.transport, timeout=2.5) as client:
        assert client._http.timeout == httpx.Timeout(2.5)
    with Client(transport=server.transport) as client:
        default = client._http.timeout.read
    # past the server's own deadline, so a request it gives up on comes back as its 504
    assert default > Settings.model_fields["request_timeout_s"].default
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="timeout must be a number of seconds above 0"):
            Client(transport=server.transport, timeout=bad)


@pytest.mark.parametrize("url, says", [
    ("http://[::1", r"base_url \(--url\) is not a valid URL"),
    ("http://a\nb", "non-printable"),
    ("localhost:8080", "must be an http:// or https:// URL with a host"),
    ("ftp://files.test", "must be an http:// or https:// URL"),
])
def test_a_url_that_cannot_be_used_is_refused_when_the_client_is_made(server, url, says) -> None:
    with pytest.raises(ValueError, match=says):
        Client(url, transport=server.transport)
    assert server.requests == []


@pytest.mark.parametrize("key, where", [("sécret", "character 2 of 6 is U+00E9"), ("abc\n", "character 4 of 4 is U+000A"),
                                        ("a b", "character 2 of 3 is a space")])
def test_a_key_that_cannot_go_in_a_header_is_refused_without_quoting_it(server, monkeypatch, key, where) -> None:
    with pytest.raises(ValueError, match=re.escape(f"api_key (--api-key) cannot be sent in an HTTP header: {where}")) as err:
        Client(api_key=key, transport=server.transport)
    assert key not in str(err.value)
    monkeypatch.setenv("LPT_ADMIN_KEY", key)
    with pytest.raises(ValueError, match="^" + re.escape(f"LPT_ADMIN_KEY cannot be sent in an HTTP header: {where}")):
        Client(transport=server.transport)

"""A refused or missing key: the CLI says which variable or flag to set, not which HTTP header."""

from __future__ import annotations

import pytest

from lpt_client.cli import main

pytestmark = pytest.mark.unit

URL = ["--url", "http://lpt.test"]
# what the server answers (server/lpt_server/auth.py): it speaks HTTP, the CLI speaks flags
MISSING_ADMIN = {"error": {"type": "unauthorized",
                           "message": "missing admin key: send 'Authorization: Bearer <LPT_ADMIN_KEY>'"}}
MISSING_API = {"error": {"type": "unauthorized",
                         "message": "missing API key: send 'Authorization: Bearer <LPT_API_KEY>'"}}
WRONG_ADMIN = {"error": {"type": "forbidden", "message": "wrong admin key"}}


@pytest.fixture(autouse=True)
def no_keys_in_env(monkeypatch) -> None:
    for name in ("LPT_API_KEY", "LPT_ADMIN_KEY", "LPT_URL"):
        monkeypatch.delenv(name, raising=False)


def run(server, *argv: str) -> int:
    return main([*argv, *URL, "--max-retries", "0"], transport=server.transport)


@pytest.mark.parametrize("argv", [["adapters", "upload", "sentiment", "FILE"], ["adapters", "delete", "sentiment"]])
def test_a_write_without_the_admin_key_names_the_variable_and_the_flag(server, capsys, tmp_path, argv) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    argv = [str(tmp_path / "a.safetensors") if a == "FILE" else a for a in argv]
    method = "PUT" if "upload" in argv else "DELETE"
    server.on(method, "/v1/adapters/sentiment", server.reply(401, MISSING_ADMIN))
    assert run(server, *argv) == 5
    err = capsys.readouterr().err
    assert "no admin key given: set LPT_ADMIN_KEY or pass --admin-key" in err, err
    assert "Authorization" not in err and "Bearer" not in err, err
    assert "authorization" not in server.last.headers


def test_a_read_without_the_api_key_names_the_api_key(server, capsys) -> None:
    server.on("POST", "/v1/classify", server.reply(401, MISSING_API))
    assert run(server, "classify", "--task", "sentiment", "x") == 5
    err = capsys.readouterr().err
    assert "no API key given: set LPT_API_KEY or pass --api-key" in err, err
    assert "Authorization" not in err


@pytest.mark.parametrize("key_args", [["--admin-key", "nope"], []])
def test_a_refused_admin_key_says_what_to_check_and_keeps_the_servers_words(
    server, capsys, monkeypatch, key_args
) -> None:
    if not key_args:
        monkeypatch.setenv("LPT_ADMIN_KEY", "nope")   # from the environment counts as given
    server.on("DELETE", "/v1/adapters/sentiment", server.reply(403, WRONG_ADMIN))
    assert run(server, "adapters", "delete", "sentiment", *key_args) == 5
    err = capsys.readouterr().err
    assert "403 forbidden: the server refused the admin key given: set LPT_ADMIN_KEY" in err, err
    assert "(the server said: wrong admin key)" in err, err
    assert server.last.headers["authorization"] == "Bearer nope"


def test_a_read_sent_with_the_admin_key_counts_as_given(server, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LPT_ADMIN_KEY", "adm")        # sent for reads too when no API key is set
    server.on("POST", "/v1/classify", server.reply(401, {"error": {"type": "unauthorized",
                                                                  "message": "invalid API key"}}))
    assert run(server, "classify", "--task", "sentiment", "x") == 5
    err = capsys.readouterr().err
    assert "the server refused the API key given: set LPT_API_KEY (or pass --api-key)" in err, err

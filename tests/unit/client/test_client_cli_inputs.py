"""What the CLI does with input it cannot send or answers it must not lose: a clear usage error
(exit 2) before any request instead of a traceback, and every part of the server's answer shown."""

from __future__ import annotations

import io
import json
import sys

import pytest

from lpt_client.cli import main

pytestmark = pytest.mark.unit

URL = ["--url", "http://lpt.test"]


def run(server, *argv: str) -> int:
    return main([*argv, "--max-retries", "0"], transport=server.transport)


@pytest.mark.parametrize("argv, says", [
    (["classify", "--task", "s", "x", "--url", "http://[::1"], r"base_url (--url) is not a valid URL"),
    (["classify", "--task", "s", "x", "--url", "localhost:8080"], "must be an http:// or https:// URL"),
    (["classify", "--task", "s", "x", *URL, "--api-key", "clé"], "api_key (--api-key) cannot be sent in an HTTP header"),
    (["adapters", "delete", "x", *URL, "--admin-key", "k\n"], "admin_key (--admin-key) cannot be sent"),
    (["classify", "--task", "s", "x", *URL, "--timeout", "0"], "--timeout: must be a number of seconds above 0"),
    (["classify", "--task", "s", "x", *URL, "--timeout", "nan"], "--timeout: must be a number of seconds above 0"),
    (["adapters", "show", "", *URL], "an adapter name must not be empty"),
    (["train", "--task", "t", "--data", "FILE", *URL, "--poll", "0"], "--poll: must be a number of seconds above 0"),
])
def test_arguments_that_cannot_be_sent_are_a_usage_error_before_any_request(
        server, capsys, tmp_path, argv, says) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    argv = [str(tmp_path / "train.csv") if a == "FILE" else a for a in argv]
    assert run(server, *argv) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err and "clé" not in err
    assert server.requests == []          # nothing queued on the server, no training job started


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_texts_that_are_not_utf8_are_a_usage_error_naming_the_byte_and_line(
        server, capsys, tmp_path, monkeypatch, source) -> None:
    data = "first\nsecond caf".encode() + b"\xe9\n"         # latin-1, not UTF-8
    path = tmp_path / "texts.txt"
    path.write_bytes(data)
    if source == "file":
        code = run(server, "classify", "--task", "s", *URL, "--file", str(path))
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="latin-1"))
        code = run(server, "classify", "--task", "s", *URL, "-")
    assert code == 2
    err = capsys.readouterr().err
    name = str(path) if source == "file" else "standard input"
    assert f"{name} is not UTF-8 text: byte 0xe9 on line 2" in err, err
    assert server.requests == []


def test_utf8_stdin_is_read_as_utf8_whatever_the_locale(server, capsys, monkeypatch) -> None:
    data = "\ufeffcafé\nnaïve\n".encode()                    # with a byte-order mark
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="ascii"))
    assert run(server, "classify", "--task", "s", *URL) == 0
    assert json.loads(server.last.content)["inputs"] == ["café", "naïve"]


def truncating(request):
    """The server's answer when it cut inputs 1 and 2 of the batch to its token limit."""
    import httpx
    body = json.loads(request.content)
    results = [[{"task": "s", "label": "a", "score": 0.5}] for _ in body["inputs"]]
    cut = [i for i, text in enumerate(body["inputs"]) if text.startswith("long")]
    return httpx.Response(200, json={"results": results, **({"truncated_inputs": cut} if cut else {})})


def test_truncated_inputs_are_marked_in_json_lines_and_counted_on_stderr(server, capsys) -> None:
    server.on("POST", "/v1/classify", truncating)
    texts = ["short", "long one", "short again", "long two"]
    assert run(server, "classify", "--task", "s", *URL, "--batch-size", "3", *texts) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["input"] for line in lines] == texts
    assert [line.get("truncated", False) for line in lines] == [False, True, False, True]
    assert "2 of 4 inputs were cut to the server's token limit (LPT_MAX_INPUT_TOKENS)" in err, err


@pytest.mark.parametrize("flag, sent", [([], None), (["--truncate"], True), (["--no-truncate"], False)])
def test_the_truncate_flag_is_sent_only_when_given(server, capsys, flag, sent) -> None:
    server.on("POST", "/v1/classify", truncating)
    assert run(server, "classify", "--task", "s", *URL, *flag, "short") == 0
    assert json.loads(server.requests[-1].content).get("truncate") == sent


def test_truncated_inputs_are_marked_in_the_table(server, capsys, monkeypatch) -> None:
    server.on("POST", "/v1/classify", truncating)
    out = io.StringIO()
    out.isatty = lambda: True                                  # a terminal: the table
    monkeypatch.setattr(sys, "stdout", out)
    long_text = "long " + "word " * 300                          # far wider than the INPUT column
    assert run(server, "classify", "--task", "s", *URL, "short", long_text) == 0
    rows = out.getvalue().splitlines()[1:]
    assert rows[0].startswith("short ") and "[truncated]" not in rows[0]
    assert rows[1].startswith(long_text[:45] + "... [truncated] "), rows
    assert "1 of 2 inputs were cut" in capsys.readouterr().err


def test_writes_disabled_on_the_server_is_said_as_the_server_says_it(server, capsys) -> None:
    message = "adapter writes are disabled: start the server with LPT_ADMIN_KEY (or --admin-key) set"
    server.on("DELETE", "/v1/adapters/sentiment",
              server.reply(403, {"error": {"type": "writes_disabled", "message": message}}))
    assert run(server, "adapters", "delete", "sentiment", *URL) == 5
    err = capsys.readouterr().err
    assert f"403 writes_disabled: {message}" in err, err
    assert "no admin key given" not in err


def test_a_redirect_names_where_it_points(server, capsys) -> None:
    server.on("GET", "/v1/adapters",
              server.reply(308, headers={"Location": "https://lpt.test/v1/adapters"}))
    assert run(server, "adapters", "list", *URL) == 3
    err = capsys.readouterr().err
    assert "308 redirect: the server redirects to https://lpt.test/v1/adapters" in err, err
    assert "set the URL (LPT_URL, --url)" in err

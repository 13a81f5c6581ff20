"""The CLI: requests it sends, what it prints, and its exit codes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import httpx
import pytest

from lpt_client.cli import main

pytestmark = pytest.mark.unit

URL = ["--url", "http://lpt.test"]


def run(server, *argv: str) -> int:
    return main(list(argv), transport=server.transport)


def sent(server) -> list[dict]:
    return [json.loads(r.content) for r in server.requests]


def test_classify_two_tasks_prints_jsonl(server, capsys) -> None:
    code = run(server, "classify", "--task", "sentiment", "--task", "topic", *URL,
               "--api-key", "k", "good one", "bad one")
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["input"] for line in lines] == ["good one", "bad one"]
    assert [[r["task"] for r in line["results"]] for line in lines] == [["sentiment", "topic"]] * 2
    assert lines[0]["results"][0] == {"task": "sentiment", "label": "positive", "score": 0.75}
    assert sent(server) == [{"inputs": ["good one", "bad one"], "tasks": ["sentiment", "topic"]}]
    assert server.last.headers["authorization"] == "Bearer k"
    assert str(server.last.url) == "http://lpt.test/v1/classify"


def test_classify_raw_scores(server, capsys) -> None:
    assert run(server, "classify", "--task", "s", "--raw-scores", "--json", *URL, "good") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["results"][0]["scores"] == {"negative": 0.25, "positive": 0.75}
    assert sent(server)[0]["raw_scores"] is True


@pytest.mark.parametrize("args", [["-"], []])
def test_classify_reads_stdin(server, capsys, monkeypatch, args) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("good a\n\n  \nbad b\n"))
    assert run(server, "classify", "--task", "s", *URL, *args) == 0
    assert sent(server)[0]["inputs"] == ["good a", "bad b"]
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_classify_reads_file_in_batches(server, capsys, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert run(server, "classify", "--task", "s", "--file", str(texts), "--batch-size", "2",
               *URL) == 0
    assert [body["inputs"] for body in sent(server)] == [["one", "two"], ["three"]]
    out = [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()]
    assert out == ["one", "two", "three"]


def test_classify_prints_a_table_on_a_terminal(server, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert run(server, "classify", "--task", "sentiment", "--task", "topic", *URL, "good") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["INPUT", "TASK", "LABEL", "SCORE"]
    assert lines[1].split() == ["good", "sentiment", "positive", "0.7500"]
    assert lines[2].split() == ["topic", "positive", "0.7500"]


def test_adapters_list_json_and_table(server, capsys) -> None:
    assert run(server, "adapters", "list", "--json", *URL) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [server.ADAPTER]
    assert run(server, "adapters", "list", *URL) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["NAME", "VERSION"]
    assert table[1].split()[:2] == ["sentiment", "ab" * 6]


def test_adapters_show(server, capsys) -> None:
    assert run(server, "adapters", "show", "sentiment", "--json", *URL) == 0
    assert json.loads(capsys.readouterr().out) == server.ADAPTER
    assert run(server, "adapters", "show", "sentiment", *URL) == 0
    assert "labels         negative, positive" in capsys.readouterr().out


def test_adapters_upload(server, capsys, tmp_path: Path) -> None:
    file = tmp_path / "a.safetensors"
    file.write_bytes(b"weights")
    code = run(server, "adapters", "upload", "sentiment", str(file), "--admin-key", "adm", *URL)
    assert code == 0
    assert capsys.readouterr().out == f"created adapter sentiment version {'ab' * 6}\n"
    assert server.last.method == "PUT" and server.last.content == b"weights"
    assert server.last.headers["authorization"] == "Bearer adm"
    assert run(server, "adapters", "upload", "sentiment", str(file), "--json", *URL) == 0
    assert json.loads(capsys.readouterr().out)["created"] is True


def test_adapters_delete(server, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LPT_ADMIN_KEY", "env-admin")
    assert run(server, "adapters", "delete", "sentiment", *URL) == 0
    assert capsys.readouterr().out == "deleted adapter sentiment\n"
    assert server.last.method == "DELETE"
    assert server.last.headers["authorization"] == "Bearer env-admin"
    assert run(server, "adapters", "delete", "sentiment", "--json", *URL) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "sentiment"}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["classify", "hello"],  # no --task
        ["adapters"],
        ["adapters", "show"],
        ["adapters", "frobnicate"],
        ["classify", "--task", "s", "--batch-size", "0", "x"],
        ["classify", "--task", "s", "--file", "/nonexistent/texts.txt"],
        ["classify", "--task", "s", "--file", "/dev/null", "also a text"],
        ["adapters", "upload", "x", "/nonexistent/file.safetensors"],
        ["classify", "--task", "s", "--max-retries", "-1", "x"],
    ],
)
def test_usage_errors_exit_2(server, capsys, argv) -> None:
    assert run(server, *argv) == 2
    assert capsys.readouterr().err
    assert server.requests == []


def test_empty_stdin_is_a_usage_error(server, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n\n"))
    assert run(server, "classify", "--task", "s") == 2
    assert "no texts" in capsys.readouterr().err


def test_help_exits_0(server, capsys) -> None:
    assert run(server, "classify", "--help") == 0
    assert "--task" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 3), (413, 3), (422, 3), (404, 4), (401, 5), (403, 5), (429, 6), (500, 6), (503, 6),
     (504, 6)],
)
def test_server_errors_map_to_exit_codes(server, capsys, status: int, code: int) -> None:
    body = {"error": {"type": "some_type", "message": "what went wrong"}}
    server.on("POST", "/v1/classify", server.reply(status, body))
    argv = ["classify", "--task", "s", "--max-retries", "0", "--api-key", "k", *URL, "x"]
    assert run(server, *argv) == code
    err = capsys.readouterr().err
    assert "some_type" in err and "what went wrong" in err


def test_connection_failure_exits_6(server, capsys) -> None:
    server.on("GET", "/v1/adapters", server.fail_with(httpx.ConnectError))
    assert run(server, "adapters", "list", "--max-retries", "0", *URL) == 6
    assert "cannot reach" in capsys.readouterr().err


def test_unknown_adapter_exits_4(server, capsys) -> None:
    assert run(server, "adapters", "show", "missing", *URL) == 4

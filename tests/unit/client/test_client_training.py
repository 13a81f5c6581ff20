"""The client's training calls against the fake server: the form it sends, how it waits, and
`lpt-client train` (= `lpt train --remote`): options forwarded, exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lpt_client import Timeout
from lpt_client.cli import main
from lpt_client.train_cli import OptionError, options

pytestmark = pytest.mark.unit


def job(state: str, step: int = 0, **extra) -> dict:
    return {"id": "j1", "task": "my-task", "state": state, "created_at": 1.0,
            "progress": {"epoch": 1, "epochs": 1, "step": step, "steps": 4, "loss": 0.5, "dev_accuracy": None},
            "history": [], "error": None, "adapter": None, "metrics": None, **extra}


DONE = job("succeeded", 4, adapter={"name": "my-task", "version": "cd" * 32},
           metrics={"dev": {"accuracy": 0.75}, "test": None})


def form(request) -> dict[str, list[str]]:
    """The multipart fields of a request (name -> values), files as "<file name>:<content>"."""
    body = request.content.decode()
    out: dict[str, list[str]] = {}
    for part in body.split("--" + request.headers["content-type"].split("boundary=")[1])[1:-1]:
        head, _, value = part.partition("\r\n\r\n")
        name = re.search(r'name="([^"]+)"', head).group(1)
        filename = re.search(r'filename="([^"]+)"', head)
        value = value.removesuffix("\r\n")
        out.setdefault(name, []).append(f"{filename.group(1)}:{value}" if filename else value)
    return out


def test_train_sends_the_files_and_options_as_a_form(server, client, tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,x\n")
    server.on("POST", "/v1/train", server.reply(202, job("queued")))
    started = client.train("my-task", tmp_path / "train.csv", dev=("dev.tsv", b"t\tl\n"), epochs=2,
                           labels=["x", "y"], seed=None)
    assert started.id == "j1" and started.state == "queued" and not started.finished
    assert form(server.last) == {"task": ["my-task"], "epochs": ["2"], "labels": ["x", "y"],
                                 "data": ["train.csv:text,label\na,x\n"], "dev": ["dev.tsv:t\tl\n"]}
    assert server.last.headers["authorization"] == f"Bearer {server.ADMIN_KEY}"


def test_wait_training_polls_until_the_job_ends(server, client) -> None:
    server.on("GET", "/v1/train/j1", server.reply(200, job("queued")), server.reply(200, job("running", 2)),
              server.reply(200, DONE))
    seen = []
    done = client.wait_training("j1", poll_s=0.001, on_update=lambda j: seen.append(j.state))
    assert seen == ["queued", "running", "succeeded"] and done.adapter.version == "cd" * 32
    server.on("GET", "/v1/train/j1", server.reply(200, job("running", 2)))
    with pytest.raises(Timeout, match="has not finished in time"):
        client.wait_training("j1", poll_s=0.001, timeout_s=0.05)


def test_list_and_cancel(server, client) -> None:
    server.on("GET", "/v1/train", server.reply(200, {"jobs": [DONE, job("queued")]}))
    assert [j.state for j in client.list_trainings()] == ["succeeded", "queued"]
    server.on("DELETE", "/v1/train/j1", server.reply(200, job("cancelled")))
    assert client.cancel_training("j1").state == "cancelled"


def test_lpt_train_options_become_form_fields() -> None:
    assert options(["--text-column", "review", "--labels", "neg", "pos", "--seed=-1", "--lr", "1e-3"]) == \
        {"text_column": ["review"], "labels": ["neg", "pos"], "seed": ["-1"], "lr": ["1e-3"]}
    with pytest.raises(OptionError, match="--no-cache-states has no value"):
        options(["--no-cache-states"])
    with pytest.raises(OptionError, match="unexpected argument 'stray'"):
        options(["stray"])


def run(server, tmp_path, *argv) -> int:
    (tmp_path / "train.csv").write_text("text,label\na,x\n")
    return main(["train", "--remote", "http://lpt.test", "--admin-key", "k", "--task", "my-task", "--data",
                 str(tmp_path / "train.csv"), "--poll", "0.001", *argv], transport=server.transport)


def test_the_command_follows_the_job_and_exits_by_its_end(server, tmp_path, capsys) -> None:
    server.on("POST", "/v1/train", server.reply(202, job("queued")))
    server.on("GET", "/v1/train/j1", server.reply(200, job("running", 2)), server.reply(200, DONE))
    assert run(server, tmp_path, "--epochs", "3") == 0
    assert capsys.readouterr().out == f"trained my-task: adapter my-task version {'cd' * 6}; dev accuracy 0.7500\n"
    assert form(server.requests[0])["epochs"] == ["3"]

    server.on("GET", "/v1/train/j1", server.reply(200, job("failed", error="train.csv line 2: empty label")))
    assert run(server, tmp_path) == 7
    assert "training job j1 failed: train.csv line 2: empty label" in capsys.readouterr().err

    server.on("POST", "/v1/train", server.reply(400, {"error": {"type": "bad_request", "message": "no column"}}))
    assert run(server, tmp_path) == 3
    assert "no column" in capsys.readouterr().err
    assert run(server, tmp_path, "--no-save") == 2                            # no value to send: usage
    assert main(["classify", "--task", "t", "--bogus", "x"], transport=server.transport) == 2  # others stay strict

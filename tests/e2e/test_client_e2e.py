"""The client's command line against a real `lpt serve` process on the real model, as a user
runs it: `lpt adapters upload/list/delete` and `lpt classify`, configured by LPT_URL and
LPT_ADMIN_KEY, with the exit codes scripts rely on (0 ok, 4 not found, 5 auth)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from serve_process import ADMIN, Server

from lpt import Backbone, Engine, Row, load_adapter, new_adapter, save_adapter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXT = "The new phone is wonderful, shares of the maker rose 5%"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A started server, minilm in this process, and two adapter files made on it."""
    root = tmp_path_factory.mktemp("client_e2e")
    server = Server(root / "store", root / "server.log")
    try:
        bb = Backbone.load("minilm")           # while the server loads its own copy
        files = {}
        for seed, (task, labels) in enumerate([("sentiment", ["negative", "positive"]),
                                               ("topic", ["world", "sports", "business", "tech"])]):
            torch.manual_seed(seed)
            files[task] = root / f"{task}.safetensors"
            save_adapter(new_adapter(bb, task=task, labels=labels, layer=3, prompt_length=5), files[task])
        yield server.wait_ready(), bb, files
    finally:
        server.stop()


def lpt(server: Server, *args: str, admin_key: str | None = ADMIN) -> subprocess.CompletedProcess:
    """`lpt ARGS` in a subprocess, pointed at the server by the environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPT_")}
    env["LPT_URL"] = server.url
    if admin_key:
        env["LPT_ADMIN_KEY"] = admin_key
    exe = shutil.which("lpt")
    cmd = [exe] if exe else [sys.executable, "-m", "lpt_server"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_adapters_and_classify_against_lpt_serve(setup):
    server, bb, files = setup

    done = lpt(server, "adapters", "upload", "sentiment", str(files["sentiment"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("created adapter sentiment version ")
    done = lpt(server, "adapters", "upload", "topic", str(files["topic"]), "--json")
    assert done.returncode == 0, done.stderr
    uploaded = json.loads(done.stdout)
    assert uploaded["created"] is True and uploaded["adapter"]["labels"] == ["world", "sports", "business", "tech"]

    done = lpt(server, "adapters", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert [a["name"] for a in json.loads(done.stdout)] == ["sentiment", "topic"]

    # two tasks on one text, one JSON line per input: the labels the engine here gives
    done = lpt(server, "classify", "--task", "sentiment", "--task", "topic", "--json", TEXT)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    record = json.loads(line)
    assert record["input"] == TEXT and [r["task"] for r in record["results"]] == ["sentiment", "topic"]
    engine = Engine(bb, cache_entries=0)
    for r in record["results"]:
        [want] = engine.predict([Row(load_adapter(files[r["task"]].read_bytes(), bb), TEXT)])
        assert r["label"] == want.label and r["score"] == pytest.approx(want.score, abs=1e-4)

    done = lpt(server, "classify", "--task", "sentiment", "--task", "nope", "--json", TEXT)
    assert done.returncode == 4 and "unknown task 'nope'" in done.stderr and done.stdout == ""

    done = lpt(server, "adapters", "upload", "other", str(files["sentiment"]), admin_key=None)
    assert done.returncode == 5 and "set LPT_ADMIN_KEY or pass --admin-key" in done.stderr

    done = lpt(server, "adapters", "delete", "topic")
    assert done.returncode == 0 and done.stdout == "deleted adapter topic\n", done.stderr
    done = lpt(server, "adapters", "delete", "topic")
    assert done.returncode == 4 and "no adapter named 'topic'" in done.stderr
    done = lpt(server, "adapters", "list", "--json")
    assert [a["name"] for a in json.loads(done.stdout)] == ["sentiment"]

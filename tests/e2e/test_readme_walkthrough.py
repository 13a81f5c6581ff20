"""The README, followed in order as a new user would: every bash and python block runs, against
real `lpt serve` processes started by the README's own commands, on the real model.

What the test changes, and only this: the servers listen on a free port instead of 8080 (the
commands' `localhost:8080` is rewritten, `LPT_PORT`/`LPT_URL` point there); the store's per-user
data directory is a temporary one (`XDG_DATA_HOME`); `scripts/install.sh` is not run again (this
test runs in the environment it made); `curl` fails on an HTTP error status (`--fail-with-body`),
as it would not by default. The blocks run in one working directory holding `train.csv`,
`dev.csv` and `test.csv`, the files the README asks the user to bring. The shell blocks share
one environment, like the user's second shell; a block that runs `lpt serve` is the first shell:
it replaces the server running before it.
"""
from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from readme_blocks import README, ROOT, Block, blocks
from serve_process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INSTALL = "scripts/install.sh && "                     # already done: the test runs in what it installed
NOT_RUN = {"scripts/install.sh --test && python3 -m pytest -q": "the test suite itself"}
CURL = 'curl() { command curl --fail-with-body -sS "$@"; echo; }\n'


def write_csv(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    words = {"positive": ["great", "wonderful", "loved it", "excellent"],
             "negative": ["awful", "terrible", "hated it", "boring"]}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = ("positive", "negative")[i % 2]
            w.writerow([f"the film was {rng.choice(words[label])} {rng.choice(['', 'really', 'truly'])}", label])


class Shell:
    """The user's second shell: blocks run in order, exported variables carry over."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd, self.env = cwd, env

    def bash(self, block: Block, code: str) -> str:
        env_file = self.cwd / ".env-after"
        script = CURL + code + f'\nenv -0 > "{env_file}"\n'
        out = self._run(block, ["bash", "-e", "-o", "pipefail", "-c", script])
        self.env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        return out

    def python(self, block: Block) -> str:
        return self._run(block, [sys.executable, "-c", block.code])

    def _run(self, block: Block, argv: list[str]) -> str:
        p = subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, f"{block.where} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p.stdout


class FirstShell:
    """The shell where the README starts `lpt serve`; one server at a time."""

    def __init__(self, cwd: Path, env: dict[str, str], url: str):
        self.cwd, self.env, self.url = cwd, env, url
        self.proc: subprocess.Popen | None = None
        self.log = cwd.parent / "server.log"

    def start(self, block: Block, code: str) -> None:
        self.stop()
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(["bash", "-e", "-c", code], cwd=self.cwd, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{block.where}: the server exited:\n{self.tail()}"
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{block.where}: the server was not ready in 300 s:\n{self.tail()}")

    def stop(self) -> None:
        """Ctrl-C, as the README says: SIGINT to the block's process group (it started it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def tail(self) -> str:
        return self.log.read_bytes()[-4000:].decode(errors="replace")


def test_the_readme_runs_in_order(tmp_path):
    work, data = tmp_path / "work", tmp_path / "data"
    work.mkdir()
    for name, n, seed in (("train.csv", 48, 0), ("dev.csv", 16, 1), ("test.csv", 16, 2)):
        write_csv(work / name, n, seed)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPT_")}
    env.update(XDG_DATA_HOME=str(data), LPT_PORT=str(port), LPT_URL=url, LPT_THREADS="1", OMP_NUM_THREADS="1")
    shell, server = Shell(work, dict(env)), FirstShell(work, dict(env), url)

    outputs: dict[str, str] = {}
    ran = []
    try:
        for block in blocks(README):
            if block.lang == "":                                      # diagrams, the layout tree
                continue
            assert block.lang in ("bash", "python"), f"{block.where}: a {block.lang!r} block; run it or say why not"
            code = block.code.replace("localhost:8080", f"localhost:{port}")
            assert "8080" not in code.replace("# the server at $LPT_URL, default http://127.0.0.1:8080", ""), \
                f"{block.where}: port 8080 used in a way this test does not redirect"
            if block.code.strip() in NOT_RUN:
                continue
            if block.lang == "python":
                outputs[block.where] = shell.python(block)
            elif re.search(r"^(.*\s)?lpt serve\b", code, re.M):
                if code.startswith(INSTALL):
                    assert (ROOT / "scripts" / "install.sh").is_file()
                    code = code[len(INSTALL):]
                server.start(block, code)
            else:
                outputs[block.where] = shell.bash(block, code)
            ran.append(block.where)

        adapters = {a["name"] for a in httpx.get(url + "/v1/adapters").json()["adapters"]}
    finally:
        server.stop()

    assert len(ran) >= 8, ran                       # every block that should run did
    text = "\n".join(outputs.values())
    assert '"task":"sentiment"' in text and '"task":"news-topic"' in text       # the quick start's answer
    assert "wrote my-task.safetensors" in text and "accuracy" in text           # lpt train, lpt eval
    assert (work / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert text.count('"name":"my-task"') >= 2                                   # both curl uploads
    assert "replaced my-task ['negative', 'positive']" in text                   # the Python client
    assert re.search(r"^my-task\s", text, re.M)                                  # lpt adapters list
    # one store through the whole walkthrough: nothing vanished when the server was restarted
    assert {"sentiment", "news-topic", "my-task"} <= adapters
    assert any("my-task" in p.name for p in (data / "lpt-serve" / "adapters").rglob("*"))

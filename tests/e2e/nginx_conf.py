"""docker/nginx.conf made runnable by a real nginx on loopback, without root or containers.

    conf = write(replicas=["127.0.0.1:9001", "127.0.0.1:9002"], listen=9000, workdir=tmp)
    subprocess.Popen(nginx_args(find_nginx(), conf, tmp))

The rendered file is the deployed one with only its addresses and paths changed: the `server`
lines of every upstream block (their parameters kept), the `listen` port, and pid/log/temp paths
under `workdir`. `affinity=False` sends every request to the least-connections pool (task
affinity off, as docker/nginx.conf's comment says to do it); `workers=N` runs N worker processes
instead of one per core (what a check of several workers needs on a machine with few cores).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "docker" / "nginx.conf"

_UPSTREAM = re.compile(r"(upstream\s+[\w-]+\s*\{)(.*?)(\n\s*\})", re.S)
_AFFINITY = re.compile(r"^(\s*default\s+)lpt_by_task;", re.M)
_SERVER = re.compile(r"^(\s*)server\s+\S+(\s[^;]*)?;\s*$", re.M)
TEMP_MODULES = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def find_nginx() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (not on a non-root PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _compiled_temp_modules(nginx: str | None) -> tuple[str, ...]:
    """The *_temp_path directives this nginx knows (a module built --without-* has none)."""
    if nginx is None:
        return TEMP_MODULES
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    return tuple(m for m in TEMP_MODULES if m == "client_body" or f"--without-http_{m}_module" not in out)


def _set_servers(body: str, replicas: list[str], source: Path) -> str:
    """An upstream block's body with its `server` lines replaced by one per replica."""
    lines = list(_SERVER.finditer(body))
    if not lines:
        raise ValueError(f"{source}: an upstream block has no `server` lines")
    indent, params = lines[0].group(1), lines[0].group(2) or ""
    servers = "".join(f"{indent}server {addr}{params};\n" for addr in replicas)
    new_body = body[:lines[0].start()] + servers.rstrip("\n") + _SERVER.sub("", body[lines[0].end():]).rstrip()
    return re.sub(r"\n\s*\n(\s*\n)+", "\n\n", new_body)   # the removed lines leave no gaps


def render(replicas: list[str], listen: int | str, workdir: Path, source: Path = NGINX_CONF,
           nginx: str | None = None, affinity: bool = True, workers: int | None = None) -> str:
    """The deployed config with `replicas` (host:port) as upstreams, listening on `listen`."""
    text = source.read_text()
    if not _UPSTREAM.search(text):
        raise ValueError(f"{source}: no `upstream NAME {{...}}` block")
    text = _UPSTREAM.sub(lambda m: m.group(1) + _set_servers(m.group(2), replicas, source) + m.group(3), text)
    if not affinity:
        text, n = _AFFINITY.subn(r"\1lpt_replicas;", text)
        if n != 1:
            raise ValueError(f"{source}: no `default lpt_by_task;` line in a map")

    if workers is not None:
        text, n = re.subn(r"^worker_processes\s+[^;]+;", f"worker_processes {workers};", text, flags=re.M)
        if n != 1:
            raise ValueError(f"{source}: no `worker_processes` line")
    listen_addr = f"127.0.0.1:{listen}" if str(listen).isdigit() else str(listen)
    text, n = re.subn(r"^(\s*)listen\s+[^;]+;", rf"\1listen {listen_addr};", text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"{source}: no `listen` directive")
    text = re.sub(r"^pid\s+[^;]+;", f"pid {workdir}/nginx.pid;", text, flags=re.M)
    text = re.sub(r"^error_log\s+\S+", f"error_log {workdir}/error.log", text, flags=re.M)
    text = re.sub(r"access_log\s+\S+", f"access_log {workdir}/access.log", text)
    temps = "".join(f"    {m}_temp_path {workdir}/{m}_temp;\n" for m in _compiled_temp_modules(nginx))
    text = re.sub(r"^http\s*\{\n", lambda m: m.group(0) + temps, text, count=1, flags=re.M)
    if os.geteuid() == 0:
        # as root nginx would drop workers to `nobody`, who cannot enter a private temp dir
        text = "user root;\n" + text
    return text


def write(replicas: list[str], listen: int | str, workdir: Path, nginx: str | None = None,
          affinity: bool = True, workers: int | None = None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(render(replicas, listen, workdir, nginx=nginx, affinity=affinity, workers=workers))
    return conf


def nginx_args(nginx: str, conf: Path, workdir: Path) -> list[str]:
    # -p: relative paths under workdir; -e: the startup error log (1.19.5+); foreground
    return [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf), "-g", "daemon off;"]


def check(nginx: str, conf: Path, workdir: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on a rendered config."""
    args = nginx_args(nginx, conf, workdir)[:-2] + ["-t"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)

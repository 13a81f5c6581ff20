#!/usr/bin/env bash
# Trains the two demo adapters shipped in server/lpt_server/demo_adapters/ with `lpt train`
# defaults (LPT, NPG, k=3 of 6, L=5, mean pooling). About 10 minutes on 2 CPU cores.
#   bash bench/train_demos.sh            (from the repository root; THREADS=1 on a busy machine)
set -euo pipefail
DATA=${DATA:-build/data}
OUT=${OUT:-server/lpt_server/demo_adapters}
python bench/data.py --out "$DATA"
python -m lpt.cli train --task sentiment --data "$DATA/sentiment-train.csv" --dev "$DATA/sentiment-dev.csv" \
    --test "$DATA/sentiment-test.csv" --max-length 64 --seed 0 ${THREADS:+--threads $THREADS} --out "$OUT/sentiment.safetensors"
python -m lpt.cli train --task news-topic --data "$DATA/news-topic-train.csv" --dev "$DATA/news-topic-dev.csv" \
    --test "$DATA/news-topic-test.csv" --max-length 128 --seed 0 ${THREADS:+--threads $THREADS} --out "$OUT/news-topic.safetensors"

"""float32 vs bfloat16 vs int8 serving on this machine: speed, and what each changes in the answers.

    python bench/dtype.py [--repeats 5] [--rows 64] [--dtypes float32 int8] [--name dtype-avx2]

The two shipped demo adapters (sentiment, news-topic; trained in float32) on their fixed test
splits (bench/data.py), run by the engine with the backbone in float32 and in bfloat16 (the
adapter is cast to the backbone's dtype on load, as `lpt serve --dtype bfloat16` does), and in
int8 (`--dtype int8`: the blocks' linear layers as dynamic int8 products, the rest float32):
test accuracy in each, the share of rows whose label differs from float32's, the largest change
of a probability; then the time of one mixed-task batch of `rows` tweets (both adapters, layer-k
cache off) in each, interleaved repeats, medians with IQR. bfloat16 is fast on CPUs with AMX
(Sapphire Rapids and later) and slow on CPUs without it; int8 runs on any x86 or ARM CPU.
To see another CPU's kernels on this one, limit oneDNN and MKL: `ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2` (AVX2 without VNNI, as on AMD Zen 2/3) or `AVX512_CORE_VNNI`
(Cascade Lake). Writes bench/results/dtype.json (or NAME.json).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import splits  # noqa: E402
from timing import command_line, interleaved, median_iqr_ms, write_json  # noqa: E402

from lpt import Backbone, Engine, Row, load_adapter  # noqa: E402
from lpt.backbone import cpu_flags  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "server" / "lpt_server" / "demo_adapters"
DTYPES = ("float32", "bfloat16", "int8")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8"}


def bf16_flags() -> list[str]:
    """The CPU features that decide bfloat16's and int8's speed here."""
    return sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16")) or f in ("avx512_vnni", "avx_vnni"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="rows per engine call when scoring the test splits")
    ap.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                    help="float32 and the dtypes to compare with it (default: all)")
    ap.add_argument("--name", default="dtype", help="results file name (default: dtype)")
    args = ap.parse_args(argv)
    dtypes = ["float32", *(d for d in args.dtypes if d != "float32")]

    backbones = {d: Backbone.load("minilm", dtype=d) for d in dtypes}
    adapters = {d: {t: load_adapter((DEMO / f"{t}.safetensors").read_bytes(), bb) for t in ("sentiment", "news-topic")}
                for d, bb in backbones.items()}
    answers: dict = {}
    for task in ("sentiment", "news-topic"):
        test = splits(task)["test"]
        probs = {}
        for d in dtypes:
            engine = Engine(backbones[d], cache_entries=0)
            out = []
            for s in tqdm(range(0, len(test), args.batch), desc=f"{task} {d}", file=sys.stderr, leave=False):
                out += engine.predict([Row(adapters[d][task], text) for text, _ in test[s:s + args.batch]])
            probs[d] = out
        labels = adapters["float32"][task].config.labels
        acc = {d: sum(p.label == gold for p, (_, gold) in zip(probs[d], test)) / len(test) for d in dtypes}
        answers[task] = {"test_rows": len(test), "accuracy": acc, "against_float32": {}}
        for d in dtypes[1:]:
            pairs = list(zip(probs["float32"], probs[d]))
            changed = sum(a.label != b.label for a, b in pairs)
            max_dp = max(abs(a.scores[lab] - b.scores[lab]) for a, b in pairs for lab in labels)
            answers[task]["against_float32"][d] = {"labels_changed": changed, "labels_changed_share": changed / len(test),
                                                   "max_probability_change": max_dp}
            print(f"{task:<10} accuracy fp32 {acc['float32']:.4f} {SHORT[d]} {acc[d]:.4f}; "
                  f"{changed} of {len(test)} labels change; max |dp| {max_dp:.4f}", flush=True)

    texts = [t for t, _ in splits("sentiment")["test"][:args.rows]]

    def batch(d):
        rows = [Row(adapters[d]["sentiment" if i % 2 else "news-topic"], t) for i, t in enumerate(texts)]
        return lambda: Engine(backbones[d], cache_entries=0).logits(rows)

    with torch.inference_mode():
        times = interleaved({d: batch(d) for d in dtypes}, args.repeats, desc="timing")
    timing = {d: median_iqr_ms(v) for d, v in times.items()}
    speedup = {d: timing["float32"]["median"] / timing[d]["median"] for d in dtypes[1:]}
    print(f"{args.rows}-row mixed batch: " + ", ".join(f"{SHORT[d]} {timing[d]['median']:.0f} ms" for d in dtypes)
          + "; as fast as fp32: " + ", ".join(f"{SHORT[d]} {speedup[d]:.2f}x" for d in dtypes[1:])
          + f" (torch threads {torch.get_num_threads()}, CPU flags {' '.join(bf16_flags()) or 'no AMX/avx512_bf16/VNNI'})")
    path = write_json(args.name, {"onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                                  "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS"), "command": command_line(), "rows": args.rows, "repeats": args.repeats,
                                "torch_threads": torch.get_num_threads(), "cpu_flags": bf16_flags(),
                                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                "answers": answers, "batch_ms": timing, "speedup": speedup})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

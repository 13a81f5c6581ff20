"""Engine benchmark: one mixed-task pass vs the alternatives, on the embedded model.

    python bench/engine.py [--rows 64] [--tasks 8] [--repeats 9]

A batch of `rows` tweets spread over `tasks` adapters, timed as:
  plain      the backbone's own forward of the same rows (tokenize + model, no prompt, no head)
  mixed      lpt Engine: one pass for every task (layer-k cache off: every call runs all layers),
             rows cut into length buckets (the engine's default, padding <= 1.3x real tokens)
  mixed_one_bucket  the same, all 64 rows padded to the longest (as the plain forward pads them)
  per_task   lpt Engine called once per task on that task's rows (8 passes)
  copies     8 separately fine-tuned model copies (a model per task), each on its own rows
  cached     lpt Engine with the layer-k cache warm (the same texts asked again)
Each repeat times every method once, in turn, so that machine noise hits them alike; the
figures are medians with the interquartile range. Writes bench/results/engine.json and .png.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, make_adapters, parser, plain_forward  # noqa: E402
from timing import command_line, interleaved, median_iqr_ms, pyplot, write_json  # noqa: E402

from lpt import Engine, Row  # noqa: E402


def main(argv=None) -> int:
    ap = parser(__doc__, repeats=9)
    ap.add_argument("--tasks", type=int, default=8)
    args = ap.parse_args(argv)

    bb, texts = load(args)
    adapters = make_adapters(bb, args.tasks, args.layer)
    rows = [Row(adapters[i % args.tasks], t) for i, t in enumerate(texts)]
    by_task = [[r for r in rows if r.adapter is a] for a in adapters]

    tok = bb.tokenizer
    heads = [torch.nn.Linear(bb.hidden_size, 2).to(bb.device, bb.dtype) for _ in adapters]
    copies = [copy.deepcopy(bb.base) for _ in adapters]   # stand-ins for 8 fine-tuned models

    def sync():
        if bb.device.type == "cuda":
            torch.cuda.synchronize()

    def mixed():
        Engine(bb, cache_entries=0).logits(rows)
        sync()

    def mixed_one_bucket():
        Engine(bb, cache_entries=0, max_padding=None).logits(rows)
        sync()

    def per_task():
        e = Engine(bb, cache_entries=0)
        for task_rows in by_task:
            e.logits(task_rows)
        sync()

    def model_copies():
        for model, head, task_rows in zip(copies, heads, by_task):
            enc = tok([r.text for r in task_rows], padding=True, truncation=True, max_length=256,
                      return_tensors="pt").to(bb.device)
            head(model(**enc).last_hidden_state[:, 0])
        sync()

    warm = Engine(bb, cache_entries=10 * args.rows)
    warm.logits(rows)

    def cached():
        warm.logits(rows)
        sync()

    methods = {"plain": plain_forward(bb, texts), "mixed": mixed, "mixed_one_bucket": mixed_one_bucket, "per_task": per_task, "copies": model_copies, "cached": cached}
    with torch.inference_mode():
        times = interleaved(methods, args.repeats)
    stats = {m: median_iqr_ms(v) for m, v in times.items()}
    med = {m: s["median"] / 1e3 for m, s in stats.items()}
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapters[0].parameters())
    backbone_bytes = sum(p.numel() * p.element_size() for p in bb.base.parameters())
    result = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "rows": args.rows, "tasks": args.tasks,
        "layer": args.layer, "prompt_length": adapters[0].length, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "tokens_min_max": [min(lengths), max(lengths)],
        "ms": stats,
        "mixed_over_plain": round(med["mixed"] / med["plain"], 3),
        "mixed_one_bucket_over_plain": round(med["mixed_one_bucket"] / med["plain"], 3),
        "mixed_over_per_task": round(med["mixed"] / med["per_task"], 3),
        "mixed_over_copies": round(med["mixed"] / med["copies"], 3),
        "cached_over_mixed": round(med["cached"] / med["mixed"], 3),
        "memory_mb": {"one_backbone_plus_adapters": round((backbone_bytes + args.tasks * adapter_bytes) / 2**20, 1),
                      "model_copies": round(args.tasks * backbone_bytes / 2**20, 1),
                      "per_adapter": round(adapter_bytes / 2**20, 2)},
        "command": command_line(),
    }
    print(f"{args.rows} rows over {args.tasks} tasks, {args.model} {args.dtype} on {args.device}, "
          f"{result['threads']} threads, median of {args.repeats}")
    print(f"{'method':16} {'median ms':>10} {'IQR ms':>18} {'/ plain':>8}")
    for m in methods:
        lo, hi = stats[m]["q1"], stats[m]["q3"]
        print(f"{m:16} {med[m] * 1e3:10.1f} {f'{lo:.1f}-{hi:.1f}':>18} {med[m] / med['plain']:8.3f}")
    for key in ("mixed_over_plain", "mixed_one_bucket_over_plain", "mixed_over_per_task", "mixed_over_copies", "cached_over_mixed"):
        print(f"{key:22} {result[key]}")
    print(f"target mixed_over_plain <= 1.15: {'met' if result['mixed_over_plain'] <= 1.15 else 'MISSED'}; "
          f"mixed beats per-task: {'yes' if result['mixed_over_per_task'] < 1 else 'NO'}")

    out = write_json("engine" if args.device == "cpu" else f"engine-{args.device}-{args.dtype}", result)
    _plot(result, times, out.with_suffix(".png"))
    return 0


def _plot(result, times, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    names = list(times)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot([[t * 1e3 for t in times[n]] for n in names], tick_labels=names)
    ax.set_ylabel("ms per batch")
    ax.set_title(f"{result['rows']} rows, {result['tasks']} tasks, {result['model']} ({result['device']}, "
                 f"{result['dtype']})\nmixed/plain {result['mixed_over_plain']}, "
                 f"mixed/per-task {result['mixed_over_per_task']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())

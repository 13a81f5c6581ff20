"""Lower-layer reuse: what sharing the layers below k saves.

    python bench/reuse.py [--rows 16] [--tasks 8] [--repeats 7]

The same `texts` asked for `tasks` tasks:
  separate   one engine call per task (each recomputes the lower layers of every text)
  shared     one call with every (text, task) row: the lower layers run once per text
  cached     the same call again with the layer-k cache warm (across requests): lower layers skipped
Writes bench/results/reuse.json and reuse.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, make_adapters, parser  # noqa: E402
from timing import command_line, interleaved, median_iqr_ms, pyplot, write_json  # noqa: E402

from lpt import Engine, Row  # noqa: E402


def main(argv=None) -> int:
    ap = parser(__doc__, repeats=7, rows=16)
    ap.add_argument("--tasks", type=int, default=8)
    args = ap.parse_args(argv)

    bb, texts = load(args)
    adapters = make_adapters(bb, args.tasks, args.layer)
    rows = [Row(a, t) for t in texts for a in adapters]
    warm = Engine(bb, cache_entries=4 * len(rows))
    methods = {
        "separate": lambda: [Engine(bb, cache_entries=0).logits([Row(a, t) for t in texts]) for a in adapters],
        "shared": lambda: Engine(bb, cache_entries=0).logits(rows),
        "cached": lambda: warm.logits(rows),
    }
    with torch.inference_mode():
        times = interleaved(methods, args.repeats)
    stats = {m: median_iqr_ms(v) for m, v in times.items()}
    result = {
        "model": args.model, "texts": args.rows, "tasks": args.tasks, "layer": args.layer,
        "layers": bb.num_layers, "threads": torch.get_num_threads(), "ms": stats,
        "shared_speedup": round(stats["separate"]["median"] / stats["shared"]["median"], 2),
        "cached_speedup": round(stats["separate"]["median"] / stats["cached"]["median"], 2),
        "cache_hits": warm.cache.stats.hits, "cache_misses": warm.cache.stats.misses,
        "command": command_line(),
    }
    print(f"{args.rows} texts x {args.tasks} tasks, k={args.layer} of {bb.num_layers} layers")
    for m, s in stats.items():
        print(f"  {m:9} {s['median']:9.1f} ms (IQR {s['q1']:.1f}-{s['q3']:.1f})")
    print(f"  shared lower pass: {result['shared_speedup']}x faster than separate; "
          f"with the layer-k cache warm: {result['cached_speedup']}x")
    out = write_json("reuse", result)
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(list(stats), [s["median"] for s in stats.values()])
        ax.set_ylabel("ms for all rows")
        ax.set_title(f"{args.rows} texts x {args.tasks} tasks (k={args.layer}/{bb.num_layers})", fontsize=9)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

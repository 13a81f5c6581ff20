"""Adapter scaling: how the per-row cost and memory grow with the number of adapters.

    python bench/scaling.py [--repeats 5]

1. Distinct tasks per batch: 64 rows spread over 1, 8 or 64 adapters, per-row cost relative to
   the plain backbone forward of the same rows (target: 64 tasks <= 1.3x the 1-task cost).
2. Adapters registered: 1, 10, 100, 1000 adapters resident in one process; a batch of 64 rows
   drawn from 8 of them: per-row cost, and resident memory per adapter (RSS growth / count).
3. Cold load: an adapter file's bytes -> validated, loaded and answering its first row.
Writes bench/results/scaling.json and scaling.png.
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, make_adapters, parser, plain_forward  # noqa: E402
from timing import command_line, interleaved, median_iqr_ms, pyplot, write_json  # noqa: E402

from lpt import Engine, Row, load_adapter, new_adapter  # noqa: E402
from lpt.adapter import adapter_bytes  # noqa: E402


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv=None) -> int:
    ap = parser(__doc__, repeats=5)
    ap.add_argument("--registered", default="1,10,100,1000")
    args = ap.parse_args(argv)

    bb, texts = load(args)
    plain = plain_forward(bb, texts)

    # 1. distinct tasks per batch
    pool = make_adapters(bb, 64, args.layer)
    methods = {"plain": plain}
    for n in (1, 8, 64):
        rows = [Row(pool[i % n], t) for i, t in enumerate(texts)]
        methods[f"tasks={n}"] = (lambda rows=rows: Engine(bb, cache_entries=0).logits(rows))
    with torch.inference_mode():
        times = interleaved(methods, args.repeats, desc="distinct tasks")
    per_batch = {m: median_iqr_ms(v) for m, v in times.items()}
    base = per_batch["plain"]["median"]
    distinct = {m: {"ms": s, "over_plain": round(s["median"] / base, 3)} for m, s in per_batch.items()}
    one = per_batch["tasks=1"]["median"]
    ratio64 = round(per_batch["tasks=64"]["median"] / one, 3)

    # 2. adapters registered (resident) and memory per adapter
    registered = {}
    del pool
    for n in [int(x) for x in args.registered.split(",")]:
        before = rss_mb()
        adapters = make_adapters(bb, n, args.layer, seed0=1000)
        grown = rss_mb() - before
        pick = [adapters[(i * 7919) % n] for i in range(8)]
        rows = [Row(pick[i % 8], t) for i, t in enumerate(texts)]
        with torch.inference_mode():
            t = interleaved({"batch": lambda: Engine(bb, cache_entries=0).logits(rows)}, args.repeats,
                            desc=f"{n} registered")["batch"]
        s = median_iqr_ms(t)
        registered[n] = {"ms": s, "per_row_over_plain": round(s["median"] / base, 3),
                         "rss_growth_mb": round(grown, 1), "mb_per_adapter": round(grown / n, 3)}
        del adapters

    # 3. cold load: bytes -> first answer
    torch.manual_seed(5)
    data = adapter_bytes(new_adapter(bb, task="cold", labels=["a", "b"], layer=args.layer))
    engine = Engine(bb, cache_entries=0)
    cold = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = load_adapter(data, bb)
        with torch.inference_mode():
            engine.logits([Row(a, texts[0])])
        cold.append(time.perf_counter() - t0)

    param_mb = sum(p.numel() * p.element_size() for p in make_adapters(bb, 1, args.layer)[0].parameters()) / 2**20
    result = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "rows": args.rows, "layer": args.layer,
        "threads": torch.get_num_threads(), "plain_ms": per_batch["plain"],
        "distinct_tasks": distinct, "tasks64_over_tasks1": ratio64,
        "registered": registered, "adapter_param_mb": round(param_mb, 3), "adapter_file_bytes": len(data),
        "cold_load_ms": median_iqr_ms(cold), "command": command_line(),
    }
    print(f"{args.rows} rows, {args.model} {args.dtype} on {args.device}; plain forward {base:.1f} ms (median)")
    for m, d in distinct.items():
        print(f"  {m:10} {d['ms']['median']:9.1f} ms  {d['over_plain']:.3f}x plain")
    print(f"  64 tasks / 1 task per-row cost: {ratio64} (target <= 1.3: {'met' if ratio64 <= 1.3 else 'MISSED'})")
    for n, d in registered.items():
        print(f"  {n:5} registered: {d['ms']['median']:8.1f} ms/batch ({d['per_row_over_plain']}x plain), "
              f"{d['mb_per_adapter']} MB RSS per adapter")
    print(f"  cold load (bytes -> first answer): {result['cold_load_ms']['median']:.1f} ms; "
          f"adapter params {param_mb:.2f} MB, file {len(data)} bytes")
    out = write_json("scaling" if args.device == "cpu" else f"scaling-{args.device}-{args.dtype}", result)
    plt = pyplot()
    if plt is not None:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        names = [m for m in distinct if m != "plain"]
        a1.bar(names, [distinct[m]["over_plain"] for m in names])
        a1.axhline(1.0, color="gray", ls="--", lw=1)
        a1.set_ylabel("batch time / plain forward")
        a1.set_title("distinct tasks in a 64-row batch", fontsize=9)
        ns = list(registered)
        a2.plot(ns, [registered[n]["per_row_over_plain"] for n in ns], marker="o")
        a2.set_xscale("log")
        a2.set_xlabel("adapters resident")
        a2.set_ylabel("batch time / plain forward")
        a2.set_title("8 tasks per batch, N adapters resident", fontsize=9)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

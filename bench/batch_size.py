"""The engine's cost per row against its batch size: how much batching can buy on this machine.

    OMP_NUM_THREADS=1 python bench/batch_size.py [--sizes 1 2 4 8 16 32 64] [--rows 128] [--repeats 5]

The same `--rows` tweets (16 adapters, round robin, already tokenized as a server hands them
over) run through `Engine.predict` in batches of each size, one size after the other within each
repeat. Prints ms per row (median) and the ceiling it sets for batched over unbatched serving:
per-row cost at 1 row over the best per-row cost, in the same run. An HTTP server adds its own
per-request cost to both sides (bench/http_load.py measures that ratio end to end).
"""
from __future__ import annotations

import statistics

import common
from timing import command_line, interleaved, write_json

from lpt import Engine, Row


def main(argv=None) -> int:
    ap = common.parser(__doc__, repeats=5, rows=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--tasks", type=int, default=16)
    args = ap.parse_args(argv)
    bb, texts = common.load(args)
    adapters = common.make_adapters(bb, args.tasks, args.layer)
    rows = []
    for i, text in enumerate(texts):
        a = adapters[i % len(adapters)]
        rows.append(Row(a, text, encoded=a.encoder.encode_many([(text, None)])[0]))
    engine = Engine(bb, cache_entries=0)

    def run(size: int):
        def go():
            for i in range(0, len(rows), size):
                engine.predict(rows[i:i + size])
        return go

    times = interleaved({str(s): run(s) for s in args.sizes}, args.repeats, desc="sizes")
    ms_per_row = {s: statistics.median(ts) / len(rows) * 1000 for s, ts in times.items()}
    best = min(ms_per_row, key=ms_per_row.get)
    base = str(min(args.sizes))
    print(f"{len(rows)} tweets ({sum(len(r.encoded.input_ids) for r in rows) / len(rows):.1f} tokens per row), "
          f"{args.tasks} adapters, {args.dtype}:")
    print(f"{'batch':>6} | {'ms/row':>7} | {'rows/s':>7} | {'vs ' + base + ' row':>9}")
    for s, ms in ms_per_row.items():
        print(f"{s:>6} | {ms:7.1f} | {1000 / ms:7.1f} | {ms_per_row[base] / ms:9.2f}")
    ceiling = ms_per_row[base] / ms_per_row[best]
    print(f"batching's ceiling on this machine: {ceiling:.2f}x (a {base}-row batch's cost per row over the "
          f"best, at {best} rows)")
    write_json("batch_size", {"command": command_line(), "rows": len(rows), "tasks": args.tasks,
                              "dtype": args.dtype, "ms_per_row": ms_per_row,
                              "seconds": times, "ceiling": round(ceiling, 2), "best_batch": int(best)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU benchmark: the mixed-task engine vs the plain Hugging Face forward, the equivalences on the
device, and the HTTP path, from the offline kit (bench/gpu_kit.sh). Run by bench/gpu.sh:

    python bench/gpu_bench.py --kit .gpu-kit --json OUT/gpu.json               # on a CUDA GPU
    python bench/gpu_bench.py --kit .gpu-kit --json OUT/gpu-smoke.json --cpu-smoke

Models: the embedded all-MiniLM-L6-v2 (its real weights, stored in float16 in the kit and cast to
the dtype of the run) and a base-size BERT (12 layers, 768 hidden, random weights from a config).
For each model, dtype and batch size: `tasks` distinct adapters round robin over the batch, every
row a distinct text of exactly `tokens_per_row` tokens, tokenized before the clock starts (as the
server hands rows to the engine). Timed, interleaved (timing.interleaved), medians:
  engine  Engine(bb, cache_entries=0).logits(rows): ids to the device, every layer, the 64
          prompts, heads, logits back to the host
  unstacked  the same engine running each adapter's generator and head as ops of their own
          (Engine(stack=False): what the engine did before adapters of one kind ran as one op)
  plain   the backbone's own Hugging Face forward of the same ids (to the device, no prompt, no head)
FLOP utilisation counts the plain forward's FLOPs on the same rows (matmuls and attention, the
useful work of both) against PEAK_TFLOPS, the H200's dense bfloat16 peak, for every dtype.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import json
import platform
import signal
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_adapters  # noqa: E402
from timing import interleaved  # noqa: E402

from lpt import Backbone, Engine, Row  # noqa: E402

PEAK_TFLOPS = 790.0      # H200 dense bfloat16 (the figure every dtype's utilisation is stated against)
RANDOM_BERTS = {   # name -> sizes of a BERT with random weights
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}


@dataclass(frozen=True)
class Plan:
    """What one run measures: the full GPU plan, or the same steps at a tiny size on CPU."""

    device: str
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    tasks: int
    tokens_per_row: int
    repeats: int
    base: str                                # the random BERT: a key of RANDOM_BERTS
    http_concurrency: tuple[int, ...]
    http_texts_per_request: int
    http_requests: int                       # per concurrency (upper bound)
    http_seconds: float                      # per concurrency (upper bound)
    http_workers: tuple[int, ...]            # one server per engine worker count (--workers)
    engine_budget_s: float                   # model runs stop starting after this (recorded as skipped)


GPU = Plan("cuda", ("float32", "bfloat16", "float16"), (64, 128, 256, 512, 1024), 64, 128, 5, "bert-base",
           (1, 4, 16, 32), 32, 400, 15.0, (1, 2), 200.0)
SMOKE = Plan("cpu", ("float32", "bfloat16", "float16"), (4, 8), 4, 16, 1, "bert-tiny", (1, 2), 32, 4, 5.0, (1, 2), 60.0)


# ---- the models --------------------------------------------------------------------------------
def load_model(name: str, kit: Path, plan: Plan, dtype: str) -> Backbone:
    """minilm: the kit's real weights; a RANDOM_BERTS name: random weights from a config
    (seeded), with the kit's tokenizer (the same uncased BERT vocabulary), written once as a
    checkpoint folder and loaded from it as a server loads a user's model (lpt's own modules)."""
    if name == "minilm":
        return Backbone.load(str(kit / "minilm"), device=plan.device, dtype=dtype)
    return Backbone.load(random_bert_folder(name, str(kit / "minilm")), device=plan.device, dtype=dtype)


@functools.cache
def random_bert_folder(name: str, tokenizer_path: str) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **RANDOM_BERTS[name])
    folder = Path(tempfile.mkdtemp(prefix=f"lpt-{name}-"))
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(folder)


def forward_flops(config, rows: int, tokens: int) -> float:
    """FLOPs of one encoder forward: per layer and token, the Q/K/V/O and FFN matmuls (2 FLOPs
    per multiply-add) plus attention scores and weighted sum against every key."""
    d, f = config.hidden_size, config.intermediate_size
    per_token = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * tokens * d
    return float(config.num_hidden_layers * rows * tokens * per_token)


# ---- the rows ------------------------------------------------------------------------------------
def load_texts(kit: Path) -> list[str]:
    return json.loads((kit / "texts.json").read_text())["texts"]


def encoded_rows(adapters: list, texts: list[str], n: int, tokens: int) -> list[Row]:
    """n rows, adapters round robin, texts distinct, each exactly `tokens` tokens long."""
    if n > len(texts):
        raise SystemExit(f"{n} rows need {n} distinct texts, the kit has {len(texts)}")
    encs = adapters[0].encoder.encode_many([(t, None) for t in texts[:n]], max_text_tokens=tokens - 2)
    bad = [i for i, e in enumerate(encs) if isinstance(e, Exception) or len(e.input_ids) != tokens]
    if bad:
        raise SystemExit(f"texts {bad[:5]} do not give {tokens}-token rows")
    return [Row(adapters[i % len(adapters)], texts[i], encoded=e) for i, e in enumerate(encs)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- one configuration -------------------------------------------------------------------------
def measure(bb: Backbone, rows: list[Row], repeats: int) -> dict[str, float]:
    """Median seconds per batch of the engine and the plain forward, interleaved."""
    ids = torch.tensor([r.encoded.input_ids for r in rows])
    types = torch.tensor([r.encoded.token_type_ids for r in rows]) if rows[0].encoded.token_type_ids else None
    mask = torch.ones_like(ids)
    engine, one_by_one = Engine(bb, cache_entries=0), Engine(bb, cache_entries=0, stack=False)

    def run_engine():
        engine.logits(rows)
        sync(bb.device)

    def run_unstacked():
        one_by_one.logits(rows)
        sync(bb.device)

    def run_plain():
        kwargs = {"input_ids": ids.to(bb.device), "attention_mask": mask.to(bb.device)}
        if types is not None:
            kwargs["token_type_ids"] = types.to(bb.device)
        bb.base(**kwargs)
        sync(bb.device)

    with torch.inference_mode():
        times = interleaved({"engine": run_engine, "unstacked": run_unstacked, "plain": run_plain}, repeats,
                            desc=f"{len(rows)} rows")
    return {m: statistics.median(v) for m, v in times.items()}


def run_config(bb: Backbone, model: str, dtype: str, adapters: list, texts: list[str], batch: int,
               plan: Plan) -> dict:
    rows = encoded_rows(adapters, texts, batch, plan.tokens_per_row)
    s = measure(bb, rows, plan.repeats)
    flops = forward_flops(bb.config, batch, plan.tokens_per_row)
    tokens = batch * plan.tokens_per_row
    out = {"model": model, "dtype": dtype, "tasks": len(adapters), "tokens_per_row": plan.tokens_per_row,
           "batch": batch, "repeats": plan.repeats,
           "engine_ms": round(s["engine"] * 1e3, 3), "plain_ms": round(s["plain"] * 1e3, 3),
           "rows_per_s": round(batch / s["engine"], 1), "plain_rows_per_s": round(batch / s["plain"], 1),
           "tokens_per_s": round(tokens / s["engine"]), "plain_tokens_per_s": round(tokens / s["plain"]),
           "mixed_over_plain": round(s["engine"] / s["plain"], 3),
           "unstacked_rows_per_s": round(batch / s["unstacked"], 1),
           "stacked_speedup": round(s["unstacked"] / s["engine"], 3),
           "model_tflop_per_batch": round(flops / 1e12, 4),
           "mfu": float(f"{flops / s['engine'] / (PEAK_TFLOPS * 1e12):.3g}"),
           "plain_mfu": float(f"{flops / s['plain'] / (PEAK_TFLOPS * 1e12):.3g}")}
    print(f"{model:10} {dtype:9} batch {batch:5d}: engine {out['rows_per_s']:9.1f} rows/s, plain "
          f"{out['plain_rows_per_s']:9.1f}, one op per adapter {out['unstacked_rows_per_s']:9.1f}, mixed/plain {out['mixed_over_plain']:.3f}, MFU {out['mfu']:.3f} "
          f"(plain {out['plain_mfu']:.3f})", flush=True)
    return out


def engine_runs(kit: Path, plan: Plan, texts: list[str], deadline: float) -> list[dict]:
    runs = []
    for model in ("minilm", plan.base):
        for dtype in plan.dtypes:
            if time.monotonic() > deadline:
                runs.append({"model": model, "dtype": dtype, "skipped": "time budget spent"})
                continue
            bb = load_model(model, kit, plan, dtype)
            adapters = make_adapters(bb, plan.tasks, layer=bb.num_layers // 2)
            for batch in plan.batches:
                if time.monotonic() > deadline:
                    runs.append({"model": model, "dtype": dtype, "batch": batch, "skipped": "time budget spent"})
                    continue
                try:
                    runs.append(run_config(bb, model, dtype, adapters, texts, batch, plan))
                except torch.cuda.OutOfMemoryError as e:
                    runs.append({"model": model, "dtype": dtype, "batch": batch, "error": f"out of memory: {e}"})
            del bb, adapters
            if plan.device == "cuda":
                torch.cuda.empty_cache()
    return runs


# ---- the whole ---------------------------------------------------------------------------------------
def device_info(plan: Plan) -> dict:
    info = {"kind": plan.device, "torch": torch.__version__, "python": platform.python_version(),
            "cpus": __import__("os").cpu_count()}
    if plan.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    tf32_matmul=getattr(torch.backends.cuda.matmul, "allow_tf32", None))
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", type=Path, default=Path(".gpu-kit"))
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--cpu-smoke", action="store_true", help="the same steps on CPU at a tiny size")
    ap.add_argument("--skip-http", action="store_true")
    args = ap.parse_args(argv)
    plan = SMOKE if args.cpu_smoke else GPU
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `timeout`: stop the server on the way out
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch (use --cpu-smoke for the CPU run)")
    from gpu_checks import equivalences
    from gpu_http import http_runs
    from gpu_profile import profile_runs

    started = time.monotonic()
    texts = load_texts(args.kit)
    result = {"device": device_info(plan), "plan": asdict(plan), "peak_tflops_bf16": PEAK_TFLOPS,
              "weights": "minilm: the real weights stored in float16, cast to each run's dtype; "
                         f"{plan.base}: random (seed 0)",
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage_seconds": {}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    stages = {"equivalence": lambda: equivalences(args.kit, plan, texts, load_model),
              "runs": lambda: engine_runs(args.kit, plan, texts, time.monotonic() + plan.engine_budget_s),
              "profile": lambda: profile_runs(args.kit, plan, texts, load_model, make_adapters, encoded_rows)}
    if not args.skip_http:
        stages["http"] = lambda: http_runs(args.kit, plan, texts)
    for name, stage in stages.items():
        t0 = time.monotonic()
        result[name] = stage()
        result["stage_seconds"][name] = round(time.monotonic() - t0, 1)
        result["seconds"] = round(time.monotonic() - started, 1)
        args.json.write_text(json.dumps(result, indent=2) + "\n")   # kept stage by stage: a timeout loses one stage only
    print(f"wrote {args.json} ({result['seconds']} s)")
    failed = [f"equivalence: {c}" for c in result["equivalence"] if not c["ok"]]
    failed += [f"http: {r}" for r in result.get("http", {}).get("runs", []) if r["errors"] or not r["requests"]]
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The engine's equivalences, checked on the benchmark's device in every dtype it runs.

  mixed_row_equals_row_alone   each row of a mixed batch (8 adapters, or the plan's tasks if fewer; insertion layers and
                               generators mixed, rows of different lengths) vs that row alone
  batch_split_equals_whole     the batch in two engine calls vs in one
  split_forward_equals_model   the staged forward (embed, layers [0, k), layers [k, n), no prompt)
                               vs the model's own forward, real tokens of a padded batch
  device_matches_cpu_float32   the engine's logits on this device and dtype vs on the CPU in float32
  stacked_equals_one_by_one    16 adapters of one kind run as one op vs each as ops of its own

error = max |a - b| / max(1, max |b|): absolute for values up to 1 (logits), relative above (hidden
states). Tolerances (TOLERANCE) are stated per dtype: on a GPU, kernels picked per shape round
differently, which float32 hides and bfloat16 (8 bits of mantissa) does not. Tests at float32
on CPU (tests/unit/test_engine.py, test_reference.py) hold the same equivalences to 1e-5.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from lpt import Backbone, Engine, Row, load_adapter, new_adapter
from lpt.adapter import adapter_bytes
from lpt.backbone import transformers_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_adapters  # noqa: E402
from lpt.forward import lower_pass, pad_tokens

TOLERANCE = {   # dtype -> (between equal computations on the device, against the CPU in float32)
    "float32": (1e-4, 1e-3),
    "bfloat16": (5e-2, 1e-1),
    "float16": (1e-2, 2e-2),
}
GENERATORS = ("npg", "max", "avg", "static")


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def adapter_files(bb: Backbone, n: int) -> list[bytes]:
    """n seeded adapters with insertion layers 1..n-1 and every generator (as file bytes)."""
    out = []
    for i in range(n):
        torch.manual_seed(1000 + i)
        out.append(adapter_bytes(new_adapter(bb, task=f"check{i}", labels=[f"c{j}" for j in range(2 + i % 3)],
                                             layer=1 + i % (bb.num_layers - 1), prompt_length=1 + i % 8,
                                             generator=GENERATORS[i % len(GENERATORS)])))
    return out


def check_rows(adapters: list, texts: list[str], max_tokens: int) -> list[Row]:
    """Two rows per adapter, texts distinct, lengths spread over 4..max_tokens tokens."""
    rows = []
    for i, text in enumerate(texts[:2 * len(adapters)]):
        a = adapters[i % len(adapters)]
        n = 2 + (7 * i) % (max_tokens - 5)
        rows.append(Row(a, text, encoded=a.encoder.encode(text, max_text_tokens=n)))
    return rows


def staged_vs_model(bb: Backbone, rows: list[Row], model: torch.nn.Module) -> float:
    """The split forward without a prompt vs `model`'s own forward (transformers' classes on the
    same checkpoint: lpt's encoder modules answer to it), on the real tokens."""
    encs = [r.encoded for r in rows]
    tokens = pad_tokens([e.input_ids for e in encs], [e.token_type_ids for e in encs], bb.pad_id, bb.device)
    k = bb.num_layers // 2
    h = lower_pass(bb, tokens, {k})[k]
    h = bb.final_norm(bb.run_layers(h, tokens.valid, k, bb.num_layers))
    kwargs = {"input_ids": tokens.input_ids, "attention_mask": tokens.valid.long()}
    if tokens.token_type_ids is not None:
        kwargs["token_type_ids"] = tokens.token_type_ids
    ref = model(**kwargs).last_hidden_state
    return error(h[tokens.valid], ref[tokens.valid])


def equivalences(kit: Path, plan, texts: list[str], load_model) -> list[dict]:
    """Every check for the embedded model in every dtype of the plan, on the plan's device."""
    cpu = Backbone.load(str(kit / "minilm"), device="cpu", dtype="float32")
    files = adapter_files(cpu, min(8, plan.tasks))
    cpu_adapters = [load_adapter(f, cpu) for f in files]
    cpu_logits = Engine(cpu, cache_entries=0).logits(check_rows(cpu_adapters, texts, plan.tokens_per_row))
    out = []
    for dtype in plan.dtypes:
        bb = load_model("minilm", kit, plan, dtype)
        adapters = [load_adapter(f, bb) for f in files]
        rows = check_rows(adapters, texts, plan.tokens_per_row)
        whole = Engine(bb, cache_entries=0).logits(rows)
        alone = [Engine(bb, cache_entries=0).logits([r])[0] for r in rows]
        half = len(rows) // 2
        split = Engine(bb, cache_entries=0).logits(rows[:half]) + Engine(bb, cache_entries=0).logits(rows[half:])
        reference = transformers_model(str(kit / "minilm"), False, False, bb.dtype).to(bb.device)
        with torch.inference_mode():
            staged = staged_vs_model(bb, rows, reference)
        del reference
        same, vs_cpu = TOLERANCE[dtype]
        alike = make_adapters(bb, 16, layer=bb.num_layers // 2)
        alike_rows = check_rows(alike, texts, plan.tokens_per_row)
        stacked = Engine(bb, cache_entries=0, stack=True).logits(alike_rows)
        one_by_one = Engine(bb, cache_entries=0, stack=False).logits(alike_rows)
        found = {"mixed_row_equals_row_alone": (max(error(w, a) for w, a in zip(whole, alone)), same),
                 "stacked_equals_one_by_one": (max(error(s, o) for s, o in zip(stacked, one_by_one)), same),
                 "batch_split_equals_whole": (max(error(s, w) for s, w in zip(split, whole)), same),
                 "split_forward_equals_model": (staged, same),
                 "device_matches_cpu_float32": (max(error(w, c) for w, c in zip(whole, cpu_logits)), vs_cpu)}
        for name, (err, tol) in found.items():
            out.append({"check": name, "model": "minilm", "dtype": dtype, "device": str(bb.device),
                        "rows": len(rows), "error": float(f"{err:.3g}"), "tolerance": tol, "ok": err <= tol})
            print(f"check {name:28} {dtype:9} error {err:.2e} (tolerance {tol:g}): "
                  f"{'ok' if err <= tol else 'FAILED'}", flush=True)
        del bb, adapters
    return out

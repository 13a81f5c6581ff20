"""What the engine benchmarks share: their flags, the model and tweets, adapters, the plain baseline."""
from __future__ import annotations

import argparse

import torch
from data import splits

from lpt import Backbone, load_adapter, new_adapter
from lpt.adapter import adapter_bytes


def parser(doc: str, repeats: int, rows: int = 64) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--rows", type=int, default=rows, help="tweets per batch")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--layer", type=int, default=3, help="insertion layer k of the adapters")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    return ap


def load(args) -> tuple[Backbone, list[str]]:
    """The backbone and `args.rows` test tweets (bench/data.py's fixed split)."""
    bb = Backbone.load(args.model, device=args.device, dtype=args.dtype)
    return bb, [t for t, _ in splits("sentiment")["test"][:args.rows]]


def adapter_file(bb: Backbone, task: str, seed: int, labels=("a", "b"), layer: int = 3, prompt_length: int = 5) -> bytes:
    """A seeded, untrained adapter as file bytes: it costs what a trained one costs to serve."""
    torch.manual_seed(seed)
    return adapter_bytes(new_adapter(bb, task=task, labels=list(labels), layer=layer, prompt_length=prompt_length))


def make_adapters(bb: Backbone, n: int, layer: int, seed0: int = 0) -> list:
    """n seeded adapters, through the file format as a server loads them."""
    return [load_adapter(adapter_file(bb, f"task{i}", seed0 + i, layer=layer), bb) for i in range(n)]


def plain_forward(bb: Backbone, texts: list[str]):
    """The baseline: the backbone's own forward of the same rows, padded to the longest."""
    def run():
        enc = bb.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(bb.device)
        bb.base(**enc)
        if bb.device.type == "cuda":
            torch.cuda.synchronize()
    return run

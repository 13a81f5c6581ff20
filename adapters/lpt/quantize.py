"""int8 serving on a CPU: the blocks' linear layers, ~80% of the work, as int8 matrix products.

Weights are int8 per output channel; each token's activations are scaled to int8 on its own
(its largest value to 127) at every call, multiplied in exact int32 (`torch._int_mm`), and the
result scaled back to float32. Where the CPU lacks VNNI (AVX2, AVX-512 before Cascade Lake), its
int8 kernels sum pairs of u8 x s8 products in saturating 16 bits: weights then get 7 bits
(-63..63), which keeps every product exact (`weight_range` checks it at the extremes). Because every token has its own scale and the integer product is
exact, a row's answer does not depend on which rows share its batch, as in float32 (a per-batch
activation scale, torch's dynamic quantization, would make it depend on them).

Only the frozen backbone's blocks change: embeddings, norms, attention's softmax, the adapters'
prompt generators and heads stay float32, and adapters are trained on the float32 model (int8
has no backward pass). Answers move a little (bench/dtype.py measures how much on the demo
adapters): an opt-in serving setting, never a default.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .models import Conv1D as OwnConv1D

INT8 = "int8"
QMAX = 127                 # symmetric: -127..127 (activations; weights where the CPU allows)


def _weight(module: nn.Module) -> torch.Tensor | None:
    """The [out, in] weight of a linear layer (nn.Linear, or GPT-2's Conv1D stored [in, out])."""
    if isinstance(module, nn.Linear):
        return module.weight
    if isinstance(module, (Conv1D, OwnConv1D)):
        return module.weight.t()
    return None


class Int8Linear(nn.Module):
    """y = x W^T + b with W and each row of x rounded to int8 (scales kept in float32)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, weight_max: int = QMAX):
        """weight [out, in] as nn.Linear holds it, rounded to -weight_max..weight_max."""
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / weight_max
        self.out_features, self.in_features = w.shape
        self.register_buffer("weight_t", w.div(scale[:, None]).round_().to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def of(cls, module: nn.Module, weight_max: int = QMAX) -> "Int8Linear | None":
        """An nn.Linear, or a Conv1D (GPT-2's, transformers' or lpt's: the same product, weight stored [in, out]),
        as an Int8Linear; None for any other module."""
        weight = _weight(module)
        return None if weight is None else cls(weight, module.bias, weight_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny).div_(QMAX)
        q = rows.div(scale).round_().to(torch.int8)
        y = torch._int_mm(q, self.weight_t).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def exact_products(weight_max: int, shapes: Iterable[tuple[int, int]] = ()) -> bool:
    """Whether this CPU's int8 product is exact for activations up to 127 and weights up to
    weight_max: at the extremes with both signs (where 16-bit sums would saturate), at random,
    and at each (in, out) shape given (a kernel may be chosen by shape: the model's own are
    checked, with 64 rows)."""
    def signs(n: int) -> torch.Tensor:
        return torch.tensor([1, 1, -1, 1]).repeat(-(-n // 4))[:n]
    g = torch.Generator().manual_seed(0)
    cases = [(17, 32, 8, sa, sb) for sa in (1, -1) for sb in (1, -1)]
    cases += [(64, k, n, sa, 1) for k, n in sorted(set(shapes)) for sa in (1, -1)]
    try:
        for m, k, n, sa, sb in cases:       # every product +-127 * weight_max: a row . column is k of them
            a = (signs(k) * QMAX * sa)[None].repeat(m, 1).to(torch.int8)
            b = (signs(k) * weight_max * sb)[:, None].repeat(1, n).to(torch.int8)
            if not bool((torch._int_mm(a, b) == sa * sb * QMAX * weight_max * k).all()):
                return False
        a = torch.randint(-QMAX, QMAX + 1, (33, 96), generator=g)
        b = torch.randint(-weight_max, weight_max + 1, (96, 24), generator=g)
        return torch.equal(torch._int_mm(a.to(torch.int8), b.to(torch.int8)).long(), a @ b)
    except RuntimeError:              # no int8 product in this torch build
        return False


def weight_range(shapes: Iterable[tuple[int, int]] = ()) -> int | None:
    """The widest weight range whose products are exact here, at these (in, out) shapes: 127
    (CPUs with VNNI, and ARM), 63 (x86 without VNNI), None (neither: int8 cannot run exactly)."""
    shapes = list(shapes)
    return next((w for w in (QMAX, 63) if exact_products(w, shapes)), None)


def quantize_blocks(blocks: nn.ModuleList) -> int:
    """Replace every linear layer inside `blocks` with an Int8Linear, in place; returns how many."""
    shapes = {(w.shape[1], w.shape[0]) for block in blocks for m in block.modules()
               if (w := _weight(m)) is not None}
    weight_max = weight_range(shapes)
    if weight_max is None:
        raise ValueError(f"{INT8} is not available here: this torch's int8 matrix product is missing or inexact "
                         "on this CPU; serve in float32 (or bfloat16 on a CPU with AMX)")
    swapped = 0
    for block in blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                int8 = Int8Linear.of(child, weight_max)
                if int8 is not None:
                    setattr(parent, name, int8)
                    swapped += 1
    return swapped

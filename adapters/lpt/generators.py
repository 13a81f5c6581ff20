"""Prompt generators: layer-k hidden states -> a prompt of L vectors per example.

All take `h [B, T, d]` and `valid [B, T]` (True at real tokens, any padding side) and return
`[B, L, d]`. The paper's default is the NPG: one anchor token through a bottleneck MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GENERATOR_KINDS = ("npg", "max", "avg", "static")


def anchor_index(valid: torch.Tensor, last: bool) -> torch.Tensor:
    """Index of the first (encoders) or last (decoders) real token of each row -> [B]."""
    pos = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    if last:
        return torch.where(valid, pos, -1).amax(dim=1)
    return torch.where(valid, pos, valid.shape[1]).amin(dim=1)


class NPG(nn.Module):
    """Neural prompt generator: anchor token -> Linear(d, r) -> ReLU -> Linear(r, L*d)."""

    def __init__(self, hidden: int, length: int, bottleneck: int = 128, dropout: float = 0.1,
                 anchor_last: bool = False):
        super().__init__()
        self.length, self.hidden, self.anchor_last = length, hidden, anchor_last
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, length * hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(h.shape[0], device=h.device)
        x = h[rows, anchor_index(valid, self.anchor_last)]          # [B, d]
        x = self.up(torch.relu(self.down(x)))                       # [B, L*d]
        return self.dropout(x.view(-1, self.length, self.hidden))   # [B, L, d]


def segment_membership(valid: torch.Tensor, length: int) -> torch.Tensor:
    """[B, T] valid -> [B, L, T] bool: real token t of a row with n real tokens belongs to
    slot i when floor(i*n/L) <= rank(t) < ceil((i+1)*n/L), as adaptive pooling splits a
    sequence. Ranks count real tokens only, so left and right padding give the same slots."""
    rank = valid.long().cumsum(dim=1) - 1                           # [B, T]
    n = valid.sum(dim=1, keepdim=True)                              # [B, 1]
    i = torch.arange(length, device=valid.device)[None, :, None]    # [1, L, 1]
    start = (i * n[:, :, None]) // length                           # [B, L, 1]
    stop = -((-(i + 1) * n[:, :, None]) // length)                  # ceil
    r = rank[:, None, :]                                            # [B, 1, T]
    return valid[:, None, :] & (r >= start) & (r < stop)


class PooledGenerator(nn.Module):
    """Project each token to r, pool the valid tokens into L slots (max or avg), ReLU,
    then a shared Linear(r, d)."""

    def __init__(self, hidden: int, length: int, bottleneck: int = 128, mode: str = "max",
                 dropout: float = 0.1):
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"pooling mode must be max or avg, got {mode!r}")
        self.length, self.mode = length, mode
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.down(h)                                            # [B, T, r]
        member = segment_membership(valid, self.length)             # [B, L, T]
        if self.mode == "max":
            neg = torch.finfo(x.dtype).min
            scores = torch.where(member[..., None], x[:, None], neg)  # [B, L, T, r]
            pooled = scores.amax(dim=2)                             # [B, L, r]
        else:
            w = member.to(x.dtype)
            pooled = (w @ x) / w.sum(dim=2, keepdim=True).clamp(min=1)  # [B, L, r]
        return self.dropout(self.up(torch.relu(pooled)))            # [B, L, d]


class StaticPrompt(nn.Module):
    """A learned L x d prompt, the same for every example (prompt tuning when k = 0)."""

    def __init__(self, hidden: int, length: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(length, hidden) * 0.02)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.prompt[None].expand(h.shape[0], -1, -1)        # [B, L, d]


# ---- many adapters' generators as one op ----------------------------------------------------
def stack_key(gen: nn.Module) -> tuple | None:
    """Generators with equal keys can run as one op (`stacked_prompts`); None: run alone. A
    pooled generator projects every token, so running it for every adapter of a stack would
    cost the stack's size in matmul work: it runs alone."""
    if isinstance(gen, NPG):
        return ("npg", gen.hidden, gen.length, gen.down.out_features, gen.anchor_last, gen.down.weight.dtype)
    if isinstance(gen, StaticPrompt):
        return ("static", *gen.prompt.shape, gen.prompt.dtype)
    return None


def stacked_prompts(gens: list[nn.Module], member: torch.Tensor, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Prompts [n, L, d] of generators of one stack_key; member [n]: the generator of each row.
    What each generator gives its own rows, in a fixed number of kernels whatever the number of
    generators (on a GPU a small op costs its launch, not its arithmetic).

    NPG: every row through every generator's bottleneck in one matmul ([n, A*r]), the other
    generators' units zeroed, then one matmul with the up-projections side by side
    ([A*r] -> [L*d]): only the row's own block is non-zero, so it is the row's own generator.
    """
    g0 = gens[0]
    if isinstance(g0, StaticPrompt):
        return torch.stack([g.prompt for g in gens])[member].to(h.dtype)
    dtype = g0.down.weight.dtype
    rows = torch.arange(h.shape[0], device=h.device)
    x = h[rows, anchor_index(valid, g0.anchor_last)].to(dtype)                          # [n, d]
    r = g0.down.out_features
    z = torch.relu(F.linear(x, torch.cat([g.down.weight for g in gens]), torch.cat([g.down.bias for g in gens])))
    own = torch.arange(len(gens) * r, device=h.device)[None] // r == member[:, None]   # [n, A*r]
    z = z * own
    up = F.linear(z, torch.cat([g.up.weight for g in gens], dim=1)) + torch.stack([g.up.bias for g in gens])[member]
    return up.view(-1, g0.length, g0.hidden).to(h.dtype)                              # [n, L, d]


def generator_shapes(kind: str, hidden: int, length: int, bottleneck: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes `build_generator` makes, computed without allocating them (an
    adapter file is checked against these before anything is built from it)."""
    if kind == "npg":
        return {"down.weight": (bottleneck, hidden), "down.bias": (bottleneck,),
                "up.weight": (length * hidden, bottleneck), "up.bias": (length * hidden,)}
    if kind in ("max", "avg"):
        return {"down.weight": (bottleneck, hidden), "down.bias": (bottleneck,),
                "up.weight": (hidden, bottleneck), "up.bias": (hidden,)}
    if kind == "static":
        return {"prompt": (length, hidden)}
    raise _unknown(kind)


def build_generator(kind: str, hidden: int, length: int, bottleneck: int = 128,
                    dropout: float = 0.1, anchor_last: bool = False) -> nn.Module:
    if kind == "npg":
        return NPG(hidden, length, bottleneck, dropout, anchor_last)
    if kind in ("max", "avg"):
        return PooledGenerator(hidden, length, bottleneck, kind, dropout)
    if kind == "static":
        return StaticPrompt(hidden, length)
    raise _unknown(kind)


def _unknown(kind: str) -> ValueError:
    return ValueError(f"generator kind must be one of {GENERATOR_KINDS}, got {kind!r}")

"""Heads: final hidden states of the real tokens -> one score per label.

Every head takes `h [N, T, d]` (prompt slots already removed), `valid [N, T]` and
`readout [N]` (the token index the encoder chose) and returns logits `[N, C]`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("linear", "mlm", "lm")
POOLINGS = ("cls", "mean", "last")


def head_shapes(kind: str, hidden: int, num_labels: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of a head of this kind, computed without allocating them. The
    verbalizer heads (mlm, lm) have none: they use the backbone's frozen LM head."""
    return {"linear.weight": (num_labels, hidden), "linear.bias": (num_labels,)} if kind == "linear" else {}


class LinearHead(nn.Module):
    """A trained Linear(d, C) on one pooled vector: the readout token, or the mean of real tokens."""

    def __init__(self, hidden: int, num_labels: int, pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        self.linear = nn.Linear(hidden, num_labels)

    def forward(self, h, valid, readout, backbone=None) -> torch.Tensor:
        return self.linear(_pooled(h, valid, readout, self.pooling))   # [N, C]


def _pooled(h: torch.Tensor, valid: torch.Tensor, readout: torch.Tensor, pooling: str) -> torch.Tensor:
    """The vector a linear head scores -> [N, d]: the readout token, or the mean of real tokens."""
    if pooling == "mean":
        w = valid.to(h.dtype)[..., None]                              # [N, T, 1]
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)
    return h[torch.arange(h.shape[0], device=h.device), readout]


class VerbalizerHead(nn.Module):
    """The backbone's frozen LM head at the readout token (mask or last), scored at the
    label words only. No trainable parameters."""

    def __init__(self, label_ids: list[int]):
        super().__init__()
        self.register_buffer("label_ids", torch.tensor(label_ids, dtype=torch.long), persistent=False)

    def forward(self, h, valid, readout, backbone) -> torch.Tensor:
        x = h[torch.arange(h.shape[0], device=h.device), readout]      # [N, d]
        return backbone.label_scores(x, self.label_ids)              # [N, C]


def stack_key(head: nn.Module) -> tuple | None:
    """Heads with equal keys can run as one op (`stacked_logits`); None: run alone."""
    if isinstance(head, LinearHead):
        return ("linear", head.pooling, *head.linear.weight.shape, head.linear.weight.dtype)
    return None


def stacked_logits(heads: list[nn.Module], member: torch.Tensor, h: torch.Tensor, valid: torch.Tensor,
                   readout: torch.Tensor) -> torch.Tensor:
    """Logits [n, C] of linear heads of one stack_key; member [n]: the head of each row. Every
    row is scored by every head in one matmul ([n, A*C]; C and A are small) and keeps its own."""
    h0 = heads[0]
    x = _pooled(h, valid, readout, h0.pooling).to(h0.linear.weight.dtype)           # [n, d]
    c = h0.linear.out_features
    w = torch.cat([hd.linear.weight for hd in heads])                               # [A*C, d]
    every = F.linear(x, w).view(x.shape[0], len(heads), c)                          # [n, A, C]
    own = every.gather(1, member[:, None, None].expand(-1, 1, c)).squeeze(1)        # [n, C]
    return own + torch.stack([hd.linear.bias for hd in heads])[member]

"""Heads: final hidden states of the real tokens -> one score per label.

Every head takes `h [N, T, d]` (prompt slots already removed), `valid [N, T]` and
`readout [N]` (the token index the encoder chose) and returns logits `[N, C]`.
"""
from __future__ import annotations

import torch
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
        if self.pooling == "mean":
            w = valid.to(h.dtype)[..., None]                          # [N, T, 1]
            x = (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)       # [N, d]
        else:
            x = h[torch.arange(h.shape[0], device=h.device), readout]  # [N, d]
        return self.linear(x)                                        # [N, C]


class VerbalizerHead(nn.Module):
    """The backbone's frozen LM head at the readout token (mask or last), scored at the
    label words only. No trainable parameters."""

    def __init__(self, label_ids: list[int]):
        super().__init__()
        self.register_buffer("label_ids", torch.tensor(label_ids, dtype=torch.long), persistent=False)

    def forward(self, h, valid, readout, backbone) -> torch.Tensor:
        x = h[torch.arange(h.shape[0], device=h.device), readout]      # [N, d]
        return backbone.label_scores(x, self.label_ids)              # [N, C]

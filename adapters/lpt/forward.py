"""The split forward: lower layers, prompt insertion, upper layers, heads.

    states = lower_pass(bb, tokens, stops={k})[k]      # [B, T, d]   layers [0, k), no prompt
    logits = late_forward(bb, [Group(adapter, states, valid, readout), ...])

`late_forward` serves one adapter (training) or many (the engine's mixed batch) with the same
code: every group gets its own prompt from its own generator, the prompts are padded to the
longest L, and groups with a later insertion layer join the batch at their layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbone import Backbone


@dataclass
class TokenBatch:
    input_ids: torch.Tensor                 # [B, T] long, right-padded
    token_type_ids: torch.Tensor | None     # [B, T] long
    valid: torch.Tensor                     # [B, T] bool, True at real tokens


def pad_tokens(seqs: list[tuple[int, ...]], types: list[tuple[int, ...] | None], pad_id: int,
               device) -> TokenBatch:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), t), dtype=torch.bool)
    tt = torch.zeros((len(seqs), t), dtype=torch.long) if types[0] is not None else None
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        valid[i, :len(s)] = True
        if tt is not None:
            tt[i, :len(s)] = torch.tensor(types[i])
    return TokenBatch(ids.to(device), tt.to(device) if tt is not None else None, valid.to(device))


def lower_pass(bb: Backbone, tokens: TokenBatch, stops: set[int]) -> dict[int, torch.Tensor]:
    """Hidden states after layers [0, k) for every k in stops -> {k: [B, T, d]}."""
    h = bb.embed(tokens.input_ids, tokens.token_type_ids)         # [B, T, d]
    bias = bb.attention_bias(tokens.valid)
    out = {0: h} if 0 in stops else {}
    for i in range(max(stops)):
        h = bb.run_layers(h, bias, i, i + 1)
        if i + 1 in stops:
            out[i + 1] = h
    return out


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T_i, d] tensors -> h [n, T_max, d] (zeros after each row), valid [n, T_max]."""
    h = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
    valid = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
    for i, s in enumerate(states):
        valid[i, :s.shape[0]] = True
    return h, valid


@dataclass
class Group:
    """Rows of one adapter, at that adapter's insertion layer."""

    adapter: "LatePrompt"   # noqa: F821 (lpt.adapter.LatePrompt)
    states: torch.Tensor    # [n, T, d] layer-k hidden states, right-padded
    valid: torch.Tensor     # [n, T] bool
    readout: torch.Tensor   # [n] long, token index the head reads


def _widen(x: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim 1 of [n, w, ...] with zeros up to width."""
    if x.shape[1] == width:
        return x
    pad = x.new_zeros((x.shape[0], width - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def _own_dtype(module: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype of a module's weights: an fp32 adapter trained on a bf16 backbone reads its
    inputs in fp32 (mixed precision), one loaded for serving has the backbone's dtype already."""
    p = next(module.parameters(), None)
    return default if p is None else p.dtype


def read_head(bb: Backbone, adapter: "LatePrompt", h: torch.Tensor, valid: torch.Tensor,  # noqa: F821
              readout: torch.Tensor) -> torch.Tensor:
    """The adapter's head on final states [n, T, d] -> logits [n, C]."""
    return adapter.head(h.to(_own_dtype(adapter.head, h.dtype)), valid, readout, bb)


def late_forward(bb: Backbone, groups: list[Group]) -> list[torch.Tensor]:
    """Logits [n_g, C_g] for each group, all groups in one pass through the upper layers.

    Row layout: [prompt slots (L_max) | real tokens (T_max)]; a group with L < L_max has its
    extra slots masked, so each row computes what it would alone (up to float rounding).
    """
    l_max = max(g.adapter.length for g in groups)
    t_max = max(g.states.shape[1] for g in groups)
    parts = []
    for g in groups:
        gen = g.adapter.generator
        prompt = gen(g.states.to(_own_dtype(gen, g.states.dtype)), g.valid).to(g.states.dtype)   # [n, L, d]
        slot_valid = torch.ones(prompt.shape[:2], dtype=torch.bool, device=prompt.device)
        x = torch.cat([_widen(prompt, l_max), _widen(g.states, t_max)], dim=1)         # [n, L_max+T_max, d]
        key_valid = torch.cat([_widen(slot_valid, l_max), _widen(g.valid, t_max)], dim=1)
        parts.append((g.adapter.layer, x, key_valid))

    # Groups join at their own layer: run [k_j, k_{j+1}) on the rows present so far.
    order = sorted(range(len(groups)), key=lambda j: groups[j].adapter.layer)
    x = key_valid = None
    for pos, j in enumerate(order):
        k, xj, vj = parts[j]
        x = xj if x is None else torch.cat([x, xj])
        key_valid = vj if key_valid is None else torch.cat([key_valid, vj])
        nxt = parts[order[pos + 1]][0] if pos + 1 < len(order) else bb.num_layers
        if nxt > k:
            x = bb.run_layers(x, bb.attention_bias(key_valid), k, nxt)
    x = bb.final_norm(x)                                           # [B, L_max+T_max, d]

    logits: list[torch.Tensor] = [None] * len(groups)   # type: ignore[list-item]
    start = 0
    for j in order:
        g = groups[j]
        n = g.states.shape[0]
        h = x[start:start + n, l_max:]                              # [n, T_max, d]
        logits[j] = read_head(bb, g.adapter, h, _widen(g.valid, t_max), g.readout)
        start += n
    return logits

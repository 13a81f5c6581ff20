"""The split forward: lower layers, prompt insertion, upper layers, heads.

    states = lower_pass(bb, tokens, stops={k})[k]      # [B, T, d]   layers [0, k), no prompt
    logits = late_forward(bb, [Group(adapter, states, valid, readout), ...])

`late_forward` serves one adapter (training) or many (the engine's mixed batch) with the same
code: every group gets its own prompt from its own generator, the prompts are padded to the
longest L, and groups with a later insertion layer join the batch at their layer. The groups
share one token width T: the padded layout of the lower pass is kept up to the heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from .backbone import Backbone


@dataclass
class TokenBatch:
    input_ids: torch.Tensor                 # [B, T] long, right-padded
    token_type_ids: torch.Tensor | None     # [B, T] long
    valid: torch.Tensor                     # [B, T] bool, True at real tokens


def _valid(lengths: list[int], width: int, device) -> torch.Tensor:
    """[n, width] bool, True at the first lengths[i] positions of row i."""
    return torch.arange(width, device=device)[None] < to_device(torch.tensor(lengths), device)[:, None]


def to_device(host: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on device. On CUDA through pinned memory and without blocking the host: no
    sync, the copy is queued before the kernels that read it."""
    device = torch.device(device)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """A device tensor on the host: one copy (into pinned memory on CUDA) and one wait."""
    if t.device.type != "cuda":
        return t.cpu()
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return out


def pad_tokens(seqs: list[tuple[int, ...]], types: list[tuple[int, ...] | None], pad_id: int,
               device, width: int | None = None) -> TokenBatch:
    """Right-pad to width (default: the longest sequence). Ids, token types and lengths are laid
    out in one host buffer and cross to the device in one transfer."""
    t = max(len(s) for s in seqs) if width is None else width
    n, parts = len(seqs), (1 if types[0] is None else 2)
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
    real = np.arange(t)[None] < lengths[:, None]                # [n, t]; its row-major order is the sequences in turn
    total = int(lengths.sum())
    buf = np.zeros(parts * n * t + n, dtype=np.int64)          # [ids | types | lengths]
    ids = buf[:n * t].reshape(n, t)
    ids.fill(pad_id)
    ids[real] = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=total)
    if parts == 2:
        buf[n * t:2 * n * t].reshape(n, t)[real] = np.fromiter(chain.from_iterable(types), dtype=np.int64, count=total)
    buf[parts * n * t:] = lengths
    dev = to_device(torch.from_numpy(buf), device)
    valid = torch.arange(t, device=dev.device)[None] < dev[parts * n * t:, None]
    return TokenBatch(dev[:n * t].view(n, t), dev[n * t:2 * n * t].view(n, t) if parts == 2 else None, valid)


def lower_pass(bb: Backbone, tokens: TokenBatch, stops: set[int]) -> dict[int, torch.Tensor]:
    """Hidden states after layers [0, k) for every k in stops -> {k: [B, T, d]}."""
    h = bb.embed(tokens.input_ids, tokens.token_type_ids)         # [B, T, d]
    out, done = {}, 0
    for k in sorted(stops):
        h = out[k] = bb.run_layers(h, tokens.valid, done, k)
        done = k
    return out


def pad_states(states: list[torch.Tensor], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[T_i, d] tensors -> h [n, W, d] (zeros after each row), valid [n, W]; W = width, or the
    longest T_i."""
    w = max(s.shape[0] for s in states) if width is None else width
    h = states[0].new_zeros((len(states), w, states[0].shape[1]))
    for i, s in enumerate(states):
        h[i, :s.shape[0]] = s
    return h, _valid([s.shape[0] for s in states], w, h.device)


@dataclass
class Group:
    """Rows of one adapter, at that adapter's insertion layer."""

    adapter: "LatePrompt"   # noqa: F821 (lpt.adapter.LatePrompt)
    states: torch.Tensor    # [n, T, d] layer-k hidden states, right-padded (any values after the row)
    valid: torch.Tensor     # [n, T] bool
    readout: torch.Tensor   # [n] long, token index the head reads


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

    Row layout: [prompt slots (L_max) | tokens (T)], T shared by every group; a group with
    L < L_max has its extra slots masked, so each row computes what it would alone (up to float
    rounding).
    """
    t = groups[0].states.shape[1]
    if any(g.states.shape[1] != t for g in groups):
        raise ValueError(f"groups must share one padded width, got {sorted({g.states.shape[1] for g in groups})}")
    l_max = max(g.adapter.length for g in groups)
    parts = []
    for g in groups:
        gen = g.adapter.generator
        prompt = gen(g.states.to(_own_dtype(gen, g.states.dtype)), g.valid).to(g.states.dtype)   # [n, L, d]
        n, length = prompt.shape[:2]
        gap = prompt.new_zeros((n, l_max - length, prompt.shape[2]))
        x = torch.cat([prompt, gap, g.states], dim=1)                                   # [n, L_max+T, d]
        slots = torch.arange(l_max, device=g.valid.device).expand(n, l_max) < length
        parts.append((x, torch.cat([slots, g.valid], dim=1)))

    # Groups join at their own layer: run [k_j, k_{j+1}) on the rows present so far.
    layers = sorted({g.adapter.layer for g in groups})
    order = [j for k in layers for j, g in enumerate(groups) if g.adapter.layer == k]
    x = key_valid = None
    for pos, k in enumerate(layers):
        joining = [parts[j] for j in order if groups[j].adapter.layer == k]
        x = torch.cat(([] if x is None else [x]) + [p[0] for p in joining])
        key_valid = torch.cat(([] if key_valid is None else [key_valid]) + [p[1] for p in joining])
        nxt = layers[pos + 1] if pos + 1 < len(layers) else bb.num_layers
        if nxt > k:
            x = bb.run_layers(x, key_valid, k, nxt)
    x = bb.final_norm(x)                                           # [B, L_max+T, d]

    logits: list[torch.Tensor] = [None] * len(groups)   # type: ignore[list-item]
    start = 0
    for j in order:
        g = groups[j]
        n = g.states.shape[0]
        logits[j] = read_head(bb, g.adapter, x[start:start + n, l_max:], g.valid, g.readout)
        start += n
    return logits

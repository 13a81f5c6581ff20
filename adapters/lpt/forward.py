"""The split forward: lower layers, prompt insertion, upper layers, heads.

    states = lower_pass(bb, tokens, stops={k})[k]      # [B, T, d]   layers [0, k), no prompt
    logits = late_forward(bb, [Group(adapter, states, valid, readout), ...])

`late_forward` (training) and `late_logits` (the engine's mixed batch: one [N, C_max] tensor)
run the same code: every group gets its own prompt from its own generator, the prompts are
padded to the longest L, and groups with a later insertion layer join the batch at their layer;
on a GPU, adjacent adapters of one kind run their generators and heads as one op. The groups
share one token width T: the padded layout of the lower pass is kept up to the heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone
from .generators import stack_key as generator_stack_key
from .generators import stacked_prompts
from .heads import stack_key as head_stack_key
from .heads import stacked_logits


@dataclass
class TokenBatch:
    input_ids: torch.Tensor                 # [B, T] long, right-padded
    token_type_ids: torch.Tensor | None     # [B, T] long
    valid: torch.Tensor                     # [B, T] bool, True at real tokens
    full: bool = False                      # every row is T real tokens: nothing to mask


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
    # Token types that are all 0 (no text pair) are what the embeddings use when given none.
    n, parts = len(seqs), (1 if types[0] is None or not any(map(any, types)) else 2)
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
    return TokenBatch(dev[:n * t].view(n, t), dev[n * t:2 * n * t].view(n, t) if parts == 2 else None, valid,
                      full=int(lengths.min()) == t)


def lower_pass(bb: Backbone, tokens: TokenBatch, stops: set[int]) -> dict[int, torch.Tensor]:
    """Hidden states after layers [0, k) for every k in stops -> {k: [B, T, d]}."""
    h = bb.embed(tokens.input_ids, tokens.token_type_ids)         # [B, T, d]
    out, done = {}, 0
    for k in sorted(stops):
        h = out[k] = bb.run_layers(h, None if tokens.full else tokens.valid, done, k)
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
    full: bool = False      # every row is T real tokens (known on the host): nothing to mask


def _own_dtype(module: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype of a module's weights: an fp32 adapter trained on a bf16 backbone reads its
    inputs in fp32 (mixed precision), one loaded for serving has the backbone's dtype already."""
    p = next(module.parameters(), None)
    return default if p is None else p.dtype


def read_head(bb: Backbone, adapter: "LatePrompt", h: torch.Tensor, valid: torch.Tensor,  # noqa: F821
              readout: torch.Tensor) -> torch.Tensor:
    """The adapter's head on final states [n, T, d] -> logits [n, C]."""
    return adapter.head(h.to(_own_dtype(adapter.head, h.dtype)), valid, readout, bb)


def late_forward(bb: Backbone, groups: list[Group], stack: bool | None = None) -> list[torch.Tensor]:
    """Logits [n_g, C_g] for each group, all groups in one pass through the upper layers
    (`late_logits`; these are views of its one output)."""
    out, starts, widths = late_logits(bb, groups, stack)
    return [out[s:s + g.states.shape[0], :c] for g, s, c in zip(groups, starts, widths)]


def late_logits(bb: Backbone, groups: list[Group], stack: bool | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
    """Every group's logits from one pass -> (out [N, C_max], first row and width of each group).

    Row layout: [prompt slots (L_max) | tokens (T)], T shared by every group; a group with
    L < L_max has its extra slots masked, so each row computes what it would alone (up to float
    rounding). Groups join at their own insertion layer; `out` holds them by layer, in the order
    given within a layer, each group's C_g logits first in its rows (zeros after).

    stack: adjacent groups whose generators (heads) share a `stack_key` run as one op instead of
    one op per group: on a GPU, where a batch of 64 adapters would otherwise launch thousands of
    small kernels. Default: on CUDA; never while an adapter trains (dropout).
    """
    t = groups[0].states.shape[1]
    if any(g.states.shape[1] != t for g in groups):
        raise ValueError(f"groups must share one padded width, got {sorted({g.states.shape[1] for g in groups})}")
    if stack is None:
        stack = groups[0].states.device.type == "cuda"
    plan = _LatePlan.of(groups, stack and not any(g.adapter.training for g in groups))
    x, valid = _upper_pass(bb, plan)
    return _heads(bb, plan, x, valid, _cat([groups[j].readout for j in plan.order]))


@dataclass
class _LatePlan:
    """The host's side of a late pass, worked out before any kernel: which groups join at which
    layer, which adjacent groups run as one op, and the row data the device needs for that
    (prompt lengths where they differ, each stacked run's members), sent in one copy."""

    groups: list[Group]
    order: list[int]                       # group indices by insertion layer: the rows' order
    joining: dict[int, list[Group]]        # layer -> the groups that join there, in order
    prompt_runs: dict[int, list]           # layer -> runs of its groups (generators)
    head_runs: list                        # runs of group indices, in `order` (heads)
    l_max: int
    unmasked: bool                         # every row full, every prompt L_max long: no mask
    sent: dict[tuple, torch.Tensor]        # ("slots", k) / ("prompt", k, r) / ("head", r) -> on the device

    @classmethod
    def of(cls, groups: list[Group], stack: bool) -> "_LatePlan":
        l_max = max(g.adapter.length for g in groups)
        layers = sorted({g.adapter.layer for g in groups})
        order = [j for k in layers for j, g in enumerate(groups) if g.adapter.layer == k]
        joining = {k: [groups[j] for j in order if groups[j].adapter.layer == k] for k in layers}
        prompt_runs = {k: _runs(joining[k], lambda g: generator_stack_key(g.adapter.generator), stack) for k in layers}
        head_runs = _runs(order, lambda j: head_stack_key(groups[j].adapter.head), stack)
        host: dict[tuple, np.ndarray] = {}
        for k in layers:
            lengths = [g.adapter.length for g in joining[k]]
            if min(lengths) < l_max:
                host[("slots", k)] = np.repeat(lengths, [g.states.shape[0] for g in joining[k]])
            for r, (key, run) in enumerate(prompt_runs[k]):
                if _stacked(key, run):
                    host[("prompt", k, r)] = _members([g.states.shape[0] for g in run])
        for r, (key, run) in enumerate(head_runs):
            if _stacked(key, run):
                host[("head", r)] = _members([groups[j].states.shape[0] for j in run])
        unmasked = all(g.full for g in groups) and all(g.adapter.length == l_max for g in groups)
        return cls(groups, order, joining, prompt_runs, head_runs, l_max, unmasked,
                   _send(host, groups[0].states.device))


def _upper_pass(bb: Backbone, plan: _LatePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts in, then the layers from the lowest insertion layer up, each layer's groups
    joining at it -> final states of the tokens [N, T, d] and their mask [N, T]."""
    layers = list(plan.joining)
    x = key_valid = None
    for pos, k in enumerate(layers):
        joining = plan.joining[k]
        h, valid = _cat([g.states for g in joining]), _cat([g.valid for g in joining])
        lengths = plan.sent.get(("slots", k))
        if lengths is not None:
            slots = torch.arange(plan.l_max, device=valid.device)[None] < lengths[:, None]
        else:
            slots = torch.ones((h.shape[0], plan.l_max), dtype=torch.bool, device=valid.device)
        part = torch.cat([_prompts(plan, k, h, valid), h], dim=1)           # [n, L_max+T, d]
        part_valid = torch.cat([slots, valid], dim=1)
        x = part if x is None else torch.cat([x, part])
        key_valid = part_valid if key_valid is None else torch.cat([key_valid, part_valid])
        nxt = layers[pos + 1] if pos + 1 < len(layers) else bb.num_layers
        if nxt > k:
            x = bb.run_layers(x, None if plan.unmasked else key_valid, k, nxt)
    return bb.final_norm(x)[:, plan.l_max:], key_valid[:, plan.l_max:]


def _heads(bb: Backbone, plan: _LatePlan, x: torch.Tensor, valid: torch.Tensor,
           readout: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """Each head on its rows -> (logits [N, C_max], first row and width of each group)."""
    groups = plan.groups
    parts, widths, starts, start = [], [0] * len(groups), [0] * len(groups), 0
    for r, (key, run) in enumerate(plan.head_runs):
        n = sum(groups[j].states.shape[0] for j in run)
        rows = slice(start, start + n)
        if _stacked(key, run):
            lg = stacked_logits([groups[j].adapter.head for j in run], plan.sent[("head", r)], x[rows], valid[rows],
                                readout[rows])
        else:
            lg = read_head(bb, groups[run[0]].adapter, x[rows], valid[rows], readout[rows])
        parts.append(lg)
        for j in run:
            starts[j], widths[j] = start, lg.shape[1]
            start += groups[j].states.shape[0]
    c_max = max(p.shape[1] for p in parts)
    return _cat([F.pad(p, (0, c_max - p.shape[1])) if p.shape[1] < c_max else p for p in parts]), starts, widths


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts)


def _runs(items: list, key, stack: bool) -> list[tuple[tuple | None, list]]:
    """Adjacent items with one non-None key -> one run; every other item is a run alone."""
    out: list[tuple[tuple | None, list]] = []
    for it in items:
        k = key(it) if stack else None
        if k is not None and out and out[-1][0] == k:
            out[-1][1].append(it)
        else:
            out.append((k, [it]))
    return out


def _stacked(key: tuple | None, run: list) -> bool:
    return key is not None and len(run) > 1


def _members(counts: list[int]) -> np.ndarray:
    """[sum(counts)]: the member (within a run) each row belongs to."""
    return np.repeat(np.arange(len(counts)), counts)


def _send(arrays: dict[tuple, np.ndarray], device) -> dict[tuple, torch.Tensor]:
    """Host int arrays -> device tensors, through one copy that does not wait."""
    if not arrays:
        return {}
    dev = to_device(torch.from_numpy(np.concatenate(list(arrays.values())).astype(np.int64)), device)
    return dict(zip(arrays, torch.split(dev, [len(a) for a in arrays.values()])))


def _prompts(plan: _LatePlan, k: int, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The prompt of every row joining at layer k, padded to L_max slots -> [n, L_max, d]."""
    parts, start = [], 0
    for r, (key, run) in enumerate(plan.prompt_runs[k]):
        n = sum(g.states.shape[0] for g in run)
        hs, vs = h[start:start + n], valid[start:start + n]
        if _stacked(key, run):
            prompt = stacked_prompts([g.adapter.generator for g in run], plan.sent[("prompt", k, r)], hs, vs)
        else:
            gen = run[0].adapter.generator
            prompt = gen(hs.to(_own_dtype(gen, hs.dtype)), vs).to(hs.dtype)             # [n, L, d]
        if prompt.shape[1] < plan.l_max:
            prompt = torch.cat([prompt, prompt.new_zeros((n, plan.l_max - prompt.shape[1], prompt.shape[2]))], dim=1)
        parts.append(prompt)
        start += n
    return _cat(parts)

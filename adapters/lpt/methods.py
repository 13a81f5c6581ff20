"""The methods `lpt train --method` compares, as one small interface.

Every method splits the model the same way: a frozen part, layers [0, k), whose output can be
computed once and cached, and a trained part that turns those states into logits.

    method      frozen part          trained part                              file
    lpt         layers [0, k)        generator (NPG) + head, via late_forward   adapter
    static      layers [0, k)        static L x d prompt + head                 adapter
    prompt-tuning  embeddings (k=0)  static prompt + head                       adapter
    probe       all layers           head on the final states                   none
    finetune    nothing              every backbone weight + head               none

The adapter methods run `late_forward`, the code the serving engine runs, so what is trained is
what is served.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapter import LatePrompt, new_adapter, save_adapter
from .backbone import Backbone
from .encoding import Encoded
from .forward import Group, late_forward, lower_pass, pad_states, pad_tokens, read_head

METHODS = ("lpt", "probe", "prompt-tuning", "static", "finetune")
ADAPTER_METHODS = ("lpt", "static", "prompt-tuning")


class StateStore:
    """Per-example hidden states [T_i, d] kept in one flat tensor: no padding stored."""

    def __init__(self, flat: torch.Tensor, offsets: list[int]):
        self.flat = flat            # [sum T_i, d]
        self.offsets = offsets      # row i is flat[offsets[i]:offsets[i+1]]

    def rows(self, idx: list[int]) -> list[torch.Tensor]:
        return [self.flat[self.offsets[i]:self.offsets[i + 1]] for i in idx]

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


@dataclass
class Split:
    """One data split, tokenized once; `store` holds its frozen-part states when cached."""

    encoded: list[Encoded]
    targets: torch.Tensor               # [N] long, label indices
    store: StateStore | None = None

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.encoded]


def longest_first_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches, longest examples first: each batch pads little (no-grad passes)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


class Method:
    """A model to train: `logits(split, idx)` for a batch; what it trains; how it saves."""

    name = "lpt"

    def __init__(self, bb: Backbone, adapter: LatePrompt, layer: int, train_backbone: bool = False):
        self.bb = bb
        self.adapter = adapter               # encoder + head (+ generator for the adapter methods)
        self.layer = layer                   # states after layers [0, layer) feed the trained part
        self.train_backbone = train_backbone

    # ---- data ------------------------------------------------------------------------------
    def encode(self, texts: list[tuple[str, str | None]]) -> list[Encoded]:
        return [self.adapter.encoder.encode(t, p) for t, p in texts]

    @property
    def cacheable(self) -> bool:
        return not self.train_backbone

    def cache_bytes(self, encoded: list[Encoded]) -> int:
        """What caching these examples' states would take."""
        return sum(len(e.input_ids) for e in encoded) * self.bb.hidden_size * self.bb.dtype.itemsize

    def _tokens(self, encoded: list[Encoded]):
        return pad_tokens([e.input_ids for e in encoded], [e.token_type_ids for e in encoded],
                          self.bb.pad_id, self.bb.device)

    @torch.no_grad()
    def compute_states(self, encoded: list[Encoded], batch_size: int = 64) -> StateStore:
        """Run the frozen part once over every example (longest first, to pad little), writing
        each row's real tokens straight into one preallocated flat tensor."""
        offsets = [0]
        for e in encoded:
            offsets.append(offsets[-1] + len(e.input_ids))
        flat = torch.empty((offsets[-1], self.bb.hidden_size), dtype=self.bb.dtype, device=self.bb.device)
        for idx in longest_first_batches([len(e.input_ids) for e in encoded], batch_size):
            h = lower_pass(self.bb, self._tokens([encoded[i] for i in idx]), {self.layer})[self.layer]
            for j, i in enumerate(idx):
                flat[offsets[i]:offsets[i + 1]] = h[j, :offsets[i + 1] - offsets[i]]
        return StateStore(flat, offsets)

    # ---- forward -----------------------------------------------------------------------------
    def logits(self, split: Split, idx: list[int]) -> torch.Tensor:
        """Logits [B, C] for examples idx of split, from cached states when there are some."""
        enc = [split.encoded[i] for i in idx]
        readout = torch.tensor([e.readout for e in enc], device=self.bb.device)
        if split.store is not None:
            h, valid = pad_states(split.store.rows(idx))            # [B, T, d], [B, T]
        else:
            tokens = self._tokens(enc)
            with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
                h = lower_pass(self.bb, tokens, {self.layer})[self.layer]
            valid = tokens.valid
        return self.upper(h, valid, readout)

    def upper(self, h: torch.Tensor, valid: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """The trained part: layer-k states -> logits [B, C]."""
        return late_forward(self.bb, [Group(self.adapter, h, valid, readout)])[0]

    # ---- what is trained -------------------------------------------------------------------------
    def param_groups(self) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
        """(lr kind, named parameters): "lr" for the generator or backbone, "head_lr" for the head."""
        return [("lr", list(self.adapter.generator.named_parameters())),
                ("head_lr", list(self.adapter.head.named_parameters()))]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for _, params in self.param_groups() for _, p in params)

    def modules(self) -> list[nn.Module]:
        """Modules whose weights change (snapshot for best-dev selection) and whose mode flips."""
        return [self.adapter]

    def train(self, on: bool = True) -> None:
        for m in self.modules():
            m.train(on)
        self.bb.model.train(on and self.train_backbone)   # frozen layers stay in eval mode

    def snapshot(self) -> list[dict]:
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules()]

    def restore(self, snap: list[dict]) -> None:
        for m, sd in zip(self.modules(), snap):
            m.load_state_dict(sd)

    @property
    def saves_adapter(self) -> bool:
        return self.name in ADAPTER_METHODS

    def save(self, path) -> str:
        return save_adapter(self.adapter, path)


class ProbeMethod(Method):
    """A linear head on the final states: no prompt, nothing else trained."""

    name = "probe"

    def upper(self, h, valid, readout):
        return read_head(self.bb, self.adapter, self.bb.final_norm(h), valid, readout)

    def param_groups(self):
        return [("head_lr", list(self.adapter.head.named_parameters()))]


class FinetuneMethod(ProbeMethod):
    """Every backbone weight and the head. Trains the backbone it is given, in place."""

    name = "finetune"

    def param_groups(self):
        return [("lr", list(self.bb.model.named_parameters())),
                ("head_lr", list(self.adapter.head.named_parameters()))]

    def modules(self):
        return [self.adapter, self.bb.model]


def adapter_settings(bb: Backbone, method: str, *, task: str, labels: list[str], layer: int | None = None,
                     **adapter_config) -> dict:
    """What `build_method` passes to `new_adapter` for `method`: the caller's settings with the
    method's own (prompt-tuning: k=0 and a static prompt; probe and finetune: an adapter only
    for its encoder and head, its prompt never used)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if layer is None:
        layer = default_layer(bb.num_layers)
    if method == "prompt-tuning":
        layer, adapter_config["generator"] = 0, "static"
    elif method == "static":
        adapter_config["generator"] = "static"
    elif method in ("probe", "finetune"):
        layer = 0
        adapter_config.update(generator="static", prompt_length=1)
    return dict(task=task, labels=labels, layer=layer, **adapter_config)


def build_method(bb: Backbone, method: str, *, task: str, labels: list[str], layer: int | None = None,
                 **adapter_config) -> Method:
    """The model for one method. `adapter_config` goes to `new_adapter` (prompt_length, generator,
    template, ...); probe and finetune use only its encoder and head settings."""
    settings = adapter_settings(bb, method, task=task, labels=labels, layer=layer, **adapter_config)
    adapter = new_adapter(bb, **settings)
    n = bb.num_layers
    if method in ADAPTER_METHODS:
        return Method(bb, adapter, settings["layer"])
    if method == "probe":
        return ProbeMethod(bb, adapter, n)
    bb.model.requires_grad_(True)
    return FinetuneMethod(bb, adapter, n, train_backbone=True)


def default_layer(num_layers: int) -> int:
    """The insertion layer when none is given: the middle of the model (paper: 12 of 24,
    18 of 36; measured on all-MiniLM-L6-v2: 3 of 6 beats 2 and 4)."""
    return num_layers // 2

"""The adapter: one safetensors file (config JSON in the header, generator + head tensors),
and `LatePrompt`, the module built from it against a backbone.

    save_adapter(module, "sentiment.safetensors")
    module = load_adapter("sentiment.safetensors", backbone)   # raises AdapterError with every problem

Nothing here unpickles: the header is parsed by hand and tensors come from safetensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .backbone import Backbone, fingerprint_problems
from .config import AdapterConfig
from .encoding import TextEncoder, label_token_ids
from .generators import build_generator
from .heads import LinearHead, VerbalizerHead

CONFIG_KEY = "lpt.config"
MAX_HEADER_BYTES = 1 << 20


class AdapterError(ValueError):
    """An adapter that cannot be used; `problems` lists every reason at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class LatePrompt(nn.Module):
    """One task: the prompt generator, the head, and the text encoder, bound to a backbone."""

    def __init__(self, config: AdapterConfig, backbone: Backbone):
        super().__init__()
        self.config = config
        self.version: str | None = None   # sha256 of the file it was loaded from
        d = backbone.hidden_size
        self.generator = build_generator(config.generator, d, config.prompt_length, config.bottleneck,
                                         config.dropout, anchor_last=backbone.causal)
        if config.head_kind == "linear":
            self.head: nn.Module = LinearHead(d, len(config.labels), config.pooling)
        else:
            if not backbone.has_lm_head:
                raise AdapterError([f"head_kind {config.head_kind!r} needs a model with an LM head; "
                                    f"{backbone.model_id!r} has none (use head_kind 'linear')"])
            if (config.head_kind == "lm") != backbone.causal:
                want = "lm" if backbone.causal else "mlm"
                raise AdapterError([f"head_kind {config.head_kind!r} does not fit a "
                                    f"{'decoder' if backbone.causal else 'masked-LM'} model: use {want!r}"])
            self.head = VerbalizerHead(label_token_ids(backbone.tokenizer, config.label_words))
        self.encoder = TextEncoder(backbone.tokenizer, config, backbone.causal, backbone.max_positions)

    @property
    def layer(self) -> int:
        return self.config.layer

    @property
    def length(self) -> int:
        return self.config.prompt_length

    @property
    def labels(self) -> list[str]:
        return self.config.labels


def new_adapter(backbone: Backbone, **config) -> LatePrompt:
    """A freshly initialised adapter for training: `new_adapter(bb, task="t", labels=[...], layer=3)`."""
    cfg = AdapterConfig(base_model={"id": backbone.model_id, **backbone.fingerprint()}, **config)
    problems = cfg.problems() + _backbone_problems(cfg, backbone)
    if problems:
        raise AdapterError(problems)
    return LatePrompt(cfg, backbone).to(backbone.device)


# ---- the file -----------------------------------------------------------------------------
def adapter_bytes(module: LatePrompt) -> bytes:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    return st_save(tensors, metadata={CONFIG_KEY: module.config.to_json()})


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename: a crash leaves either
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp makes 0600: other users (a container's server) must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_adapter(module: LatePrompt, path: str | Path) -> str:
    """Save atomically; returns the version (sha256 of the file)."""
    data = adapter_bytes(module)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


@dataclass
class AdapterFile:
    """A parsed adapter file, not yet checked against a backbone."""

    config: AdapterConfig
    tensors: dict[str, torch.Tensor]
    version: str          # sha256 of the bytes
    size: int


def _header(data: bytes) -> tuple[dict | None, list[str]]:
    # A safetensors file is <u64 header length><JSON header "{...">. Its first byte is the low
    # byte of that length and can be 0x80 (a pickle's first byte) by chance: only call it a
    # pickle when it does not look like safetensors.
    looks_safetensors = len(data) >= 9 and data[8:9] == b"{" and 8 + struct.unpack("<Q", data[:8])[0] <= len(data)
    if not looks_safetensors and (data[:1] == b"\x80" or data[:2] == b"PK"):
        return None, ["this is a pickle / torch.save file, not safetensors: only safetensors files are accepted"]
    if len(data) < 8:
        return None, [f"not a safetensors file: {len(data)} bytes is too short for a header"]
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        return None, [f"not a safetensors file (or truncated): header claims {n} bytes, file has {len(data)}"]
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, ["not a safetensors file: the header is not JSON"]
    if not isinstance(header, dict):
        return None, ["not a safetensors file: the header is not a JSON object"]
    return header, []


def read_adapter(source: bytes | str | Path) -> AdapterFile:
    """Parse bytes or a path. Raises AdapterError listing every problem found."""
    data = Path(source).read_bytes() if not isinstance(source, (bytes, bytearray)) else bytes(source)
    header, problems = _header(data)
    if header is None:
        raise AdapterError(problems)
    meta = header.get("__metadata__") or {}
    if CONFIG_KEY not in meta:
        problems.append(f"the safetensors header has no {CONFIG_KEY!r} metadata: not an lpt adapter")
        config = None
    else:
        config, problems_cfg = AdapterConfig.from_json(meta[CONFIG_KEY])
        problems += problems_cfg
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types on truncated/corrupt data
        problems.append(f"tensor data is corrupt or truncated: {e}")
        tensors = {}
    for name, t in tensors.items():
        if not t.is_floating_point():
            problems.append(f"tensor {name!r} has dtype {t.dtype}, expected a float type")
        elif not torch.isfinite(t).all():
            problems.append(f"tensor {name!r} contains NaN or Inf")
    if problems:
        raise AdapterError(problems)
    return AdapterFile(config, tensors, hashlib.sha256(data).hexdigest(), len(data))


def _backbone_problems(cfg: AdapterConfig, backbone: Backbone) -> list[str]:
    p = []
    if isinstance(cfg.layer, int) and not 0 <= cfg.layer < backbone.num_layers:
        p.append(f"layer (k) is {cfg.layer}, the model has {backbone.num_layers} layers: k must be in "
                 f"[0, {backbone.num_layers - 1}]")
    fp = {k: v for k, v in cfg.base_model.items() if k != "id"}
    if fp:
        p += fingerprint_problems(fp, backbone.fingerprint())
    return p


def validate(adapter: AdapterFile, backbone: Backbone, max_bytes: int | None = None) -> list[str]:
    """Every reason this adapter cannot serve on this backbone (empty list: it can)."""
    cfg = adapter.config
    problems = []
    if max_bytes is not None and adapter.size > max_bytes:
        problems.append(f"adapter is {adapter.size} bytes, the limit is {max_bytes}")
    if not cfg.base_model:
        problems.append("config has no base_model fingerprint")
    problems += _backbone_problems(cfg, backbone)
    try:
        expected = {k: v.shape for k, v in LatePrompt(cfg, backbone).state_dict().items()}
    except (AdapterError, ValueError) as e:
        return problems + (e.problems if isinstance(e, AdapterError) else [str(e)])
    got = adapter.tensors
    problems += [f"missing tensor {k!r} (shape {list(s)})" for k, s in expected.items() if k not in got]
    problems += [f"unexpected tensor {k!r}" for k in got if k not in expected]
    problems += [f"tensor {k!r} has shape {list(got[k].shape)}, expected {list(s)} "
                 f"(hidden size {backbone.hidden_size}, L={cfg.prompt_length}, r={cfg.bottleneck})"
                 for k, s in expected.items() if k in got and got[k].shape != s]
    return problems


def load_adapter(source: bytes | str | Path | AdapterFile, backbone: Backbone,
                 max_bytes: int | None = None) -> LatePrompt:
    """Read, validate, and build the module on the backbone's device and dtype, in eval mode."""
    adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
    problems = validate(adapter, backbone, max_bytes)
    if problems:
        raise AdapterError(problems)
    module = LatePrompt(adapter.config, backbone)
    module.load_state_dict(adapter.tensors, strict=True)
    module.version = adapter.version
    return module.to(backbone.device, backbone.dtype).eval().requires_grad_(False)

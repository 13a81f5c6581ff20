"""The adapter: one safetensors file (config JSON in the header, generator + head tensors),
and `LatePrompt`, the module built from it against a backbone.

    save_adapter(module, "sentiment.safetensors")
    module = load_adapter("sentiment.safetensors", backbone)   # raises AdapterError with every problem

Nothing here unpickles: the header is parsed by hand and tensors come from safetensors. A file
is untrusted until checked, in this order, each step only on what the previous one bounded:
header size and nesting -> config schema (lpt.config) -> the tensors the header declares (names,
dtypes, shapes, against shapes computed from the config) -> only then the tensor data is loaded
(checked finite) -> only then a module is built.
"""
from __future__ import annotations

import hashlib
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .backbone import Backbone, fingerprint_problems
from .config import AdapterConfig
from .encoding import TextEncoder, label_token_ids
from .generators import build_generator, generator_shapes
from .heads import LinearHead, VerbalizerHead, head_shapes
from .schema import Choice, Int, List, Object, load_json, show

CONFIG_KEY = "lpt.config"
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 16          # an adapter has at most 6
DTYPES = ("F32", "F16", "BF16")
MIN_BYTES_PER_PARAMETER = 2
TENSOR_ENTRY = Object({"dtype": Choice(DTYPES), "shape": List(Int(0, 1 << 40), 0, 4),
                       "data_offsets": List(Int(0, 1 << 62), 2, 2)}, required=("dtype", "shape", "data_offsets"))


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
            problems = _head_problems(config, backbone)
            if problems:
                raise AdapterError(problems)
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


def expected_shapes(config: AdapterConfig, hidden: int) -> dict[str, tuple[int, ...]]:
    """LatePrompt's state_dict shapes for this config and hidden size, computed without
    building it (a config asking for a huge module costs nothing to refuse)."""
    gen = generator_shapes(config.generator, hidden, config.prompt_length, config.bottleneck)
    head = head_shapes(config.head_kind, hidden, len(config.labels))
    return {**{f"generator.{k}": s for k, s in gen.items()}, **{f"head.{k}": s for k, s in head.items()}}


def tensor_bytes(config: AdapterConfig, hidden: int) -> int:
    """The bytes of an adapter file's tensors (float32) for this config, without building it."""
    return 4 * sum(math.prod(shape) for shape in expected_shapes(config, hidden).values())


def new_config(backbone: Backbone, **config) -> AdapterConfig:
    """The checked config of a new adapter on `backbone` (AdapterError with every problem)."""
    cfg = AdapterConfig(base_model={"id": backbone.model_id, **backbone.fingerprint()}, **config)
    problems = cfg.problems() or _fit_problems(cfg, backbone)
    if problems:
        raise AdapterError(problems)
    return cfg


def new_adapter(backbone: Backbone, **config) -> LatePrompt:
    """A freshly initialised adapter for training: `new_adapter(bb, task="t", labels=[...], layer=3)`."""
    return LatePrompt(new_config(backbone, **config), backbone).to(backbone.device)


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
    """A parsed adapter file whose header, config and tensors are checked; not yet checked
    against a backbone unless it was read with one."""

    config: AdapterConfig
    tensors: dict[str, torch.Tensor]
    version: str          # sha256 of the bytes
    size: int
    # (backbone, problems) of the last check against a backbone: validate() then load_adapter()
    # on the same file and backbone check once
    _fit: tuple[Backbone, list[str]] | None = field(default=None, repr=False, compare=False)


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
        return None, [f"not a safetensors file (or truncated): header claims {n} bytes, file has {len(data)} "
                      f"(a header may have at most {MAX_HEADER_BYTES})"]
    header, why = load_json(data[8:8 + n], "the safetensors header")
    if why:
        return None, [f"not a safetensors file: {why}"]
    if not isinstance(header, dict):
        return None, ["not a safetensors file: the header is not a JSON object"]
    return header, []


def _config(header: dict) -> tuple[AdapterConfig | None, list[str]]:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return None, [f"the safetensors __metadata__ must be an object of strings, got {show(meta)}"]
    if CONFIG_KEY not in meta:
        return None, [f"the safetensors header has no {CONFIG_KEY!r} metadata: not an lpt adapter"]
    return AdapterConfig.from_json(meta[CONFIG_KEY])


def _declared_shapes(header: dict) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """The tensors the header declares (name -> shape), read before any tensor data is."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        return {}, [f"the file declares {len(entries)} tensors, an adapter has at most {MAX_TENSORS}"]
    problems = []
    for name, entry in entries.items():
        problems += TENSOR_ENTRY.problems(f"tensor {show(name)}", entry)
    if problems:
        return {}, problems
    return {k: tuple(v["shape"]) for k, v in entries.items()}, []


def _tensor_problems(got: dict[str, tuple[int, ...]], cfg: AdapterConfig, hidden: int, size: int) -> list[str]:
    """The tensors `got` (name -> shape) against those the config implies at this hidden size."""
    expected = expected_shapes(cfg, hidden)
    params = sum(math.prod(s) for s in expected.values())
    p = []
    if params * MIN_BYTES_PER_PARAMETER > size:
        p.append(f"the config implies {params} parameters (at least {params * MIN_BYTES_PER_PARAMETER} bytes) "
                 f"but the file is {size} bytes: check bottleneck, prompt_length and labels")
    p += [f"missing tensor {k!r} (shape {list(s)})" for k, s in expected.items() if k not in got]
    p += [f"unexpected tensor {show(k)}" for k in got if k not in expected]
    p += [f"tensor {k!r} has shape {list(got[k])}, expected {list(s)} "
          f"(hidden size {hidden}, L={cfg.prompt_length}, r={cfg.bottleneck})"
          for k, s in expected.items() if k in got and tuple(got[k]) != s]
    return p


def read_adapter(source: bytes | str | Path, backbone: Backbone | None = None,
                 max_bytes: int | None = None) -> AdapterFile:
    """Parse bytes or a path and check everything the file alone tells; with a backbone, also
    whether it fits that backbone (then `validate`/`load_adapter` on the result check nothing
    again). Raises AdapterError listing every problem found; no tensor data is loaded unless
    the header, config and declared tensors are all sound."""
    data = Path(source).read_bytes() if not isinstance(source, (bytes, bytearray)) else bytes(source)
    header, problems = _header(data)
    if header is None:
        raise AdapterError(problems)
    config, problems = _config(header)
    shapes, shape_problems = _declared_shapes(header)
    problems += shape_problems
    if config is not None and not shape_problems:
        hidden = backbone.hidden_size if backbone is not None else config.base_model["hidden_size"]
        problems += _tensor_problems(shapes, config, hidden, len(data))
        if backbone is not None:
            problems += _size_problems(len(data), max_bytes) + _fit_problems(config, backbone)
    if problems or config is None:
        raise AdapterError(problems)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types on truncated/corrupt data
        raise AdapterError([f"tensor data is corrupt or truncated: {e}"]) from None
    nonfinite = [f"tensor {k!r} contains NaN or Inf" for k, t in tensors.items() if not torch.isfinite(t).all()]
    if nonfinite:
        raise AdapterError(nonfinite)
    return AdapterFile(config, tensors, hashlib.sha256(data).hexdigest(), len(data),
                       _fit=(backbone, []) if backbone is not None else None)


def _size_problems(size: int, max_bytes: int | None) -> list[str]:
    return [f"adapter is {size} bytes, the limit is {max_bytes}"] if max_bytes is not None and size > max_bytes else []


def _head_problems(cfg: AdapterConfig, backbone: Backbone) -> list[str]:
    if cfg.head_kind == "linear":
        return []
    if not backbone.has_lm_head:
        return [f"head_kind {cfg.head_kind!r} needs a model with an LM head; "
                f"{backbone.model_id!r} has none (use head_kind 'linear')"]
    if (cfg.head_kind == "lm") != backbone.causal:
        want = "lm" if backbone.causal else "mlm"
        return [f"head_kind {cfg.head_kind!r} does not fit a "
                f"{'decoder' if backbone.causal else 'masked-LM'} model: use {want!r}"]
    return []


def _fit_problems(cfg: AdapterConfig, backbone: Backbone) -> list[str]:
    """Every reason a schema-valid config cannot serve on this backbone, tensors aside."""
    p = []
    if not cfg.layer < backbone.num_layers:
        p.append(f"layer (k) is {cfg.layer}, the model has {backbone.num_layers} layers: k must be in "
                 f"[0, {backbone.num_layers - 1}]")
    p += fingerprint_problems({k: v for k, v in cfg.base_model.items() if k != "id"}, backbone.fingerprint())
    p += _head_problems(cfg, backbone)
    if p:
        return p      # the tokenizer checks below only mean something on the right model
    try:
        if cfg.head_kind != "linear":
            label_token_ids(backbone.tokenizer, cfg.label_words)
    except ValueError as e:
        p.append(str(e))
    try:
        TextEncoder(backbone.tokenizer, cfg, backbone.causal, backbone.max_positions)
    except ValueError as e:
        p.append(str(e))
    return p


def validate(adapter: AdapterFile, backbone: Backbone, max_bytes: int | None = None) -> list[str]:
    """Every reason this adapter cannot serve on this backbone (empty list: it can). Builds
    nothing: the tensors are compared with shapes computed from the config."""
    if adapter._fit is None or adapter._fit[0] is not backbone:
        shapes = {k: tuple(t.shape) for k, t in adapter.tensors.items()}
        adapter._fit = (backbone, _fit_problems(adapter.config, backbone)
                        + _tensor_problems(shapes, adapter.config, backbone.hidden_size, adapter.size))
    return _size_problems(adapter.size, max_bytes) + adapter._fit[1]


def load_adapter(source: bytes | str | Path | AdapterFile, backbone: Backbone,
                 max_bytes: int | None = None) -> LatePrompt:
    """Read, validate, and build the module on the backbone's device and dtype, in eval mode.
    From bytes or a path: one read, one parse, one check, one build."""
    adapter = source if isinstance(source, AdapterFile) else read_adapter(source, backbone, max_bytes)
    problems = validate(adapter, backbone, max_bytes)
    if problems:
        raise AdapterError(problems)
    module = LatePrompt(adapter.config, backbone)
    module.load_state_dict(adapter.tensors, strict=True)
    module.version = adapter.version
    return module.to(backbone.device, backbone.dtype).eval().requires_grad_(False)

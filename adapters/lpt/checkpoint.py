"""A checkpoint's files as one of lpt's own models (models.py): which files, which names, which ties.

    model = build(build_bert, config, "path/or/hub-id", lm_head=True, dtype=torch.float32)   # None: not ours

The parameters are the checkpoint's tensors as safetensors maps them from the file (copied only
where the dtype or device differs), as transformers does. Where a model is not written in
models.py, or its weights cannot be read here (none in a local folder, a hub snapshot without
safetensors files, a broken file), `build` answers None and transformers' loader takes over.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .models import Decoder, WithLMHead


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not make the model its config describes."""


# A checkpoint's weights in the files read here (safetensors: whole or sharded)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")


def checkpoint_folder(name_or_path: str) -> Path | None:
    """Where a checkpoint's files are: a local folder itself; for a hub id, its snapshot in the
    Hugging Face cache, with the config and the safetensors weights fetched once (one file, or
    the shards where there is no single file; from the cache alone when offline). None where
    that fails: transformers' loader then tries, and says why."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name_or_path, allow_patterns=["config.json", WEIGHT_FILES[0]]))
        if not (folder / WEIGHT_FILES[0]).is_file():
            folder = Path(snapshot_download(name_or_path, allow_patterns=list(WEIGHT_FILES[1:])))
        return folder
    except Exception:       # the hub's errors are of many kinds (HTTP, offline, no such file)
        return None


def read_tensors(folder: Path) -> dict[str, torch.Tensor] | None:
    """Every tensor of a local checkpoint by name, mapped from its files, in transformers' order
    of preference: model.safetensors, sharded safetensors, pytorch_model.bin (through the
    weights-only loader). None if it has none of them or they cannot be read as such (a
    missing shard, a pre-zip .bin): transformers' loader then tries."""
    from safetensors import SafetensorError, safe_open

    try:
        if (folder / WEIGHT_FILES[0]).is_file():
            files = [WEIGHT_FILES[0]]
        elif (folder / WEIGHT_FILES[1]).is_file():
            files = sorted(set(json.loads((folder / WEIGHT_FILES[1]).read_text())["weight_map"].values()))
        elif (folder / "pytorch_model.bin").is_file():
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        else:
            return None
        tensors = {}
        for name in files:
            with safe_open(folder / name, framework="pt") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
        return tensors
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError):
        return None


def _own_name(key: str) -> str:
    """TF-era LayerNorm names (gamma, beta) as torch's."""
    if key.endswith(".gamma"):
        return key[:-len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[:-len("beta")] + "bias"
    return key


def _named_as_model(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under this model's names. Like transformers, the base model's
    prefix (`bert.`, `transformer.`, ...) is dropped for a model without a head and added for one
    with a head where the checkpoint's base keys lack it (the hub's own GPT-2 files do)."""
    found = {_own_name(k): t for k, t in tensors.items()}
    if not isinstance(model, WithLMHead):
        return {k.removeprefix(model.prefix + "."): t for k, t in found.items()}
    heads = {name for name, _ in model.named_children() if name != model.prefix}
    return {k if k.split(".", 1)[0] in heads | {model.prefix} else f"{model.prefix}.{k}": t
            for k, t in found.items()}


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """The checkpoint's tensors as the model's parameters, by name (mapped, not copied, where
    the dtype is the file's), the head's output weights tied to the word embeddings as the
    config asks (unless the checkpoint holds other values for them). Tensors nothing reads (a
    pooler, position-id buffers, another head) are skipped. Raises CheckpointError naming a
    tensor that is missing or of another shape than the config makes it."""
    with_head = isinstance(model, WithLMHead)
    params = dict(model.named_parameters())
    found = _named_as_model(model, tensors)
    for path, head in model.named_modules():
        if isinstance(head, Decoder) and f"{path}.decoder.bias" not in found and f"{path}.bias" in found:
            found[f"{path}.decoder.bias"] = found[f"{path}.bias"]
    ties = model.ties if with_head and getattr(model.config, "tie_word_embeddings", True) else {}
    # as transformers: a head weight of its own in the checkpoint that differs stays untied
    ties = {dst: src for dst, src in ties.items()
            if dst not in found or (src in found and torch.equal(found[dst], found[src]))}
    missing = sorted(set(params) - set(found) - set(ties))
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}")
    state = {k: t for k, t in found.items() if k in params and k not in ties}
    wrong = [f"{k} is {list(t.shape)}, the config makes it {list(params[k].shape)}"
             for k, t in state.items() if t.shape != params[k].shape]
    if wrong:
        raise CheckpointError(f"the checkpoint does not match its config: {'; '.join(wrong[:3])}")
    model.load_state_dict({k: (t if t.dtype == dtype else t.to(dtype)) for k, t in state.items()},
                          strict=False, assign=True)
    for dst, src in ties.items():
        owner, _, leaf = dst.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(src))
    return model


def build(builder: Callable[..., nn.Module | None], config, name_or_path: str | Path, lm_head: bool,
          dtype: torch.dtype) -> nn.Module | None:
    """The model of `config` with the tensors of the checkpoint at `name_or_path` (a folder or a
    hub id), in eval mode; None where models.py does not write that model or its weights cannot
    be read here (transformers loads it instead)."""
    model = builder(config, lm_head)
    if model is None:
        return None
    folder = checkpoint_folder(str(name_or_path))
    tensors = read_tensors(folder) if folder is not None else None
    if tensors is None:
        return None
    if isinstance(model, WithLMHead) and not _holds_head(model, tensors):
        model = builder(config, False)        # no trained LM head in the checkpoint: none is invented
    return load_tensors(model, tensors, dtype).eval()


def _holds_head(model: WithLMHead, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the checkpoint holds the LM head's own tensors (any of them; those tied to the
    word embeddings aside). A config may name a masked-LM architecture over a checkpoint of the
    base model alone, as sentence-transformers' models do."""
    own = {k for k, _ in model.named_parameters() if not k.startswith(model.prefix + ".")} - set(model.ties)
    return not own or bool(own & set(_named_as_model(model, tensors)))

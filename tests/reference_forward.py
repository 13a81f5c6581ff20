"""Late Prompt Tuning written out once more, one row at a time, to check lpt's forward against.

Nothing of lpt's forward path is used (no lower_pass, late_forward, run_layers, attention_bias,
generator or head forward): only the adapter's weights and the Hugging Face model's own pieces
(its forward for layers [0, k), its blocks, final norm and LM head). One row, no padding:

    h_k    = model(ids).hidden_states[k]                    [T, d]   layers [0, k), no prompt
    p      = generator weights applied to h_k               [L, d]
    x      = [p_1 .. p_L | h_k,1 .. h_k,T]                  [L+T, d] prompt in front, encoders and decoders
    x      = blocks k .. n-1 on x, then the final norm      encoders: every key; decoders: causal
    logits = head on the real tokens x[L:]                  [C]

The prompt gets no position embedding: the real tokens keep positions 0..T-1 from the embedding
layer. Under the causal mask the real tokens see the whole prompt, a prompt slot the slots before it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lpt import Backbone, LatePrompt


def transformers_backbone(name_or_path: str = "minilm") -> Backbone:
    """The checkpoint through transformers' own model classes: what `Backbone.load` gives a
    family that lpt.models does not write, and the reference that lpt's own modules answer to."""
    from transformers import AutoConfig, AutoTokenizer

    from lpt.backbone import _has_lm_head, transformers_model, family, resolve_model_path

    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    model = transformers_model(path, _has_lm_head(config), family(config.model_type).causal, torch.float32)
    return Backbone(model, AutoTokenizer.from_pretrained(path), model_id=name_or_path)


def layer_states(bb: Backbone, input_ids: tuple[int, ...], token_type_ids: tuple[int, ...] | None,
                 k: int) -> torch.Tensor:
    """The model's own hidden states after layers [0, k) -> [T, d] (k < number of layers)."""
    kwargs = {"input_ids": torch.tensor([input_ids])}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.tensor([token_type_ids])
    return bb.base(**kwargs, output_hidden_states=True).hidden_states[k][0]


def prompt(adapter: LatePrompt, h: torch.Tensor, causal: bool) -> torch.Tensor:
    """The generator's weights on h [T, d] -> [L, d], dropout off."""
    g, kind, length = adapter.generator, adapter.config.generator, adapter.config.prompt_length
    if kind == "static":
        return g.prompt
    if kind == "npg":   # anchor: the first real token of an encoder, the last of a decoder
        x = F.linear(torch.relu(F.linear(h[-1 if causal else 0], g.down.weight, g.down.bias)), g.up.weight, g.up.bias)
        return x.view(length, -1)
    z = F.linear(h, g.down.weight, g.down.bias).T[None]            # [1, r, T]
    pool = F.adaptive_max_pool1d if kind == "max" else F.adaptive_avg_pool1d
    return F.linear(torch.relu(pool(z, length)[0].T), g.up.weight, g.up.bias)   # [L, d]


def upper(bb: Backbone, x: torch.Tensor, k: int) -> torch.Tensor:
    """Blocks [k, n) and the final norm on one unpadded row x [S, d] -> [S, d]."""
    s = x.shape[0]
    allowed = torch.ones(s, s, dtype=torch.bool)
    if bb.config.model_type == "gpt2":
        allowed = allowed.tril()
    mask = torch.zeros(s, s).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    if bb.config.model_type == "mpnet":     # its relative position bias, by transformers' own code
        mask = mask + bb.base.encoder.compute_position_bias(x[None])
    blocks = bb.base.h if bb.config.model_type == "gpt2" else \
        bb.base.transformer.layer if bb.config.model_type == "distilbert" else bb.base.encoder.layer
    x = x[None]
    for block in blocks[k:]:
        out = block(x, attention_mask=mask)
        x = out[0] if isinstance(out, tuple) else out
    return (bb.base.ln_f(x) if bb.config.model_type == "gpt2" else x)[0]


def vocab_logits(bb: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The model's own LM head on x [d] -> [V]."""
    m, kind = bb.model, bb.config.model_type
    if kind == "bert":
        return m.cls(x)
    if kind in ("roberta", "mpnet"):
        return m.lm_head(x)
    if kind == "distilbert":
        return m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(x))))
    if kind == "electra":
        return m.generator_lm_head(m.generator_predictions(x))
    return m.lm_head(x)   # gpt2


def head(bb: Backbone, adapter: LatePrompt, h: torch.Tensor, input_ids: tuple[int, ...]) -> torch.Tensor:
    """The task's scores from the final states of the real tokens h [T, d] -> [C]."""
    cfg, causal = adapter.config, bb.config.model_type == "gpt2"
    if cfg.head_kind == "mlm":
        x = h[input_ids.index(bb.tokenizer.mask_token_id)]
    elif cfg.head_kind == "linear" and cfg.pooling == "mean":
        x = h.mean(0)
    elif cfg.head_kind == "lm" or causal or cfg.pooling == "last":
        x = h[-1]
    else:
        x = h[0]
    if cfg.head_kind == "linear":
        return F.linear(x, adapter.head.linear.weight, adapter.head.linear.bias)
    words = bb.tokenizer.convert_tokens_to_ids(cfg.label_words)
    return vocab_logits(bb, x)[words]


@torch.no_grad()
def reference_logits(bb: Backbone, adapter: LatePrompt, text: str, text_pair: str | None = None,
                     with_prompt: bool = True) -> torch.Tensor:
    """One row's logits [C]. with_prompt=False: the same pass with no prompt at all."""
    enc = adapter.encoder.encode(text, text_pair)           # tokenization is not what is checked here
    k, causal = adapter.config.layer, bb.config.model_type == "gpt2"
    h = layer_states(bb, enc.input_ids, enc.token_type_ids, k)
    p = prompt(adapter, h, causal) if with_prompt else h[:0]
    x = upper(bb, torch.cat([p, h]), k)
    return head(bb, adapter, x[p.shape[0]:], enc.input_ids)

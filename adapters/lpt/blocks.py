"""What every block runs, on transformers' modules or on lpt's own (models.py) alike: the post-norm
block on either layout, the additive attention bias, and each family's block parts, relative
position bias and embedding step.

    h = embed_bert(base, ids, types)                                  # [B, T, d]
    bias = block_bias(base, valid, h.dtype, causal, position_bias)    # [B, 1|heads, S|1, S]
    x = post_norm_block(x, layout, bias, bert_parts(block))           # packed [rows, d] or [B, S, d]
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Layout(Protocol):
    """Where a block's tokens are: packed real tokens (backbone.Packing) or the padded batch itself."""

    def pad(self, x: torch.Tensor) -> torch.Tensor: ...
    def pack(self, x: torch.Tensor) -> torch.Tensor: ...


class Padded:
    """The identity layout: the block's input is already [B, S, d]."""

    @staticmethod
    def pad(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def pack(x: torch.Tensor) -> torch.Tensor:
        return x


def post_norm_block(x: torch.Tensor, layout: Layout, bias: torch.Tensor | None, parts: "BlockParts",
                    dropout: float = 0.0, attn_dropout: float = 0.0) -> torch.Tensor:
    """A post-norm encoder block: self-attention scaled by 1/sqrt(head size), then the
    feed-forward, each followed by (dropout,) add & norm. x is [rows, d] packed (layout: Packing;
    the linear layers, ~80% of the work, see only real tokens) or [B, S, d] (layout: Padded);
    attention always runs on the padded layout under the additive mask `bias`. Dropout only
    where asked (a model in training mode)."""
    heads = parts.heads
    if layout is Padded:        # each projection viewed as [B, heads, S, dh] as it is: no copy
        b, s = x.shape[:2]
        q, k, v = (lin(x).view(b, s, heads, -1).transpose(1, 2) for lin in parts.qkv)
    else:                       # packed: one scatter to the padded layout serves all three
        qkv_out = layout.pad(torch.cat([lin(x) for lin in parts.qkv], dim=-1))           # [B, S, 3d]
        b, s = qkv_out.shape[:2]
        q, k, v = qkv_out.view(b, s, 3, heads, -1).permute(2, 0, 3, 1, 4)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=attn_dropout)   # [B, heads, S, dh]
    a = parts.attn_out(layout.pack(ctx.transpose(1, 2).reshape(b, s, -1)))
    x = parts.norm1((F.dropout(a, dropout) if dropout else a) + x)
    f = parts.ffn(x)
    return parts.norm2((F.dropout(f, dropout) if dropout else f) + x)


def additive_mask(key_valid: torch.Tensor, dtype: torch.dtype, causal: bool = False) -> torch.Tensor:
    """key_valid [B, S] bool -> additive attention mask [B, 1, S|1, S]: 0 where a query may
    attend, the dtype's minimum (never -inf) where not, so that a query whose keys are all
    masked (an empty prompt slot) stays finite instead of NaN; causal: each query also sees
    only the keys up to its own position."""
    allowed = key_valid[:, None, None, :]                              # [B, 1, 1, S]
    if causal:
        s = key_valid.shape[1]
        allowed = allowed & torch.ones(s, s, dtype=torch.bool, device=key_valid.device).tril()[None, None]
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=key_valid.device), torch.finfo(dtype).min)


def block_bias(base: nn.Module, key_valid: torch.Tensor, dtype: torch.dtype, causal: bool = False,
               position_bias: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """What every block adds to its attention scores: the additive mask, and where the family
    has one (MPNet), its relative position bias from each row's own positions (`cumsum(valid) - 1`:
    a row's masked prompt slots are skipped, so the row gets the bias it gets alone)."""
    bias = additive_mask(key_valid, dtype, causal)
    return bias if position_bias is None else bias + position_bias(base, key_valid.long().cumsum(1) - 1)


class BlockParts(NamedTuple):
    """What a post-norm block is made of, wherever its modules live (transformers' or ours)."""

    qkv: tuple[nn.Module, nn.Module, nn.Module]
    heads: int
    attn_out: nn.Module
    norm1: nn.Module
    ffn: Callable[[torch.Tensor], torch.Tensor]
    norm2: nn.Module


def bert_parts(block: nn.Module) -> BlockParts:
    """A BERT-shaped block's parts (BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA)."""
    att, mid, out = block.attention.self, block.intermediate, block.output
    return BlockParts((att.query, att.key, att.value), att.num_attention_heads, block.attention.output.dense,
                      block.attention.output.LayerNorm, lambda h: out.dense(mid.intermediate_act_fn(mid.dense(h))),
                      out.LayerNorm)


def distilbert_parts(block: nn.Module) -> BlockParts:
    att, ffn = block.attention, block.ffn
    return BlockParts((att.q_lin, att.k_lin, att.v_lin), att.n_heads, att.out_lin, block.sa_layer_norm,
                      lambda h: ffn.lin2(ffn.activation(ffn.lin1(h))), block.output_layer_norm)


def mpnet_parts(block: nn.Module) -> BlockParts:
    att, mid, out = block.attention.attn, block.intermediate, block.output
    return BlockParts((att.q, att.k, att.v), att.num_attention_heads, att.o, block.attention.LayerNorm,
                      lambda h: out.dense(mid.intermediate_act_fn(mid.dense(h))), out.LayerNorm)


def relative_buckets(relative: torch.Tensor, buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Key position minus query position -> MPNet's (T5's) bucket: exact up to 8 either way, then
    logarithmic up to max_distance; the two directions in halves of the buckets."""
    n = -relative
    half = buckets // 2
    exact = half // 2
    far = exact + (torch.log(n.abs().float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return (n < 0).long() * half + torch.where(n.abs() < exact, n.abs(), far.clamp(max=half - 1))


def mpnet_position_bias(b: nn.Module, positions: torch.Tensor) -> torch.Tensor:
    """positions [B, S] (each row's own, from 0) -> the relative position bias [B, heads, S, S]
    that MPNet adds to every block's attention scores. Each row's own positions, so that a row's
    bias does not depend on the prompt slots other rows of its batch need."""
    relative = positions[:, None, :] - positions[:, :, None]            # [B, query, key]
    return b.encoder.relative_attention_bias(relative_buckets(relative)).permute(0, 3, 1, 2)


# ---- the embedding step of each family: (base model, ids [B, T], token types or None) -> [B, T, d],
# real tokens at positions 0..T-1; on transformers' modules or ours alike
def embed_bert(b: nn.Module, ids: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
    h = b.embeddings(input_ids=ids, token_type_ids=types)
    project = getattr(b, "embeddings_project", None)   # ELECTRA, where the embedding size != hidden
    return project(h) if project is not None else h


def embed_distilbert(b: nn.Module, ids: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
    return b.embeddings(ids)                             # no token types


def embed_mpnet(b: nn.Module, ids: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
    return b.embeddings(input_ids=ids)                   # no token types


def embed_gpt2(b: nn.Module, ids: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
    pos = torch.arange(ids.shape[1], device=ids.device)
    h = b.wte(ids) + b.wpe(pos)[None]
    # token types (a GPT-2 fine-tune with a BERT tokenizer gives them) index the word embeddings
    return b.drop(h + b.wte(types) if types is not None else h)

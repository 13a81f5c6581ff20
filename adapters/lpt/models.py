"""Every model family lpt supports (BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA, DistilBERT, MPNet,
GPT-2), in plain torch (checkpoint.py builds one from a checkpoint).

Importing transformers' model code costs a process ~110 MB and 1.6 s (about 1,500 modules:
torch.distributed, torch._dynamo, sympy) for a stack of linear layers. These modules carry
transformers' own attribute names (`bert.encoder.layer[i].attention.self.query`, `h[i].attn.c_attn`,
...), so a checkpoint's tensors load by their names, and everything else in lpt (the family
table, the packed blocks, int8, training) serves either kind of model. A family's builder
(`build_bert`, ...; its row of backbone.FAMILIES holds it) answers None for what is not written here (relative or sinusoidal position embeddings, an
activation not in ACTIVATIONS, a BERT decoder config, RoBERTa without a pad id, GPT-2's
attention variants): such a model loads through transformers.

    model = build_bert(config, lm_head=True)    # on the meta device, no weights yet
    model.base_model.encoder.layer[0](h, attention_mask=bias)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (Padded, block_bias, bert_parts, distilbert_parts, embed_bert, embed_distilbert, embed_gpt2,
                     embed_mpnet, mpnet_parts, mpnet_position_bias, post_norm_block)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"), "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
}


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor      # [B, T, d]


# Every parameter is made on the meta device (no memory, no random init): the checkpoint's tensors
# are assigned to it (load_tensors). Not `with torch.device("meta")`, which imports torch._dynamo
# (~40 MB) as the random init of an embedding on the meta device does.
def _linear(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, device="meta")


def _embedding(n: int, d: int) -> nn.Embedding:
    # from an empty tensor: a random init on the meta device would import torch._dynamo
    return nn.Embedding.from_pretrained(torch.empty(n, d, device="meta"), freeze=False)


def _norm(d: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(d, eps=eps, device="meta")


def _drop(module: nn.Module, p: float) -> float:
    return p if module.training else 0.0


# ---- BERT and its kin (RoBERTa, XLM-R, CamemBERT, ELECTRA) ----------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, c, width: int, padding_idx: int | None, token_types: bool = True):
        super().__init__()
        self.word_embeddings = _embedding(c.vocab_size, width)
        self.position_embeddings = _embedding(c.max_position_embeddings, width)
        if token_types:
            self.token_type_embeddings = _embedding(c.type_vocab_size, width)
        self.LayerNorm = _norm(width, eps=c.layer_norm_eps)
        self.dropout = c.hidden_dropout_prob
        # RoBERTa and MPNet count positions from the pad id + 1, and pads sit at the pad id
        self.padding_idx = padding_idx

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.padding_idx is None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        else:
            real = input_ids.ne(self.padding_idx).int()
            pos = torch.cumsum(real, dim=1).mul_(real).long() + self.padding_idx
        h = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        if hasattr(self, "token_type_embeddings"):
            h = h + self.token_type_embeddings(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        return F.dropout(self.LayerNorm(h), _drop(self, self.dropout))


class BertSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.hidden_size
        self.query, self.key, self.value = _linear(d, d), _linear(d, d), _linear(d, d)
        self.num_attention_heads = c.num_attention_heads


class _DenseNorm(nn.Module):
    def __init__(self, c, d_in: int):
        super().__init__()
        self.dense = _linear(d_in, c.hidden_size)
        self.LayerNorm = _norm(c.hidden_size, eps=c.layer_norm_eps)


class BertAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = _DenseNorm(c, c.hidden_size)


class BertIntermediate(nn.Module):
    def __init__(self, c, act: nn.Module):
        super().__init__()
        self.dense = _linear(c.hidden_size, c.intermediate_size)
        self.intermediate_act_fn = act


class BertLayer(nn.Module):
    parts = staticmethod(bert_parts)

    def __init__(self, c, act: Callable[[], nn.Module], attention: nn.Module | None = None):
        super().__init__()
        self.attention = attention if attention is not None else BertAttention(c)
        self.intermediate = BertIntermediate(c, act())
        self.output = _DenseNorm(c, c.intermediate_size)
        self.dropout, self.attn_dropout = c.hidden_dropout_prob, c.attention_probs_dropout_prob

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, S, d], attention_mask additive [B, 1, S|1, S] or None (MPNet: [B, heads, S, S],
        the relative position bias added)."""
        return post_norm_block(h, Padded, attention_mask, self.parts(self), _drop(self, self.dropout),
                               _drop(self, self.attn_dropout))


class _Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class _BaseModel(nn.Module):
    """What the base models share: transformers' accessors, and the plain forward's blocks."""

    @property
    def base_model(self) -> nn.Module:
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def _blocks(self, h: torch.Tensor, attention_mask: torch.Tensor | None, blocks, causal: bool = False,
                position_bias: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """h [B, T, d] through every block under attention_mask [B, T] (1 at real tokens), causal
        or not, a relative position bias added where the family has one."""
        bias = None
        if attention_mask is not None or causal or position_bias is not None:
            keys = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if attention_mask is None \
                else attention_mask.bool()
            bias = block_bias(self, keys, h.dtype, causal, position_bias)
        for block in blocks:
            h = block(h, attention_mask=bias)
        return h


class BertModel(_BaseModel):
    """BERT's encoder (and RoBERTa's: `positions_from_pad`; ELECTRA's: an embedding `width` of
    its own projected to the hidden size). No pooler: nothing here reads it."""

    def __init__(self, c, act: Callable[[], nn.Module], positions_from_pad: bool = False, width: int | None = None):
        super().__init__()
        self.config = c
        width = width or c.hidden_size
        self.embeddings = BertEmbeddings(c, width, c.pad_token_id if positions_from_pad else None)
        if width != c.hidden_size:
            self.embeddings_project = _linear(width, c.hidden_size)
        self.encoder = _Encoder([BertLayer(c, act) for _ in range(c.num_hidden_layers)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> EncoderOutput:
        """The plain encoder: ids [B, T], attention_mask [B, T] (1 at real tokens)."""
        return EncoderOutput(self._blocks(embed_bert(self, input_ids, token_type_ids), attention_mask,
                                          self.encoder.layer))


class _Transform(nn.Module):
    """dense -> activation -> LayerNorm (BERT's prediction transform, ELECTRA's generator)."""

    def __init__(self, d_in: int, d_out: int, act: nn.Module, eps: float, act_name: str):
        super().__init__()
        self.dense = _linear(d_in, d_out)
        setattr(self, act_name, act)
        self.act_name = act_name
        self.LayerNorm = _norm(d_out, eps=eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(getattr(self, self.act_name)(self.dense(h)))


class Decoder(nn.Module):
    """A head holding its output projection onto the vocabulary as `decoder`. The checkpoint
    may name the projection's bias `<head>.bias` (transformers ties the two)."""

    def __init__(self, d: int, vocab: int):
        super().__init__()
        self.decoder = _linear(d, vocab)


class _BertPredictions(Decoder):
    def __init__(self, c, act: Callable[[], nn.Module]):
        super().__init__(c.hidden_size, c.vocab_size)
        self.transform = _Transform(c.hidden_size, c.hidden_size, act(), c.layer_norm_eps, "transform_act_fn")


class _BertHead(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.predictions = _BertPredictions(c, act)


class _RobertaHead(Decoder):
    def __init__(self, c):
        super().__init__(c.hidden_size, c.vocab_size)
        self.dense = _linear(c.hidden_size, c.hidden_size)
        self.layer_norm = _norm(c.hidden_size, eps=c.layer_norm_eps)


# ---- DistilBERT -------------------------------------------------------------------------------------
class DistilEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = _embedding(c.vocab_size, c.dim)
        self.position_embeddings = _embedding(c.max_position_embeddings, c.dim)
        self.LayerNorm = _norm(c.dim, eps=1e-12)
        self.dropout = c.dropout

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        h = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        return F.dropout(self.LayerNorm(h), _drop(self, self.dropout))


class DistilAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = (_linear(c.dim, c.dim) for _ in range(4))
        self.n_heads = c.n_heads
        self.dropout = c.attention_dropout


class DistilFFN(nn.Module):
    def __init__(self, c, act: nn.Module):
        super().__init__()
        self.lin1 = _linear(c.dim, c.hidden_dim)
        self.lin2 = _linear(c.hidden_dim, c.dim)
        self.activation = act


class DistilBlock(nn.Module):
    def __init__(self, c, act: Callable[[], nn.Module]):
        super().__init__()
        self.attention = DistilAttention(c)
        self.sa_layer_norm = _norm(c.dim, eps=1e-12)
        self.ffn = DistilFFN(c, act())
        self.output_layer_norm = _norm(c.dim, eps=1e-12)
        self.dropout = c.dropout

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return post_norm_block(h, Padded, attention_mask, distilbert_parts(self), _drop(self, self.dropout),
                               _drop(self, self.attention.dropout))


class DistilModel(_BaseModel):
    def __init__(self, c, act: Callable[[], nn.Module]):
        super().__init__()
        self.config = c
        self.embeddings = DistilEmbeddings(c)
        self.transformer = _Encoder([DistilBlock(c, act) for _ in range(c.n_layers)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        return EncoderOutput(self._blocks(embed_distilbert(self, input_ids, None), attention_mask,
                                          self.transformer.layer))


# ---- MPNet -------------------------------------------------------------------------------------------
class MPNetSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.hidden_size
        self.q, self.k, self.v, self.o = (_linear(d, d) for _ in range(4))
        self.num_attention_heads = c.num_attention_heads


class MPNetAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn = MPNetSelfAttention(c)
        self.LayerNorm = _norm(c.hidden_size, eps=c.layer_norm_eps)


class MPNetLayer(BertLayer):
    """BERT's block with its attention under other names."""

    parts = staticmethod(mpnet_parts)

    def __init__(self, c, act: Callable[[], nn.Module]):
        super().__init__(c, act, MPNetAttention(c))


class _MPNetEncoder(_Encoder):
    def __init__(self, c, layers: list[nn.Module]):
        super().__init__(layers)
        self.relative_attention_bias = _embedding(c.relative_attention_num_buckets, c.num_attention_heads)


class MPNetModel(_BaseModel):
    def __init__(self, c, act: Callable[[], nn.Module]):
        super().__init__()
        self.config = c
        self.embeddings = BertEmbeddings(c, c.hidden_size, padding_idx=1, token_types=False)   # 1: as MPNet's own
        self.encoder = _MPNetEncoder(c, [MPNetLayer(c, act) for _ in range(c.num_hidden_layers)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        return EncoderOutput(self._blocks(embed_mpnet(self, input_ids, None), attention_mask, self.encoder.layer,
                                          position_bias=mpnet_position_bias))


# ---- GPT-2 ------------------------------------------------------------------------------------------
class Conv1D(nn.Module):
    """GPT-2's linear layer (transformers' Conv1D): y = x W + b, W stored [in, out] as in the checkpoint."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out, device="meta"))
        self.bias = nn.Parameter(torch.empty(d_out, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class GPT2Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_attn = Conv1D(c.n_embd, 3 * c.n_embd)
        self.c_proj = Conv1D(c.n_embd, c.n_embd)
        self.n_head = c.n_head
        self.scale = None if c.scale_attn_weights else 1.0      # None: SDPA's 1/sqrt(head size)
        self.attn_dropout, self.resid_dropout = c.attn_pdrop, c.resid_pdrop

    def forward(self, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, s, d = h.shape
        q, k, v = (t.view(b, s, self.n_head, -1).transpose(1, 2) for t in self.c_attn(h).split(d, dim=2))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=_drop(self, self.attn_dropout),
                                             scale=self.scale)
        return F.dropout(self.c_proj(ctx.transpose(1, 2).reshape(b, s, d)), _drop(self, self.resid_dropout))


class GPT2MLP(nn.Module):
    def __init__(self, c, act: nn.Module):
        super().__init__()
        inner = c.n_inner or 4 * c.n_embd
        self.c_fc, self.c_proj, self.act = Conv1D(c.n_embd, inner), Conv1D(inner, c.n_embd), act
        self.dropout = c.resid_pdrop

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.c_proj(self.act(self.c_fc(h))), _drop(self, self.dropout))


class GPT2Block(nn.Module):
    """A pre-norm decoder block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, c, act: Callable[[], nn.Module]):
        super().__init__()
        self.ln_1 = _norm(c.n_embd, c.layer_norm_epsilon)
        self.attn = GPT2Attention(c)
        self.ln_2 = _norm(c.n_embd, c.layer_norm_epsilon)
        self.mlp = GPT2MLP(c, act())

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, S, d]; attention_mask additive [B, 1, S, S] (causal, from Backbone.attention_bias)."""
        h = h + self.attn(self.ln_1(h), attention_mask)
        return h + self.mlp(self.ln_2(h))


class GPT2Model(_BaseModel):
    def __init__(self, c, act: Callable[[], nn.Module]):
        super().__init__()
        self.config = c
        self.wte = _embedding(c.vocab_size, c.n_embd)
        self.wpe = _embedding(c.n_positions, c.n_embd)
        self.drop = nn.Dropout(c.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(c, act) for _ in range(c.n_layer))
        self.ln_f = _norm(c.n_embd, c.layer_norm_epsilon)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> EncoderOutput:
        """The plain decoder, causal (and right-padded keys masked), with its final norm."""
        h = self._blocks(embed_gpt2(self, input_ids, token_type_ids), attention_mask, self.h, causal=True)
        return EncoderOutput(self.ln_f(h))


# ---- a model with its LM head -------------------------------------------------------------------------
class WithLMHead(nn.Module):
    """A base model under its checkpoint prefix (`bert`, `roberta`, ...) and the head modules
    next to it, named as in the checkpoint; `ties`: (head parameter, the one it shares)."""

    def __init__(self, c, prefix: str, base: nn.Module, heads: dict[str, nn.Module], ties: dict[str, str]):
        super().__init__()
        self.config = c
        self.prefix = prefix
        setattr(self, prefix, base)
        for name, module in heads.items():
            setattr(self, name, module)
        self.ties = ties

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.prefix)


def _activation(name) -> Callable[[], nn.Module] | None:
    return ACTIVATIONS.get(name) if isinstance(name, str) else None


def _bert_like(c, lm_head: bool, prefix: str, positions_from_pad: bool = False) -> nn.Module | None:
    act = _activation(c.hidden_act)
    if act is None or getattr(c, "position_embedding_type", "absolute") != "absolute" or \
            (positions_from_pad and c.pad_token_id is None) or getattr(c, "is_decoder", False):
        return None
    # only ELECTRA reads embedding_size (a stray one in another family's config means nothing)
    base = BertModel(c, act, positions_from_pad, c.embedding_size if prefix == "electra" else None)
    base.prefix = prefix          # what a checkpoint with a head calls the base model
    if not lm_head:
        return base
    emb = f"{prefix}.embeddings.word_embeddings.weight"
    if prefix == "bert":
        return WithLMHead(c, prefix, base, {"cls": _BertHead(c, act)}, {"cls.predictions.decoder.weight": emb})
    if prefix == "electra":
        gen = _Transform(c.hidden_size, c.embedding_size, nn.GELU(), c.layer_norm_eps, "activation")
        return WithLMHead(c, prefix, base, {"generator_predictions": gen,
                                          "generator_lm_head": _linear(c.embedding_size, c.vocab_size)},
                        {"generator_lm_head.weight": emb})
    return WithLMHead(c, prefix, base, {"lm_head": _RobertaHead(c)}, {"lm_head.decoder.weight": emb})


def build_distilbert(c, lm_head: bool) -> nn.Module | None:
    act = _activation(c.activation)
    if act is None or getattr(c, "sinusoidal_pos_embds", False):    # those positions: not written here
        return None
    base = DistilModel(c, act)
    base.prefix = "distilbert"
    if not lm_head:
        return base
    heads = {"vocab_transform": _linear(c.dim, c.dim), "activation": act(),
             "vocab_layer_norm": _norm(c.dim, eps=1e-12), "vocab_projector": _linear(c.dim, c.vocab_size)}
    return WithLMHead(c, "distilbert", base, heads,
                    {"vocab_projector.weight": "distilbert.embeddings.word_embeddings.weight"})


def build_gpt2(c, lm_head: bool) -> nn.Module | None:
    act = _activation(c.activation_function)
    if act is None or c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn or c.add_cross_attention:
        return None
    base = GPT2Model(c, act)
    base.prefix = "transformer"
    if not lm_head:
        return base
    head = nn.Linear(c.n_embd, c.vocab_size, bias=False, device="meta")
    return WithLMHead(c, "transformer", base, {"lm_head": head}, {"lm_head.weight": "transformer.wte.weight"})


def build_mpnet(c, lm_head: bool) -> nn.Module | None:
    act = _activation(c.hidden_act)
    if act is None:
        return None
    base = MPNetModel(c, act)
    base.prefix = "mpnet"
    if not lm_head:
        return base
    return WithLMHead(c, "mpnet", base, {"lm_head": _RobertaHead(c)},
                      {"lm_head.decoder.weight": "mpnet.embeddings.word_embeddings.weight"})


# Each family's builder: (config, with an LM head?) -> the model on the meta device, or None where
# it is not written here. backbone.FAMILIES holds them, one per family row.
def build_bert(c, lm_head: bool) -> nn.Module | None:
    return _bert_like(c, lm_head, "bert")


def build_roberta(c, lm_head: bool) -> nn.Module | None:
    return _bert_like(c, lm_head, "roberta", positions_from_pad=True)


def build_electra(c, lm_head: bool) -> nn.Module | None:
    return _bert_like(c, lm_head, "electra")

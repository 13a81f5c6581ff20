"""Tiny random models with real tokenizers, built in code: no files, no downloads."""
from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (BertConfig, BertForMaskedLM, BertModel, CamembertConfig, CamembertForMaskedLM,
                          DistilBertConfig, DistilBertForMaskedLM, ElectraConfig, ElectraForMaskedLM, GPT2Config,
                          GPT2LMHeadModel, MPNetConfig, MPNetForMaskedLM, PreTrainedTokenizerFast, RobertaConfig,
                          RobertaForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM)

from lpt import Backbone

WORDS = ["great", "terrible", "good", "bad", "movie", "film", "the", "a", "it", "was", ".", "is", "not",
         "very", "plot", "actors", "boring", "fun"] + [f"w{i}" for i in range(80)]

SPECIALS = {
    # family: (pad, unk, cls/bos, sep/eos, mask, single template, pair template, token types?)
    "bert": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", True),
    "roberta": ("<pad>", "<unk>", "<s>", "</s>", "<mask>", "<s> $A </s>", "<s> $A </s> </s> $B </s>", False),
    "gpt2": (None, "<unk>", None, "<|endoftext|>", None, None, None, False),
}
SPECIALS["electra"] = SPECIALS["bert"]
SPECIALS["distilbert"] = SPECIALS["bert"][:7] + (False,)
# RoBERTa's architecture under other names and weights, and MPNet (RoBERTa's tokens and positions,
# a relative position bias): the same tiny shape, their own classes
ROBERTA_LIKE = {"roberta": (RobertaConfig, RobertaForMaskedLM),
                "xlm-roberta": (XLMRobertaConfig, XLMRobertaForMaskedLM),
                "camembert": (CamembertConfig, CamembertForMaskedLM),
                "mpnet": (MPNetConfig, MPNetForMaskedLM)}
for _name in ROBERTA_LIKE:
    SPECIALS[_name] = SPECIALS["roberta"]


def make_tokenizer(family: str) -> PreTrainedTokenizerFast:
    pad, unk, cls, sep, mask, single, pair, types = SPECIALS[family]
    specials = [t for t in (pad, unk, cls, sep, mask) if t]
    if family in ROBERTA_LIKE:  # RoBERTa's own order: <s>=0, <pad>=1 (its position padding_idx)
        specials = [cls, pad, sep, unk, mask]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if single:
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in (cls, sep)])
    kwargs = dict(tokenizer_object=tok, unk_token=unk)
    for name, value in (("pad_token", pad), ("cls_token", cls), ("sep_token", sep), ("mask_token", mask)):
        if value:
            kwargs[name] = value
    if family == "gpt2":
        kwargs.update(eos_token=sep, bos_token=sep)
    kwargs["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"] if types else \
        ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(**kwargs)


def make_model(family: str, vocab_size: int, lm_head: bool = True, layers: int = 4, seed: int = 0,
               attn: str = "sdpa", init_range: float | None = None):
    """init_range: the std of the random weights (default 0.02, under which attention is close
    to uniform and a prompt moves the logits only a little)."""
    torch.manual_seed(seed)
    init = {} if init_range is None else {"initializer_range": init_range}
    common = dict(vocab_size=vocab_size, max_position_embeddings=128, **init)
    if family == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64, **common)
        cls = BertForMaskedLM if lm_head else BertModel
    elif family in ROBERTA_LIKE:
        config_cls, cls = ROBERTA_LIKE[family]
        cfg = config_cls(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
        cfg.max_position_embeddings = 130
    elif family == "distilbert":
        cfg = DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=64, **common)
        cls = DistilBertForMaskedLM
    elif family == "electra":
        cfg = ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=64, **common)
        cls = ElectraForMaskedLM
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=layers, n_head=4,
                         bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, **init)
        cls = GPT2LMHeadModel
    else:
        raise ValueError(family)
    cfg._attn_implementation = "eager" if family == "mpnet" else attn     # MPNet has no SDPA path
    return cls(cfg).eval()


def make_backbone(family: str = "bert", lm_head: bool = True, layers: int = 4, seed: int = 0,
                  attn: str = "sdpa", init_range: float | None = None) -> Backbone:
    tok = make_tokenizer(family)
    model = make_model(family, len(tok), lm_head, layers, seed, attn, init_range)
    return Backbone(model, tok, model_id=f"tiny-{family}")


def random_texts(n: int, seed: int = 0, lo: int = 1, hi: int = 20) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def save_backbone(bb: Backbone, path) -> str:
    """The model and tokenizer written as a local model folder: `Backbone.load(path)` (and so a
    server's `--model path`, or a training process) loads the very same weights."""
    bb.model.save_pretrained(path)
    bb.tokenizer.save_pretrained(path)
    return str(path)


def own_twin(bb: Backbone, folder) -> Backbone:
    """`bb` written to a folder and loaded back by `Backbone.load`: the same weights in lpt's own
    modules (lpt/models.py) for every family, as a server loads them."""
    return Backbone.load(save_backbone(bb, folder))

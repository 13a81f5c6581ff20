"""Text -> token ids for one adapter: its template, truncation, and where the head reads."""
from __future__ import annotations

from dataclasses import dataclass

from .config import AdapterConfig


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None
    readout: int          # index (among real tokens) the head reads: mask token, last or first token

    @property
    def key(self) -> tuple:
        """Rows with equal keys share one lower pass (and one layer-k cache entry)."""
        return (self.input_ids, self.token_type_ids)


def label_token_ids(tokenizer, words: list[str]) -> list[int]:
    """One vocabulary id per label word, as the word appears after a space.

    A word that the tokenizer splits into several tokens (or does not know) is refused:
    scoring only its first piece would silently compare different things.
    """
    ids, bad = [], []
    for w in words:
        toks = tokenizer(" " + w.strip(), add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            bad.append(f"{w!r} -> {tokenizer.convert_ids_to_tokens(toks)}")
        elif toks[0] == tokenizer.unk_token_id:
            bad.append(f"{w!r} is not in the vocabulary (unknown token)")
        else:
            ids.append(toks[0])
    if bad:
        raise ValueError("label words must be single tokens of this model's vocabulary; "
                         "these are not: " + ", ".join(bad))
    return ids


class TextEncoder:
    """Encodes (text, text_pair) for one adapter config. Deterministic: train and serve agree."""

    def __init__(self, tokenizer, config: AdapterConfig, causal: bool, max_positions: int):
        self.tok = tokenizer
        self.template = config.template
        self.head_kind = config.head_kind
        self.pooling = config.pooling
        self.causal = causal
        self.max_length = min(config.max_length, max_positions)
        if self.template is not None:
            empty = self._fill("", "")
            self.overhead = len(self.tok(empty)["input_ids"])
            if self.overhead >= self.max_length:
                raise ValueError(f"template alone takes {self.overhead} tokens, max_length is {self.max_length}")

    def _fill(self, text: str, pair: str | None) -> str:
        mask = self.tok.mask_token or ""
        return self.template.replace("{text_pair}", pair or "").replace("{mask}", mask).replace("{text}", text)

    def _truncate(self, text: str, budget: int) -> str:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return text
        return self.tok.decode(ids[:budget])

    def encode(self, text: str, text_pair: str | None = None) -> Encoded:
        if self.template is None:
            enc = self.tok(text, text_pair, truncation=True, max_length=self.max_length)
        else:
            budget = self.max_length - self.overhead
            if text_pair and "{text_pair}" not in self.template:
                raise ValueError("this task's template has no {text_pair}: it takes single texts, not pairs")
            if text_pair:
                pair_budget = budget // 2
                text_pair = self._truncate(text_pair, pair_budget)
                budget -= len(self.tok(text_pair, add_special_tokens=False)["input_ids"])
            enc = self.tok(self._fill(self._truncate(text, budget), text_pair))
            if len(enc["input_ids"]) > self.max_length:  # decode/re-encode drift: cut the end
                enc = self.tok(self._fill(self._truncate(text, max(budget - 8, 0)), text_pair))
        ids = tuple(enc["input_ids"])
        if not ids:
            raise ValueError("text encodes to no tokens")
        types = tuple(enc["token_type_ids"]) if "token_type_ids" in enc else None
        return Encoded(ids, types, self._readout(ids))

    def _readout(self, ids: tuple[int, ...]) -> int:
        if self.head_kind == "mlm":
            try:
                return ids.index(self.tok.mask_token_id)
            except ValueError:
                raise ValueError("the mask token was lost in tokenization") from None
        if self.head_kind == "lm" or self.pooling == "last" or self.causal:
            return len(ids) - 1
        return 0

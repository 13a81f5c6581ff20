"""The parse stage's text work: check, measure and (if allowed) truncate inputs.

    meter = InputMeter(backbone.tokenizer, max_tokens=256, truncate=True)
    measured = meter.measure([("a text", None), ("premise", "hypothesis")])

Counts are the model tokenizer's tokens of the user's text (and pair), without special
tokens or an adapter's template: the limit is about what the client sent. Truncation cuts the
string at a token boundary (from the tokenizer's offsets), so the engine re-encodes a prefix
of the text, not a different text. The token count is also the row's cost for the batcher.
No tensors here: token ids are plain lists.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

# [CLS] + [SEP] (+ [SEP] for pairs): close enough for batching costs, whatever the family
SPECIAL_TOKENS = 3
# Texts are cut to max_tokens * CHARS_PER_TOKEN characters before they are tokenized, so that a
# 10 MB text costs no more than a long one. No WordPiece/BPE/SentencePiece token of the shipped
# vocabularies spans more than ~20 characters (an [UNK] word at most 100, rare): text past this
# bound would be cut by the token limit anyway, except in runs of whitespace, which count no tokens.
CHARS_PER_TOKEN = 32


class InputTooLong(ValueError):
    """An input over max_tokens while truncation is off (-> 413)."""


@dataclass(frozen=True)
class Measured:
    text: str
    pair: str | None
    tokens: int          # after truncation
    truncated: bool

    @property
    def cost(self) -> int:
        return self.tokens + SPECIAL_TOKENS


def _split_budget(n1: int, n2: int, limit: int) -> tuple[int, int]:
    """Longest first: the shorter side keeps its tokens if it fits in half the budget."""
    if n1 + n2 <= limit:
        return n1, n2
    half = limit // 2
    if n2 <= half:
        return limit - n2, n2
    if n1 <= half:
        return n1, limit - n1
    return limit - half, half


class InputMeter:
    """Runs on the event loop while the engine thread tokenizes too, so it owns a *copy* of
    the tokenizer: a Hugging Face fast tokenizer re-configures its Rust backend (truncation,
    padding) on every call, and two threads sharing one can see each other's settings or fail
    with "Already borrowed". The copy is the bare Rust tokenizer, which also skips the
    transformers wrapper's per-call overhead."""

    def __init__(self, tokenizer, max_tokens: int, truncate: bool):
        self.max_tokens = max_tokens
        self.truncate = truncate
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            self._rust = Tokenizer.from_str(backend.to_str())
            self._rust.no_truncation()
            self._rust.no_padding()
            self.tok = None
        else:
            self._rust = None
            self.tok = copy.deepcopy(tokenizer)

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Character span of each token; a slow (Python) tokenizer has no offsets, so its
        spans are rebuilt from decoded prefixes (slower, rare: every shipped model is fast)."""
        if self._rust is not None:
            return [e.offsets for e in self._rust.encode_batch(texts, add_special_tokens=False)]
        out = []
        for text in texts:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= self.max_tokens:
                out.append([(0, 0)] * len(ids))      # fits: spans are never used
                continue
            ends = [len(self.tok.decode(ids[:k + 1])) for k in range(self.max_tokens)]
            out.append([(0, min(e, len(text))) for e in ends] + [(0, len(text))] * (len(ids) - self.max_tokens))
        return out

    def precut(self, i: int, text: str) -> tuple[str, bool]:
        """A text cut to the character bound (cheap: before any tokenizing)."""
        limit = self.max_tokens * CHARS_PER_TOKEN
        if len(text) <= limit:
            return text, False
        if not self.truncate:
            raise InputTooLong(f"inputs[{i}] has {len(text)} characters, more than an input of "
                               f"{self.max_tokens} tokens can have ({limit}; LPT_MAX_INPUT_TOKENS); "
                               "the server runs with truncation off: shorten the text")
        return text[:limit], True

    def measure(self, inputs: list[tuple[str, str | None]]) -> list[Measured]:
        """Cut, tokenize (one batched call) and truncate. CPU work: call it off the event loop."""
        cut = []
        for i, (text, pair) in enumerate(inputs):
            text, c1 = self.precut(i, text)
            pair, c2 = self.precut(i, pair) if pair is not None else (None, False)
            cut.append((text, pair, c1 or c2))
        flat = [t for text, pair, _ in cut for t in ((text,) if pair is None else (text, pair))]
        offsets = iter(self._offsets(flat))
        out = []
        for i, (text, pair, precut) in enumerate(cut):
            o1 = next(offsets)
            o2 = next(offsets) if pair is not None else []
            n1, n2 = len(o1), len(o2)
            if n1 + n2 <= self.max_tokens:
                out.append(Measured(text, pair, n1 + n2, precut))
                continue
            if not self.truncate:
                raise InputTooLong(f"inputs[{i}] has {n1 + n2} tokens, the limit is {self.max_tokens} "
                                   "(the server runs with truncation off: shorten the text)")
            k1, k2 = _split_budget(n1, n2, self.max_tokens) if pair is not None else (self.max_tokens, 0)
            text = text[:o1[k1 - 1][1]] if k1 < n1 and k1 > 0 else text
            if pair is not None and k2 < n2:
                pair = pair[:o2[k2 - 1][1]] if k2 > 0 else ""
            out.append(Measured(text, pair, k1 + k2, True))
        return out

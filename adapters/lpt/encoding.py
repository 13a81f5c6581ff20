"""Text -> token ids for one adapter: its template, truncation, and where the head reads."""
from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field

from .config import AdapterConfig

# A Hugging Face fast tokenizer re-configures its Rust backend (truncation, padding) on calls that
# ask for it, so two threads sharing one can see each other's settings or fail with "Already
# borrowed". Calls go through one lock per tokenizer; the Rust work itself runs without the GIL.
_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(tokenizer)
        if lock is None:
            lock = _LOCKS[tokenizer] = threading.Lock()
        return lock


# A text longer than this many characters per allowed token is first tokenized from that prefix
# (English runs ~4-5 characters per token): see TextEncoder._tokenize_cut.
PREFIX_CHARS_PER_TOKEN = 8

# A template's placeholders, filled in one pass: a text holding "{mask}" or "{text}" stays as written.
_PLACEHOLDER = re.compile(r"\{(text_pair|text|mask)\}")


def _row(enc, j: int, cut: bool) -> tuple:
    """(ids, token types or None, cut) of row j of a tokenizer's batch output."""
    return enc["input_ids"][j], (enc["token_type_ids"][j] if "token_type_ids" in enc else None), cut


def _space_after_kept(encoding, text: str, end: int) -> bool:
    """Whether text[last kept token's end : end] holds a space: the tokens kept from a prefix
    ending at `end` are then those of the whole text."""
    kept = [stop for (_, stop), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
    return bool(kept) and any(c.isspace() for c in text[max(kept):end])


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None
    readout: int          # index (among real tokens) the head reads: mask token, last or first token
    truncated: bool = field(default=False, compare=False)   # the text (or pair) was cut to fit

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
        self.lock = tokenizer_lock(tokenizer)
        # A user's text is words, never control: "[SEP]" in it must not end a segment, nor a
        # "[MASK]" become the head's readout. The template's own special tokens stay special.
        self.special_strings = tuple(t for t in tokenizer.all_special_tokens if t)
        self.special_ids = frozenset(tokenizer.all_special_ids)
        if self.template is not None:
            empty = self._fill("", "")[0]
            self.overhead = len(self.tok(empty)["input_ids"])
            if self.overhead >= self.max_length:
                raise ValueError(f"template alone takes {self.overhead} tokens, max_length is {self.max_length}")

    def _fill(self, text: str, pair: str | None) -> tuple[str, list[tuple[int, int]]]:
        """The template with its placeholders filled, and where the text and pair lie in it."""
        values = {"text": text, "text_pair": pair or "", "mask": self.tok.mask_token or ""}
        parts, spans, at, pos = [], [], 0, 0
        for m in _PLACEHOLDER.finditer(self.template):
            value = values[m.group(1)]
            parts += [self.template[pos:m.start()], value]
            at += m.start() - pos
            if m.group(1) != "mask":
                spans.append((at, at + len(value)))
            at, pos = at + len(value), m.end()
        parts.append(self.template[pos:])
        return "".join(parts), spans

    def _holds_special(self, *texts: str | None) -> bool:
        return any(s in t for t in texts if t for s in self.special_strings)

    def _cut(self, text: str, budget: int) -> str:
        """The text's first characters that make at most `budget` tokens, special tokens' strings
        split (cut by character offsets: decoding would write them back as specials)."""
        enc = self.tok(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= budget:
            return text
        return text[:enc["offset_mapping"][budget - 1][1]] if budget > 0 else ""

    @property
    def signature(self) -> tuple:
        """Encoders with equal signatures encode every text alike: encode once, share the result."""
        return (id(self.tok), self.template, self.head_kind, self.pooling, self.causal, self.max_length)

    def encode(self, text: str, text_pair: str | None = None, max_text_tokens: int | None = None) -> Encoded:
        out = self.encode_many([(text, text_pair)], max_text_tokens)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def encode_many(self, items: list[tuple[str, str | None]],
                    max_text_tokens: int | None = None) -> list[Encoded | Exception]:
        """Batch-tokenize (much faster than one call per text); a text that cannot be encoded
        gets its exception in its place and fails alone. `max_text_tokens` also bounds the
        tokens of the text and pair themselves (specials and template not counted); a cut
        text's Encoded says `truncated`. Thread-safe."""
        with self.lock:
            return self._encode_many(items, max_text_tokens)

    def _encode_many(self, items, max_text_tokens):
        out: list[Encoded | Exception | None] = [None] * len(items)
        if self.template is None:
            for with_pair in (False, True):
                idx = [i for i, (_, p) in enumerate(items) if bool(p) == with_pair]
                if not idx:
                    continue
                texts, pairs = [items[i][0] for i in idx], [items[i][1] for i in idx] if with_pair else None
                floor = self.tok.num_special_tokens_to_add(pair=with_pair)   # tokens of an empty row
                limit = self.max_length
                if max_text_tokens is not None:
                    limit = min(limit, max_text_tokens + floor)
                for i, row in zip(idx, self._tokenize_cut(texts, pairs, limit)):
                    out[i] = self._finish_row(*row, floor)
            return out
        idx = []
        for i, (text, pair) in enumerate(items):
            if pair and "{text_pair}" not in self.template:
                out[i] = ValueError("this task's template has no {text_pair}: it takes single texts, not pairs")
            else:
                idx.append(i)
        if idx:
            budget = self.max_length - self.overhead
            if max_text_tokens is not None:
                budget = min(budget, max_text_tokens)
            enc = self.tok([self._fill(*items[i])[0] for i in idx])
            for j, i in enumerate(idx):
                fits = len(enc["input_ids"][j]) - self.overhead <= budget
                plain = fits and not self._holds_special(*items[i])
                out[i] = self._finish(enc, j) if plain else self._encode_alone(*items[i], budget)
        return out

    def _encode_alone(self, text: str, pair: str | None, budget: int) -> Encoded | Exception:
        """A row too long for `budget`, or whose text (or pair) holds a special token's string:
        tokenized in the template as any row, then each special token that came from the user's
        text is tokenized again as words (`split_special_tokens`), so that only the template's
        stay special; too long, the text and pair are cut by character offsets (never the
        template; the pair to at most half the budget) and the template filled again."""
        for attempt in range(3):
            filled, spans = self._fill(text, pair)
            enc = self.tok([filled], return_offsets_mapping=True)
            ids, types = self._split_user_specials(enc, filled, spans)
            if len(ids) - self.overhead <= budget:
                return self._finish_row(ids, types, attempt > 0, self.overhead)
            # too long: cut the text and pair, then fill again; tokens can merge across the
            # cut's edge in the template, so cut more if it still does not fit
            cut = max(budget - 8 * attempt, 0)
            if pair:
                pair = self._cut(pair, cut // 2)
                cut -= len(self.tok(pair, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            text = self._cut(text, max(cut, 0))
        return ValueError("the text could not be cut to fit this task's max_length")

    def _split_user_specials(self, enc, filled: str, spans: list[tuple[int, int]]) -> tuple[list, list | None]:
        ids, types = enc["input_ids"][0], (enc["token_type_ids"][0] if "token_type_ids" in enc else None)
        out_ids, out_types = [], ([] if types is not None else None)
        for k, (tid, (start, end)) in enumerate(zip(ids, enc["offset_mapping"][0])):
            piece = [tid]
            if tid in self.special_ids and end > start and any(start < e and end > s for s, e in spans):
                piece = self.tok(filled[start:end], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            out_ids += piece
            if types is not None:
                out_types += [types[k]] * len(piece)
        return out_ids, out_types

    def _tokenize_cut(self, texts: list[str], pairs: list[str] | None, limit: int) -> list[tuple]:
        """(ids, token types, cut) of each text (and pair) truncated to `limit` tokens; special
        tokens' strings in them are words (`split_special_tokens`).

        A single text longer than PREFIX_CHARS_PER_TOKEN characters per allowed token is
        tokenized from that prefix alone (a long document costs a few hundred characters, not
        all of them), and kept when the prefix provably gives what the whole text gives: it
        overflowed, and a space lies between its last kept token and the prefix's end, so the
        cut word is not one the kept tokens belong to (tokenizers split words at spaces). Any
        other long text is tokenized whole."""
        p = limit * PREFIX_CHARS_PER_TOKEN
        heads = [t[:p] for t in texts] if pairs is None and any(len(t) > p for t in texts) else texts
        enc = self.tok(heads, pairs, truncation=True, max_length=limit, split_special_tokens=True)
        encodings = getattr(enc, "encodings", None)        # None from a slow (Python) tokenizer
        if encodings is None:
            if heads is not texts:
                enc = self.tok(texts, pairs, truncation=True, max_length=limit, split_special_tokens=True)
            cut = self._cut_rows(enc, texts, pairs, limit)
            return [_row(enc, j, j in cut) for j in range(len(texts))]
        rows = [_row(enc, j, bool(e.overflowing)) for j, e in enumerate(encodings)]
        redo = [j for j, (t, e) in enumerate(zip(texts, encodings))
                if len(t) > p and not (e.overflowing and _space_after_kept(e, t, p))]
        if redo:
            again = self.tok([texts[j] for j in redo], None, truncation=True, max_length=limit,
                              split_special_tokens=True)
            for k, j in enumerate(redo):
                rows[j] = _row(again, k, bool(again.encodings[k].overflowing))
        return rows

    def _cut_rows(self, enc, texts: list[str], pairs: list[str] | None, limit: int) -> set[int]:
        """Rows of a slow tokenizer's enc that truncation cut (a fast one says so itself, in
        `overflowing`): a row at the limit may have been cut, and only those rows are tokenized
        again, whole."""
        full = [j for j, ids in enumerate(enc["input_ids"]) if len(ids) >= limit]
        if not full:
            return set()
        whole = self.tok([texts[j] for j in full], [pairs[j] for j in full] if pairs else None,
                         split_special_tokens=True)
        return {j for j, ids in zip(full, whole["input_ids"]) if len(ids) > limit}

    def _finish(self, enc, j: int, truncated: bool = False) -> Encoded | Exception:
        return self._finish_row(*_row(enc, j, truncated), self.overhead)

    def _finish_row(self, ids, types, truncated: bool, floor: int) -> Encoded | Exception:
        """`floor`: how many tokens the row has with an empty text (special tokens, template)."""
        ids = tuple(ids)
        if len(ids) <= floor:     # the tokenizer dropped every character (e.g. U+FFFD for BERT's)
            return ValueError("the text has no characters this model's tokenizer reads: it would be "
                              "classified as an empty text")
        types = tuple(types) if types is not None else None
        try:
            return Encoded(ids, types, self._readout(ids), truncated)
        except ValueError as e:
            return e

    def _readout(self, ids: tuple[int, ...]) -> int:
        if self.head_kind == "mlm":
            try:
                return ids.index(self.tok.mask_token_id)
            except ValueError:
                raise ValueError("the mask token was lost in tokenization") from None
        if self.head_kind == "lm" or self.pooling == "last" or self.causal:
            return len(ids) - 1
        return 0

"""The parse stage's text work: cut long texts, then encode each input once per distinct encoder.

    encoded = encode_inputs(pairs, tasks, adapters, max_tokens=256, truncate=True)
    encoded.rows[i][j]        # input i encoded for task j: an lpt Encoded, carried to the engine
    encoded.truncated         # indices of the inputs that were cut

Each text is tokenized here, once, with its adapter's template, and never again: the row carries
its encoding through the batcher (which reads its real length) to the engine (which skips
tokenizing). Adapters whose encoders agree (the same template and limits: most of them) share
one encoding. This is CPU work: the route runs it in a thread, off the event loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from lpt import RowError
from lpt.encoding import Encoded

# Texts are cut to max_tokens * CHARS_PER_TOKEN characters before they are tokenized, so that a
# 10 MB text costs no more than a long one. No WordPiece/BPE/SentencePiece token of the shipped
# vocabularies spans more than ~20 characters (an [UNK] word at most 100, rare): text past this
# bound would be cut by the token limit anyway, except in runs of whitespace, which count no tokens.
CHARS_PER_TOKEN = 32


class InputTooLong(ValueError):
    """An input over max_tokens while truncation is off (-> 413)."""


@dataclass(frozen=True)
class EncodedInputs:
    rows: list[list[Encoded]]     # [input][task]
    truncated: list[int]          # indices of inputs cut to the token limit


def _cut(i: int, text: str, max_tokens: int, truncate: bool) -> tuple[str, bool]:
    """A text cut to the character bound (cheap: before any tokenizing)."""
    limit = max_tokens * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text, False
    if not truncate:
        raise InputTooLong(f"inputs[{i}] has {len(text)} characters, more than an input of {max_tokens} "
                           f"tokens can have ({limit}; LPT_MAX_INPUT_TOKENS)")
    return text[:limit], True


def encode_inputs(inputs: list[tuple[str, str | None]], tasks: list[str], adapters: list,
                  max_tokens: int, truncate: bool) -> EncodedInputs:
    """Every input encoded for every task's adapter. Raises InputTooLong (truncation off: which
    input is too long; the caller says why it was not cut) or RowError naming the input and task
    that cannot be encoded."""
    cut, precut = [], set()
    for i, (text, pair) in enumerate(inputs):
        text, c1 = _cut(i, text, max_tokens, truncate)
        pair, c2 = _cut(i, pair, max_tokens, truncate) if pair is not None else (None, False)
        cut.append((text, pair))
        if c1 or c2:
            precut.add(i)
    by_signature: dict[tuple, list] = {}
    columns = []
    for adapter in adapters:
        enc = adapter.encoder
        if enc.signature not in by_signature:
            by_signature[enc.signature] = enc.encode_many(cut, max_text_tokens=max_tokens)
        columns.append(by_signature[enc.signature])
    rows = []
    for i in range(len(inputs)):
        row = []
        for task, column in zip(tasks, columns):
            e = column[i]
            if isinstance(e, Exception):
                raise RowError(f"inputs[{i}] cannot be encoded for task {task!r}: {e}")
            row.append(e)
        rows.append(row)
    truncated = sorted(precut | {i for i, row in enumerate(rows) if any(e.truncated for e in row)})
    if truncated and not truncate:
        raise InputTooLong(f"inputs[{truncated[0]}] has more than {max_tokens} tokens (LPT_MAX_INPUT_TOKENS)")
    return EncodedInputs(rows, truncated)

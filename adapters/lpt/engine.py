"""The mixed-task engine: rows for any mix of adapters in, label scores out.

    engine = Engine(backbone, cache_entries=4096)
    preds = engine.predict([Row(sentiment, "great film"), Row(topic, "great film")])

Stages: encode (each adapter's template) -> lower (layers [0, k) once per distinct token
sequence, or the layer-k cache) -> late_forward (generators once per adapter, one upper pass)
-> predictions. The engine knows nothing of HTTP. Several threads may call `predict` at once
(a server runs one batch per engine worker): the layer-k cache is locked, everything else a
call touches is its own or read-only, and torch's kernels release the GIL.
"""
from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adapter import LatePrompt
from .backbone import Backbone
from .encoding import Encoded
from .forward import Group, late_logits, lower_pass, pad_states, pad_tokens, to_device, to_host
from .generators import stack_key as generator_stack_key
from .heads import stack_key as head_stack_key


@dataclass(frozen=True)
class Row:
    """One text (or pair) for one adapter. `encoded`, when given, is the text already encoded
    with this adapter's encoder (a server tokenizes before batching): the engine then skips
    tokenizing it."""

    adapter: LatePrompt
    text: str
    text_pair: str | None = None
    encoded: Encoded | None = None


@dataclass
class Prediction:
    label: str
    score: float                  # probability of `label`
    scores: dict[str, float]      # probability of every label


class RowError(ValueError):
    """This row alone could not be served (the rest of its batch was)."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes: int = 0         # what the cached states hold now


class StateCache:
    """Bounded LRU of layer-k hidden states, keyed by (k, token ids, token types).

    The model is fixed per engine, so k and the tokens determine the states exactly. Bounded by
    entries and by bytes: an entry's size grows with its text and the model's width (a 512-token
    row of a 768-wide model is 1.5 MB in float32), so a count alone would not bound memory.
    """

    def __init__(self, entries: int, max_bytes: int | None = None):
        self.entries = entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.stats = CacheStats()
        self._lock = threading.Lock()     # engine workers share one cache

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            t = self._data.get(key)
            if t is None:
                self.stats.misses += 1
                return None
            self._data.move_to_end(key)
            self.stats.hits += 1
            return t

    def put(self, key: tuple, value: torch.Tensor) -> None:
        """Keep a copy of value: it is usually one row's real tokens, a view into a padded batch
        that the cache must not keep alive."""
        size = _nbytes(value)
        if self.entries <= 0 or (self.max_bytes is not None and size > self.max_bytes):
            return
        copy = value.clone()
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.stats.bytes -= _nbytes(old)
            self._data[key] = copy
            self.stats.bytes += size
            while len(self._data) > self.entries or (self.max_bytes is not None and self.stats.bytes > self.max_bytes):
                _, evicted = self._data.popitem(last=False)
                self.stats.bytes -= _nbytes(evicted)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.stats.bytes = 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class _Encoded:
    row_index: int
    adapter: LatePrompt
    enc: Encoded


@dataclass
class _Lowered:
    """One bucket's layer-k states in one padded layout: every layer's tensor has the width of
    the bucket's longest row, fresh rows as the lower pass left them, cache hits after them."""

    states: dict[int, torch.Tensor]     # k -> [R_k, T, d]
    valid: dict[int, torch.Tensor]      # k -> [R_k, T] bool
    row: dict[tuple, int]               # (k, token key) -> its row in states[k]
    full: bool                          # every row is T real tokens: nothing to mask

    @property
    def device(self) -> torch.device:
        return next(iter(self.states.values())).device

    def gather(self, k: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows idx (on the device) of the layer-k states -> states [n, T, d], valid [n, T]."""
        return self.states[k].index_select(0, idx), self.valid[k].index_select(0, idx)


class Engine:
    def __init__(self, backbone: Backbone, cache_entries: int = 2048, max_padding: float | None = 1.3,
                 min_bucket_rows: int = 8, cache_bytes: int | None = None, stack: bool | None = None):
        """max_padding: a batch is cut into length buckets so that padded tokens stay within this
        factor of the real tokens (None: one bucket); a bucket keeps at least min_bucket_rows rows,
        since tiny batches waste more in per-call overhead than padding costs. The layer-k cache
        holds at most cache_entries rows and cache_bytes bytes (None: no byte bound). stack:
        run adapters of one kind as one op (`late_logits`; None: on a GPU)."""
        self.backbone = backbone
        self.cache = StateCache(cache_entries, cache_bytes)
        self.max_padding = max_padding
        self.min_bucket_rows = min_bucket_rows
        self.stack = stack

    # ---- stages -----------------------------------------------------------------------------
    def encode(self, rows: list[Row]) -> tuple[list[_Encoded], dict[int, Exception]]:
        """Tokenize with each adapter's template, one batched call per adapter (rows that carry
        their encoding skip this)."""
        by_adapter: dict[int, list[int]] = defaultdict(list)
        ok, failed = [], {}
        for i, r in enumerate(rows):
            if r.encoded is not None:
                ok.append(_Encoded(i, r.adapter, r.encoded))
            else:
                by_adapter[id(r.adapter)].append(i)
        for idx in by_adapter.values():
            adapter = rows[idx[0]].adapter
            encs = adapter.encoder.encode_many([(rows[i].text, rows[i].text_pair) for i in idx])
            for i, enc in zip(idx, encs):
                if isinstance(enc, Exception):   # one bad text fails its row, not the batch
                    failed[i] = RowError(str(enc))
                else:
                    ok.append(_Encoded(i, adapter, enc))
        return ok, failed

    def lower(self, items: list[_Encoded]) -> _Lowered:
        """Every item's layer-k states at the bucket's width: cache hits, and one lower pass over
        the distinct misses whose padded output is kept as it is (only the cache gets slices)."""
        lengths = {len(it.enc.input_ids) for it in items}
        width = max(lengths)
        missing: dict[tuple, set[int]] = defaultdict(set)   # token key -> layers needed
        hits: dict[int, dict[tuple, torch.Tensor]] = defaultdict(dict)   # k -> token key -> [T_i, d]
        for it in items:
            k, key = it.adapter.layer, it.enc.key
            found = self.cache.get((k, key)) if self.cache.entries > 0 else None
            if found is None:
                missing[key].add(k)
            else:
                hits[k][key] = found
        out = _Lowered({}, {}, {}, full=len(lengths) == 1)
        if missing:
            keys = list(missing)
            tokens = pad_tokens([key[0] for key in keys], [key[1] for key in keys], self.backbone.pad_id,
                                self.backbone.device, width)
            computed = lower_pass(self.backbone, tokens, set().union(*missing.values()))   # {k: [U, T, d]}
            keep = self.cache.entries > 0
            for u, key in enumerate(keys):
                for k in missing[key]:
                    if keep:
                        self.cache.put((k, key), computed[k][u, :len(key[0])])
                    out.row[(k, key)] = u
            for k, h in computed.items():
                out.states[k], out.valid[k] = h, tokens.valid
        for k, found in hits.items():   # the cache holds real tokens only: these rows are padded here
            h, valid = pad_states(list(found.values()), width)
            base = out.states[k].shape[0] if k in out.states else 0
            out.row.update(((k, key), base + i) for i, key in enumerate(found))
            out.states[k] = torch.cat([out.states[k], h]) if k in out.states else h
            out.valid[k] = torch.cat([out.valid[k], valid]) if k in out.valid else valid
        return out

    def buckets(self, items: list[_Encoded]) -> list[list[_Encoded]]:
        """Rows sorted by real token length, cut where padding to the bucket's longest row would
        cost more than max_padding times the real tokens. Padding, not the prompt, is what a batch
        pays for; a mixed-task engine may group rows of similar length whatever their task. This
        is the one grouping by real length: a bucket is one padded layout from lower to upper."""
        items = sorted(items, key=lambda it: len(it.enc.input_ids))
        if self.max_padding is None:
            return [items]
        out, cur, real = [], [], 0
        for it in items:
            n = len(it.enc.input_ids)                       # ascending: n is the bucket's new longest
            if len(cur) >= self.min_bucket_rows and (len(cur) + 1) * n > self.max_padding * (real + n):
                out.append(cur)
                cur, real = [], 0
            cur.append(it)
            real += n
        return out + [cur]

    def upper(self, items: list[_Encoded], lowered: _Lowered) -> tuple[list[int], list[int], torch.Tensor]:
        """One late pass over every adapter present -> (row index and number of logits of each
        output row, logits [n, C_max] on the device). Adapters whose generators and heads can
        run as one op are put side by side (`late_logits` stacks them on a GPU); each insertion
        layer's rows are gathered from the lower pass's padded states in one index, and every
        index and readout position crosses to the device in one transfer."""
        by_adapter: dict[int, list[_Encoded]] = defaultdict(list)
        for it in items:
            by_adapter[id(it.adapter)].append(it)
        by_key: dict[tuple, list[list[_Encoded]]] = defaultdict(list)
        for its in by_adapter.values():
            a = its[0].adapter
            by_key[(a.layer, generator_stack_key(a.generator), head_stack_key(a.head))].append(its)
        members = [its for key in sorted(by_key, key=lambda key: key[0]) for its in by_key[key]]
        host = [lowered.row[(its[0].adapter.layer, it.enc.key)] for its in members for it in its]
        host += [it.enc.readout for its in members for it in its]
        dev = to_device(torch.tensor(host), lowered.device)
        n = len(items)
        groups, start = [], 0
        for k, at_k in itertools.groupby(members, key=lambda its: its[0].adapter.layer):   # members are by layer
            at_k = list(at_k)
            h, valid = lowered.gather(k, dev[start:start + sum(map(len, at_k))])     # the layer's rows at once
            at = 0
            for its in at_k:
                rows = slice(at, at + len(its))
                groups.append(Group(its[0].adapter, h[rows], valid[rows], dev[n + start + at:n + start + at + len(its)],
                                    lowered.full))
                at += len(its)
            start += at
        out, starts, widths = late_logits(self.backbone, groups, self.stack)
        order, width = [0] * n, [0] * n
        for its, s, c in zip(members, starts, widths):
            for i, it in enumerate(its):
                order[s + i], width[s + i] = it.row_index, c
        return order, width, out

    # ---- entry points -------------------------------------------------------------------------
    def run(self, rows: list[Row]) -> tuple[dict[int, Exception], dict[int, int], list[int], torch.Tensor | None]:
        """Every row through the stages -> (failed rows, position of each served row in `out`,
        its number of logits, out [n, C_max] float32 on the host: one copy back and one wait)."""
        items, failed = self.encode(rows)
        order: list[int] = []
        widths: list[int] = []
        outs: list[torch.Tensor] = []
        with torch.inference_mode():
            for bucket in self.buckets(items) if items else []:
                idx, width, out = self.upper(bucket, self.lower(bucket))
                order += idx
                widths += width
                outs.append(out)
            if outs:
                c_max = max(o.shape[1] for o in outs)
                flat = to_host(torch.cat([F.pad(o.float(), (0, c_max - o.shape[1])) for o in outs]))
            else:
                flat = None
        return failed, {i: pos for pos, i in enumerate(order)}, widths, flat

    def logits(self, rows: list[Row]) -> list[torch.Tensor | Exception]:
        """Per row: logits [C] (float32, cpu), or the exception that failed that row."""
        if not rows:
            return []
        failed, pos, widths, flat = self.run(rows)
        served = flat.unbind(0) if flat is not None else ()     # one call for every row's view
        c_max = flat.shape[1] if flat is not None else 0
        out: list[torch.Tensor | Exception] = []
        for i in range(len(rows)):
            if i in failed:
                out.append(failed[i])
            else:
                j = pos[i]
                out.append(served[j] if widths[j] == c_max else served[j][:widths[j]])
        return out

    def predict(self, rows: list[Row]) -> list[Prediction | Exception]:
        if not rows:
            return []
        return predictions(rows, *self.run(rows))


def predictions(rows: list[Row], failed: dict[int, Exception], pos: dict[int, int], widths: list[int],
                flat: torch.Tensor | None) -> list[Prediction | Exception]:
    """Engine.run's output -> each row's Prediction, or the exception that failed that row
    (one softmax for the batch; columns past a row's labels are -inf). Shared by the engine and
    a server that runs the engine in another process."""
    probs = []
    if flat is not None:
        beyond = torch.arange(flat.shape[1])[None] >= torch.tensor(widths)[:, None]
        probs = flat.masked_fill(beyond, float("-inf")).softmax(-1).tolist()
    out: list[Prediction | Exception] = []
    for i, row in enumerate(rows):
        if i in failed:
            out.append(failed[i])
            continue
        p = probs[pos[i]]
        labels = row.adapter.labels
        if not all(map(math.isfinite, p[:len(labels)])):   # logits overflowed: no scores to give
            out.append(RowError(f"adapter {row.adapter.config.task!r} gives no finite scores for this input "
                                "(its weights overflow): the adapter needs retraining or replacing"))
            continue
        best = max(range(len(labels)), key=p.__getitem__)
        out.append(Prediction(labels[best], p[best], dict(zip(labels, p))))
    return out

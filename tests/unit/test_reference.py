"""The method itself: engine rows equal an independent forward (reference_forward.py), and the
prompt matters: the logits follow every generator weight and, through the prompt, the text.

"A mixed row equals the row alone" (test_engine.py) holds for a broken method too; these do not.
The tiny models get init_range=0.1: under the default 0.02 attention is nearly uniform and a
prompt moves the logits by ~1e-4, too close to the tolerance to tell a broken prompt apart.
"""
from functools import cache

import pytest
import torch
from torch import nn

from lpt import Engine, Row, new_adapter
from reference_forward import layer_states, prompt, reference_logits
from tiny import make_backbone, random_texts

pytestmark = pytest.mark.unit
TOL = 1e-5     # float32 rounding here stays under 1e-6
MOVE = 1e-3    # a clear move: 100 x TOL
MLM = dict(head_kind="mlm", template="{text} . it was {mask} .", label_words=["terrible", "great", "fun"])
LM = dict(head_kind="lm", template="{text} . it was", label_words=["bad", "good", "fun"])
HEADS = {"cls": {}, "mean": dict(pooling="mean"), "last": dict(pooling="last"), "mlm": MLM, "lm": LM}


@cache
def backbone(family: str, lm_head: bool = True):
    return make_backbone(family, lm_head=lm_head, init_range=0.1)


def adapter(bb, k: int, length: int, gen: str, head: str, seed: int):
    torch.manual_seed(seed)
    return new_adapter(bb, task=f"t{seed}", labels=["a", "b", "c"], layer=k, prompt_length=length,
                       generator=gen, **HEADS[head]).eval()


# (k, L, generator, head): every generator, layers 0..3, prompt lengths 1..8, every head of the family
ENCODER = [(0, 4, "npg", "cls"), (1, 1, "max", "mlm"), (2, 6, "avg", "mean"), (3, 3, "static", "last"),
           (2, 5, "npg", "mlm"), (1, 8, "avg", "cls"), (3, 2, "max", "mean"), (0, 5, "static", "mlm"),
           (1, 3, "npg", "last")]
DECODER = [(0, 4, "npg", "lm"), (1, 1, "max", "cls"), (2, 6, "avg", "mean"), (3, 3, "static", "lm"),
           (2, 5, "npg", "cls"), (1, 8, "avg", "lm"), (3, 2, "max", "lm"), (0, 5, "static", "mean")]
NO_LM_HEAD = [s for s in ENCODER if s[3] != "mlm"]


@pytest.mark.parametrize("family,lm_head", [("bert", True), ("bert", False), ("roberta", True),
                                            ("distilbert", True), ("electra", True), ("gpt2", True),
                                            ("mpnet", True)])
def test_mixed_engine_batch_equals_the_reference_forward(family, lm_head):
    bb = backbone(family, lm_head)
    specs = DECODER if bb.causal else ENCODER if lm_head else NO_LM_HEAD
    adapters = [adapter(bb, *s, seed=i) for i, s in enumerate(specs)]
    texts, pairs = random_texts(12, seed=1, lo=1, hi=30), random_texts(12, seed=2, lo=1, hi=8)
    rows = []
    for i, a in enumerate(adapters):      # texts shared across adapters (and layers), pairs where no template
        for j in range(2):
            t = (i + 5 * j) % len(texts)
            rows.append(Row(a, texts[t], pairs[t] if j == 1 and a.config.template is None and not bb.causal else None))
    assert any(r.text_pair for r in rows) != bb.causal
    refs = [reference_logits(bb, r.adapter, r.text, r.text_pair) for r in rows]
    for ref, r in zip(refs, rows):   # the prompt moves every row far more than TOL: the check below sees it
        assert (ref - reference_logits(bb, r.adapter, r.text, r.text_pair, with_prompt=False)).abs().max() > MOVE
    engine = Engine(bb, cache_entries=1000, max_padding=None)     # one bucket: every row padded together
    for _ in ("cold", "warm"):
        for i, (row, got, ref) in enumerate(zip(rows, engine.logits(rows), refs)):
            diff = (got - ref).abs().max().item()
            assert diff < TOL, f"row {i} ({row.adapter.config.generator}, k={row.adapter.config.layer}, " \
                               f"L={row.adapter.config.prompt_length}): engine differs from the reference by {diff}"
    assert engine.cache.stats.hits >= len(rows)


# every head a tiny model supports: linear (cls, mean, last), the MLM verbalizer, the decoder's LM head
HEAD_CASES = [("bert", "cls"), ("bert", "mean"), ("bert", "last"), ("bert", "mlm"), ("gpt2", "lm"), ("gpt2", "cls")]


@pytest.mark.parametrize("gen", ["npg", "max", "avg", "static"])
@pytest.mark.parametrize("family,head", HEAD_CASES)
def test_logits_follow_every_generator_tensor(family, head, gen):
    bb = backbone(family)
    a = adapter(bb, 2, 4, gen, head, seed=0)
    other = adapter(bb, 1, 3, "npg" if gen != "npg" else "avg", head, seed=1)
    texts = random_texts(3, seed=3, lo=2, hi=12)
    rows = [Row(a, t) for t in texts] + [Row(other, t) for t in texts[:2]]
    engine = Engine(bb, cache_entries=0)
    before = engine.logits(rows)
    gen_g = torch.Generator().manual_seed(0)
    for name, p in a.generator.named_parameters():
        saved = p.detach().clone()
        with torch.no_grad():
            p.add_(torch.randn(p.shape, generator=gen_g) * 0.5)
        after = engine.logits(rows)
        with torch.no_grad():
            p.copy_(saved)
        for i, (x, y) in enumerate(zip(before, after)):
            moved = (x - y).abs().max().item()
            if i < len(texts):
                assert moved > MOVE, f"generator {name} changed, row {i}'s logits moved by only {moved}"
            else:
                assert moved < TOL, f"generator {name} of another adapter moved row {i} by {moved}"


class FeedStates(nn.Module):
    """Hands the wrapped generator `states` instead of the row's own layer-k states (None: its own)."""

    def __init__(self, inner: nn.Module, states: torch.Tensor | None):
        super().__init__()
        self.inner, self.states = inner, states

    def forward(self, h, valid):
        return self.inner(h if self.states is None else self.states.expand_as(h), valid)


@pytest.mark.parametrize("gen", ["npg", "max", "avg", "static"])
@pytest.mark.parametrize("family,head", [("bert", "cls"), ("bert", "mlm"), ("roberta", "mean"), ("gpt2", "lm")])
def test_the_prompt_follows_the_text(family, head, gen):
    """Two texts of equal token length: the prompt differs, and feeding the generator the other
    text's layer-k states (the upper layers still see the row's own) moves the logits.
    A static prompt is the control: it ignores its input."""
    bb = backbone(family)
    a = adapter(bb, 2, 4, gen, head, seed=0)
    row = Row(a, "great film , the actors were fun")
    other = "bad plot and a very boring movie"
    ids, ids_other = (a.encoder.encode(t) for t in (row.text, other))
    assert len(ids.input_ids) == len(ids_other.input_ids) and ids.input_ids != ids_other.input_ids
    with torch.no_grad():
        h, h_other = (layer_states(bb, e.input_ids, e.token_type_ids, a.config.layer) for e in (ids, ids_other))
        valid = torch.ones(1, h.shape[0], dtype=torch.bool)
        p, p_other = a.generator(h[None], valid)[0], a.generator(h_other[None], valid)[0]
    assert (p - prompt(a, h, bb.causal)).abs().max().item() < TOL      # the generator is the reference's
    prompt_moved = (p - p_other).abs().max().item()

    engine = Engine(bb, cache_entries=0)
    own = engine.logits([row])[0]
    inner = a.generator
    a.generator = FeedStates(inner, None)
    assert (engine.logits([row])[0] - own).abs().max().item() < TOL    # the wrapper alone changes nothing
    a.generator = FeedStates(inner, h_other[None])
    logits_moved = (engine.logits([row])[0] - own).abs().max().item()
    if gen == "static":
        assert prompt_moved == 0 and logits_moved < TOL
    else:
        assert prompt_moved > MOVE, f"{gen} prompt does not depend on the text ({prompt_moved})"
        assert logits_moved > MOVE, f"{gen}: other states into the generator moved the logits by {logits_moved}"

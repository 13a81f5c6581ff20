"""The core test of the system: every row of a mixed-task batch equals that row run alone."""
import pytest
import torch

from lpt import Engine, Row, RowError, new_adapter
from tiny import make_backbone, random_texts

pytestmark = pytest.mark.unit
TOL = 1e-5
TEMPLATE = "{text} . it was {mask} ."


def _adapters(bb, specs):
    out = []
    for i, (k, length, gen, head) in enumerate(specs):
        torch.manual_seed(100 + i)
        extra = {}
        if head == "mlm":
            extra = dict(head_kind="mlm", template=TEMPLATE, label_words=["terrible", "great"])
        elif head == "lm":
            extra = dict(head_kind="lm", template="{text} . it was", label_words=["bad", "good", "fun"])
        elif head == "mean":
            extra = dict(pooling="mean")
        labels = ["neg", "pos", "mid"] if head == "lm" else ["neg", "pos"] if head == "mlm" else [f"c{j}" for j in range(2 + i % 3)]
        a = new_adapter(bb, task=f"t{i}", labels=labels, layer=k, prompt_length=length, generator=gen, **extra).eval()
        out.append(a)
    return out


# 9 adapters: insertion layers 0..3, prompt lengths 1..8, every generator, linear (cls, mean) and MLM heads
MIXED = [(2, 5, "npg", "linear"), (1, 3, "max", "mlm"), (3, 8, "avg", "mean"), (0, 4, "static", "linear"),
         (2, 1, "npg", "mlm"), (1, 6, "static", "mlm"), (3, 2, "max", "linear"), (0, 5, "npg", "mean"),
         (2, 5, "avg", "linear")]


def _rows(adapters, texts):
    return [Row(adapters[i % len(adapters)], t) for i, t in enumerate(texts)]


def _assert_rows_equal_alone(engine, rows):
    mixed = engine.logits(rows)
    for i, row in enumerate(rows):
        alone = Engine(engine.backbone, cache_entries=0).logits([row])[0]
        assert mixed[i].shape == alone.shape
        diff = (mixed[i] - alone).abs().max().item()
        assert diff < TOL, f"row {i} (task {row.adapter.config.task}): mixed differs from alone by {diff}"
    return mixed


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "mpnet"])
def test_mixed_batch_rows_equal_rows_alone(family):
    bb = make_backbone(family)
    adapters = _adapters(bb, MIXED)
    rows = _rows(adapters, random_texts(27, seed=4, lo=1, hi=30))   # 3 rows per adapter, mixed lengths
    engine = Engine(bb, cache_entries=1000)
    cold = _assert_rows_equal_alone(engine, rows)
    assert engine.cache.stats.hits == 0
    warm = _assert_rows_equal_alone(engine, rows)                     # every state from the cache
    assert engine.cache.stats.hits >= len(rows)
    for a, b in zip(cold, warm):
        assert (a - b).abs().max().item() < TOL


def test_mixed_batch_decoder_family():
    bb = make_backbone("gpt2")
    specs = [(2, 5, "npg", "lm"), (1, 3, "max", "linear"), (3, 2, "avg", "lm"), (0, 4, "static", "linear"),
             (2, 1, "npg", "linear"), (1, 6, "static", "lm"), (3, 8, "max", "mean"), (0, 5, "npg", "lm")]
    adapters = _adapters(bb, specs)
    _assert_rows_equal_alone(Engine(bb), _rows(adapters, random_texts(24, seed=5, lo=1, hi=30)))


def test_mixed_batch_without_padding():
    bb = make_backbone("bert")
    # same prompt length and layer, texts of one token length: no padding anywhere
    specs = [(2, 4, g, h) for g in ("npg", "max", "avg", "static") for h in ("linear", "mean")]
    adapters = _adapters(bb, specs)
    texts = random_texts(16, seed=6, lo=9, hi=9)
    rows = _rows(adapters, texts)
    lengths = {len(r.adapter.encoder.encode(r.text).input_ids) for r in rows}
    assert len(lengths) == 1
    _assert_rows_equal_alone(Engine(bb), rows)


def lower_rows(bb) -> list[int]:
    """Rows of each batch the backbone's first layer runs on, recorded from now on."""
    seen, run_layers = [], bb.run_layers

    def spy(h, valid, start, stop):
        if start == 0 < stop:
            seen.append(h.shape[0])
        return run_layers(h, valid, start, stop)

    bb.run_layers = spy
    return seen


def test_one_lower_pass_per_distinct_sequence_and_one_generator_call_per_adapter():
    bb = make_backbone("bert")
    adapters = _adapters(bb, [(2, 5, "npg", "linear"), (2, 3, "max", "linear"), (2, 2, "npg", "mean")])
    seen_rows, gen_calls = lower_rows(bb), []
    for a in adapters:
        a.generator.register_forward_hook(lambda m, args, out: gen_calls.append(args[0].shape[0]))
    texts = ["great film", "bad plot", "great film"]
    rows = [Row(a, t) for t in texts for a in adapters]       # 9 rows, 2 distinct token sequences
    Engine(bb, cache_entries=0).logits(rows)
    assert seen_rows == [2]           # layer 0 ran once, on the 2 distinct sequences
    assert sorted(gen_calls) == [3, 3, 3]


def test_cache_hits_skip_the_lower_layers():
    bb = make_backbone("bert")
    (a,) = _adapters(bb, [(3, 5, "npg", "linear")])
    calls = lower_rows(bb)
    engine = Engine(bb, cache_entries=2)
    engine.logits([Row(a, "great film"), Row(a, "bad plot")])
    engine.logits([Row(a, "great film"), Row(a, "bad plot")])
    assert calls == [2]
    assert (engine.cache.stats.hits, engine.cache.stats.misses) == (2, 2)
    engine.logits([Row(a, "fun plot")])                      # evicts the oldest entry
    assert len(engine.cache) == 2


def test_the_cache_holds_at_most_its_byte_budget_dropping_the_oldest():
    from lpt.engine import StateCache

    row = lambda n: torch.zeros(n, 4)                    # n tokens x 4 floats = 16 n bytes
    cache = StateCache(entries=100, max_bytes=1000)
    for i in range(10):
        cache.put(("k", i), row(10))                     # 160 bytes each: 6 fit in 1000
        assert cache.stats.bytes <= 1000
    assert len(cache) == 6 and cache.stats.bytes == 960
    assert cache.get(("k", 3)) is None and cache.get(("k", 4)) is not None     # oldest went first
    cache.put(("k", 4), row(20))                         # replacing an entry counts its new size once
    assert cache.stats.bytes == 5 * 160 + 320 - 160 and len(cache) == 5
    cache.put(("big",), row(100))                        # larger than the whole budget: not kept
    assert cache.get(("big",)) is None and cache.stats.bytes <= 1000
    cache.clear()
    assert cache.stats.bytes == 0 and len(cache) == 0


def test_the_engine_cache_stays_within_its_byte_budget():
    bb = make_backbone("bert")
    (a,) = _adapters(bb, [(2, 5, "npg", "linear")])
    engine = Engine(bb, cache_entries=1000, cache_bytes=20_000)
    engine.logits(_rows([a], random_texts(40, seed=3)))
    held = sum(t.numel() * t.element_size() for t in engine.cache._data.values())
    assert 0 < held == engine.cache.stats.bytes <= 20_000
    assert len(engine.cache) < 40                          # the budget, not the row count, bounded it


def test_a_bad_row_fails_alone():
    bb = make_backbone("bert")
    (a,) = _adapters(bb, [(2, 5, "npg", "mlm")])
    out = Engine(bb).predict([Row(a, "great film"), Row(a, "x", text_pair="pair not in the template")])
    assert out[0].label in ("neg", "pos") and abs(sum(out[0].scores.values()) - 1) < 1e-6
    assert isinstance(out[1], RowError)


def test_an_adapter_whose_scores_overflow_fails_its_rows_alone():
    """Finite weights big enough to overflow float32 logits give NaN probabilities: those rows get
    a RowError naming the adapter (no NaN reaches a JSON answer); other adapters' rows are served."""
    bb = make_backbone("bert")
    good, big = _adapters(bb, [(2, 5, "npg", "linear"), (2, 5, "npg", "linear")])
    with torch.no_grad():
        for t in big.parameters():                # what a weight-overflowing upload looked like
            t.mul_(1e30)
    out = Engine(bb).predict([Row(good, "great film"), Row(big, "great film"), Row(big, "bad film")])
    assert out[0].label in good.labels and abs(sum(out[0].scores.values()) - 1) < 1e-6
    for o in out[1:]:
        assert isinstance(o, RowError) and "no finite scores" in str(o) and repr(big.config.task) in str(o)


def test_predict_scores_are_probabilities_and_label_is_argmax():
    bb = make_backbone("bert")
    adapters = _adapters(bb, MIXED[:3])
    preds = Engine(bb).predict(_rows(adapters, random_texts(6, seed=7)))
    for p in preds:
        assert abs(sum(p.scores.values()) - 1) < 1e-5
        assert p.label == max(p.scores, key=p.scores.get) and p.score == p.scores[p.label]


def test_length_buckets_bound_padding_and_change_no_answer():
    bb = make_backbone("bert")
    adapters = _adapters(bb, MIXED)
    rows = _rows(adapters, random_texts(40, seed=8, lo=1, hi=60))
    bucketed = Engine(bb, cache_entries=0, max_padding=1.2, min_bucket_rows=4)
    items, _ = bucketed.encode(rows)
    buckets = bucketed.buckets(items)
    assert len(buckets) > 1 and sum(map(len, buckets)) == len(rows)
    for b in buckets:
        lengths = [len(it.enc.input_ids) for it in b]
        assert len(b) <= 4 or len(b) * max(lengths) <= 1.2 * sum(lengths)   # padded tokens <= 1.2x real ones
    one = Engine(bb, cache_entries=0, max_padding=None).logits(rows)
    for a, b in zip(one, bucketed.logits(rows)):
        assert (a - b).abs().max().item() < TOL


def test_hits_and_misses_in_one_bucket_equal_rows_alone():
    """The longest row comes from the cache (the lower pass pads its misses to that width) and
    one text is a hit at one layer and a miss at another."""
    bb = make_backbone("bert")
    a1, a2 = _adapters(bb, [(1, 5, "npg", "linear"), (2, 3, "max", "mean")])
    assert a1.encoder.encode("great film").key == a2.encoder.encode("great film").key
    long_text = "the plot was very boring and the actors were not fun , it is a bad film"
    engine = Engine(bb, cache_entries=100, max_padding=None)
    engine.logits([Row(a1, long_text), Row(a1, "great film")])
    before = (engine.cache.stats.hits, engine.cache.stats.misses)
    rows = [Row(a1, long_text), Row(a1, "great film"), Row(a2, "great film"), Row(a2, "bad plot"),
            Row(a1, "fun movie")]
    _assert_rows_equal_alone(engine, rows)
    assert (engine.cache.stats.hits - before[0], engine.cache.stats.misses - before[1]) == (2, 3)


def test_fresh_rows_reach_the_upper_layers_as_the_lower_pass_padded_them(monkeypatch):
    """No slicing and re-padding when nothing comes from the cache: each adapter's states are
    rows of the lower pass's own padded tensor, padding included."""
    import lpt.engine as engine_module

    bb = make_backbone("bert")
    adapters = _adapters(bb, MIXED[:4])
    rows = _rows(adapters, random_texts(12, seed=9, lo=1, hi=12))
    lowered, seen = [], []
    real_lower, real_late = engine_module.lower_pass, engine_module.late_logits
    monkeypatch.setattr(engine_module, "lower_pass", lambda *a: lowered.append(real_lower(*a)) or lowered[-1])
    monkeypatch.setattr(engine_module, "late_logits", lambda b, groups, stack: seen.append(groups) or real_late(b, groups))

    def no_repadding(*a, **k):
        raise AssertionError("fresh states were padded again")
    monkeypatch.setattr(engine_module, "pad_states", no_repadding)

    engine = Engine(bb, cache_entries=100, max_padding=None)
    engine.logits(rows)
    (computed,), (groups,) = lowered, seen
    width = max(len(r.adapter.encoder.encode(r.text).input_ids) for r in rows)
    for g in groups:
        layer = computed[g.adapter.layer]
        assert g.states.shape[1] == width == layer.shape[1]
        padded = ~g.valid
        assert padded.any()
        for row in g.states:
            assert any(torch.equal(row, c) for c in layer)


def test_late_forward_refuses_groups_of_different_widths():
    from lpt.forward import Group, late_forward

    bb = make_backbone("bert")
    a, b = _adapters(bb, [(2, 3, "npg", "linear"), (2, 2, "npg", "linear")])
    d = bb.hidden_size
    groups = [Group(a, torch.zeros(1, 4, d), torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, dtype=torch.long)),
              Group(b, torch.zeros(1, 5, d), torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, dtype=torch.long))]
    with pytest.raises(ValueError, match="one padded width"):
        late_forward(bb, groups)

"""Adapters of one kind run as one op (the engine's default on a GPU, forced here on a CPU):
each row still gets its own adapter's prompt and head, checked against the independent forward
(reference_forward.py), and the work no longer grows with the number of adapters."""
import pytest
import torch
import torch.nn.functional as F

import lpt.forward as forward_module
from lpt import Engine, Row, new_adapter
from reference_forward import reference_logits
from tiny import make_backbone, random_texts

pytestmark = pytest.mark.unit
TOL = 1e-5


def _adapter(bb, seed: int, layer: int, length: int, gen: str = "npg", labels: int = 3, **extra):
    torch.manual_seed(seed)
    return new_adapter(bb, task=f"t{seed}", labels=[f"c{j}" for j in range(labels)], layer=layer,
                       prompt_length=length, generator=gen, **extra).eval()


def _mixed(bb):
    """Runs that stack (NPG + cls head, static + mean head; two label counts) around ones that
    cannot (a pooled generator; an MLM head), at two layers and three prompt lengths."""
    out = [_adapter(bb, i, layer=2, length=4) for i in range(5)]
    out += [_adapter(bb, 10 + i, layer=2, length=4, labels=2) for i in range(3)]
    out += [_adapter(bb, 20 + i, layer=1, length=6, gen="static", pooling="mean") for i in range(3)]
    out += [_adapter(bb, 30, layer=2, length=3, gen="max")]
    if bb.has_lm_head and not bb.causal:
        out += [_adapter(bb, 31, layer=1, length=2, head_kind="mlm", template="{text} . it was {mask} .",
                         label_words=["bad", "good", "fun"])]
    return out


def _rows(adapters, n: int, seed: int):
    texts = random_texts(n, seed=seed, lo=1, hi=20)
    return [Row(adapters[(7 * i) % len(adapters)], t) for i, t in enumerate(texts)]


def _spy(monkeypatch) -> list[tuple[str, int]]:
    """Record each stacked call: (what, members)."""
    seen = []
    for name in ("stacked_prompts", "stacked_logits"):
        real = getattr(forward_module, name)

        def spy(modules, *a, _real=real, _name=name):
            seen.append((_name, len(modules)))
            return _real(modules, *a)
        monkeypatch.setattr(forward_module, name, spy)
    return seen


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_stacked_adapters_equal_the_reference_forward(family, monkeypatch):
    bb = make_backbone(family, init_range=0.1)
    adapters = _mixed(bb)
    rows = _rows(adapters, 40, seed=3)
    seen = _spy(monkeypatch)
    got = Engine(bb, cache_entries=0, max_padding=None, stack=True).logits(rows)
    assert ("stacked_prompts", 8) in seen and ("stacked_prompts", 3) in seen     # NPG at k=2; statics at k=1
    assert ("stacked_logits", 5) in seen and ("stacked_logits", 3) in seen       # 3-label heads; 2-label heads
    for i, (row, lg) in enumerate(zip(rows, got)):
        ref = reference_logits(bb, row.adapter, row.text)
        assert lg.shape == ref.shape
        diff = (lg - ref).abs().max().item()
        assert diff < TOL, f"row {i} ({row.adapter.config.task}): stacked differs from the reference by {diff}"


def test_stacked_and_unstacked_engines_agree_and_predict_the_same():
    bb = make_backbone("bert", init_range=0.1)
    rows = _rows(_mixed(bb), 30, seed=4)
    one, other = Engine(bb, cache_entries=0, stack=True), Engine(bb, cache_entries=0, stack=False)
    for a, b in zip(one.logits(rows), other.logits(rows)):
        assert a.shape == b.shape and (a - b).abs().max().item() < TOL
    for p, q in zip(one.predict(rows), other.predict(rows)):
        assert p.label == q.label and p.scores.keys() == q.scores.keys()
        assert max(abs(p.scores[k] - q.scores[k]) for k in p.scores) < TOL


@pytest.mark.parametrize("part", ["generator.down.weight", "generator.up.bias", "head.linear.weight"])
def test_a_stacked_adapter_moves_its_own_rows_and_no_other(part):
    bb = make_backbone("bert", init_range=0.1)
    adapters = [_adapter(bb, i, layer=2, length=4) for i in range(6)]
    rows = _rows(adapters, 24, seed=5)
    engine = Engine(bb, cache_entries=0, stack=True)
    before = engine.logits(rows)
    moved = adapters[3]
    torch.manual_seed(9)
    with torch.no_grad():   # random, not a constant: a constant on down.weight meets a zero-mean (normed) state
        p = dict(moved.named_parameters())[part]
        p.add_(torch.randn_like(p) * 0.5)
    after = engine.logits(rows)
    for row, a, b in zip(rows, before, after):
        diff = (a - b).abs().max().item()
        if row.adapter is moved:
            assert diff > 1e-3, f"{part} moved, its own row did not"
        else:
            assert diff < TOL, f"{part} of another adapter moved this row by {diff}"


def test_stacked_work_does_not_grow_with_the_adapters(monkeypatch):
    """The number of matmuls in a batch is the same for 4 and for 16 adapters of one kind."""
    bb = make_backbone("bert")
    calls = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(1) or real(*a, **k))

    def matmuls(n_adapters: int, stack: bool) -> int:
        adapters = [_adapter(bb, i, layer=2, length=4) for i in range(n_adapters)]
        rows = [Row(a, t) for a, t in zip(adapters * 2, random_texts(2 * n_adapters, seed=6))]
        calls.clear()
        Engine(bb, cache_entries=0, max_padding=None, stack=stack).logits(rows)
        return len(calls)

    assert matmuls(4, stack=True) == matmuls(16, stack=True)
    assert matmuls(16, stack=False) > matmuls(4, stack=False)     # one op per adapter and kind alone


@pytest.mark.parametrize("stack", [False, True])
def test_a_batch_without_padding_runs_attention_without_a_mask(stack, monkeypatch):
    """Rows of one length and prompts of one length: nothing to mask, so the blocks get no mask
    (on a GPU, SDPA then takes its fastest kernel); the logits still equal the reference."""
    bb = make_backbone("bert", init_range=0.1)
    bb.packed_block = None                       # the model's own blocks, as on a GPU
    adapters = [_adapter(bb, i, layer=1 + i % 2, length=4, gen=("npg", "static")[i % 2]) for i in range(4)]
    by_length: dict[int, list[str]] = {}
    for t in random_texts(200, seed=8, lo=3, hi=8):
        by_length.setdefault(len(adapters[0].encoder.encode(t).input_ids), []).append(t)
    texts = max(by_length.values(), key=len)[:12]
    assert len(texts) >= 8
    masks, block_masks = [], []
    real = bb.run_layers
    monkeypatch.setattr(bb, "run_layers", lambda h, valid, a, b: masks.append(valid is None) or real(h, valid, a, b))
    hooks = [block.register_forward_pre_hook(lambda m, args, kw: block_masks.append(kw.get("attention_mask")),
                                             with_kwargs=True) for block in bb.layers]
    rows = [Row(adapters[i % 4], t) for i, t in enumerate(texts)]
    got = Engine(bb, cache_entries=0, max_padding=None, stack=stack).logits(rows)
    for hook in hooks:
        hook.remove()
    assert masks and all(masks), masks
    assert block_masks and all(m is None for m in block_masks)   # what the blocks themselves got
    for row, lg in zip(rows, got):
        assert (lg - reference_logits(bb, row.adapter, row.text)).abs().max().item() < TOL
    masks.clear()
    Engine(bb, cache_entries=0, max_padding=None).logits(rows + [Row(adapters[0], texts[0] + " and more words")])
    assert not any(masks)                        # one longer row: every pass masks
    masks.clear()
    shorter = _adapter(bb, 9, layer=1, length=2)   # rows still one length, but a prompt gap to mask
    rows = rows + [Row(shorter, t) for t in texts[:3]]
    got = Engine(bb, cache_entries=0, max_padding=None, stack=stack).logits(rows)
    assert masks and masks[0] and not masks[-1]  # the lower pass needs none, the upper pass does
    for row, lg in zip(rows, got):
        assert (lg - reference_logits(bb, row.adapter, row.text)).abs().max().item() < TOL

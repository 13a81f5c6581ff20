"""Training on tiny random models: it learns, caching changes nothing, runs are reproducible."""
import functools

import pytest
import torch

from lpt import load_adapter, read_adapter
from lpt.methods import build_method
from lpt.training import (TrainConfig, accuracy, batch_loss, cache_splits, length_grouped_batches,
                          linear_warmup_decay, make_split, param_groups, train)
from tiny import make_backbone, own_twin
from training_helpers import toy_examples

pytestmark = pytest.mark.unit
LABELS = ["neg", "pos"]



def test_lpt_learns_a_separable_toy_task_to_full_train_accuracy():
    bb = make_backbone("bert", lm_head=False)
    ex = toy_examples(24)
    cfg = TrainConfig(method="lpt", epochs=15, lr=3e-3, head_lr=0.1, batch_size=8)
    result = train(bb, ex, ex, LABELS, cfg, task="toy", progress=False, pooling="mean")
    assert result.best_dev_accuracy == 1.0
    assert result.history[0].dev_accuracy < 1.0          # it was learned, not given
    assert result.cached and result.cache_mb > 0
    train_split = make_split(result.method, ex, LABELS)
    assert accuracy(result.method, train_split) == 1.0    # the best checkpoint is the one kept


@pytest.mark.parametrize("method", ["lpt", "static", "prompt-tuning", "probe", "finetune"])
def test_every_method_trains_on_a_bfloat16_backbone_with_fp32_weights(method, tmp_path):
    """`lpt train --dtype bfloat16`: the frozen backbone in bf16, the trained weights in fp32."""
    bb = make_backbone("bert", lm_head=False)
    fp32_fingerprint = bb.fingerprint()
    bb.model.to(torch.bfloat16)
    ex = toy_examples(24)
    cfg = TrainConfig(method=method, epochs=15, lr=3e-3, head_lr=0.1, batch_size=8)
    result = train(bb, ex, ex, LABELS, cfg, task="toy", progress=False, pooling="mean")
    assert result.best_dev_accuracy == 1.0
    assert {p.dtype for p in result.method.adapter.parameters()} == {torch.float32}
    if result.method.saves_adapter:     # the file serves on the fp32 model it came from
        result.method.save(tmp_path / "a.safetensors")
        fp32 = make_backbone("bert", lm_head=False)
        assert fp32.fingerprint() == fp32_fingerprint
        load_adapter((tmp_path / "a.safetensors").read_bytes(), fp32)


@pytest.mark.parametrize("method,generator,pooling", [
    ("lpt", "npg", "cls"), ("lpt", "max", "mean"), ("lpt", "avg", "cls"),
    ("static", "static", "mean"), ("prompt-tuning", "static", "cls"), ("probe", "npg", "mean")])
def test_cached_and_uncached_states_give_the_same_gradients(method, generator, pooling):
    bb = make_backbone("bert", lm_head=False)
    torch.manual_seed(0)
    m = build_method(bb, method, task="toy", labels=LABELS, layer=2, generator=generator, pooling=pooling)
    ex = toy_examples(12, seed=3)
    uncached = make_split(m, ex, LABELS)
    cached = make_split(m, ex, LABELS)
    cache_splits(m, [cached], budget_mb=100)
    assert cached.store is not None and uncached.store is None
    idx = [5, 0, 7, 3, 11, 2]                      # rows of different lengths: padding differs
    params = [p for _, named in m.param_groups() for _, p in named]
    grads = []
    for split in (uncached, cached):
        m.train(True)
        torch.manual_seed(1)                       # same dropout masks in the generator
        for p in params:
            p.grad = None
        batch_loss(m, split, idx).backward()
        grads.append([p.grad.clone() for p in params])
    for g_uncached, g_cached in zip(*grads):
        assert torch.allclose(g_uncached, g_cached, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_frozen_backbone_stays_frozen_and_in_eval_mode():
    bb = make_backbone("bert", lm_head=False)
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    ex = toy_examples(16)
    result = train(bb, ex, ex, LABELS, TrainConfig(method="lpt", epochs=1, batch_size=8), task="toy", progress=False)
    assert not bb.model.training
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in bb.model.state_dict().items())
    trainable = result.method.trainable_parameters()
    adapter = result.method.adapter
    assert trainable == sum(p.numel() for p in adapter.generator.parameters()) + \
        sum(p.numel() for p in adapter.head.parameters())


def test_same_seed_same_adapter_bytes_other_seed_differs(tmp_path):
    ex = toy_examples(20)
    versions = []
    for seed in (7, 7, 8):
        bb = make_backbone("bert", lm_head=False)
        cfg = TrainConfig(method="lpt", epochs=2, batch_size=8, seed=seed)
        result = train(bb, ex, ex[:6], LABELS, cfg, task="toy", progress=False)
        versions.append(result.method.save(tmp_path / f"a{seed}.safetensors"))
    assert versions[0] == versions[1]
    assert versions[0] != versions[2]


def test_no_cache_over_budget_trains_the_same():
    ex = toy_examples(16)
    outs = []
    for budget in (100.0, 0.0):
        bb = make_backbone("bert", lm_head=False)
        cfg = TrainConfig(method="lpt", epochs=2, batch_size=8, cache_budget_mb=budget)
        result = train(bb, ex, ex, LABELS, cfg, task="toy", progress=False)
        assert result.cached == (budget > 0)
        outs.append(torch.cat([p.detach().flatten() for p in result.method.adapter.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_trained_adapter_round_trips_through_the_file(tmp_path):
    bb = make_backbone("bert", lm_head=False)
    ex = toy_examples(16)
    result = train(bb, ex, ex, LABELS, TrainConfig(epochs=1, batch_size=8), task="toy", progress=False,
                   layer=1, prompt_length=3)
    path = tmp_path / "toy.safetensors"
    result.method.save(path)
    cfg = read_adapter(path).config
    assert (cfg.task, cfg.labels, cfg.layer, cfg.prompt_length) == ("toy", LABELS, 1, 3)
    loaded = load_adapter(path, bb)
    split = make_split(result.method, ex, LABELS)
    with torch.no_grad():
        a = result.method.logits(split, list(range(8)))
        result.method.adapter = loaded
        b = result.method.logits(split, list(range(8)))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("own", [False, True], ids=["transformers", "own-modules"])
@pytest.mark.parametrize("method", ["probe", "finetune", "prompt-tuning", "static"])
def test_every_method_trains_what_it_should(method, own, tmp_path):
    """On transformers' modules and on lpt's own (the weights mapped from their file: fine-tuning
    writes to private pages)."""
    bb = make_backbone("bert", lm_head=False)
    if own:
        bb = own_twin(bb, tmp_path / "model")
    backbone_before = [p.clone() for p in bb.model.parameters()]
    ex = toy_examples(16)
    result = train(bb, ex, ex, LABELS, TrainConfig(method=method, epochs=2, batch_size=8), task="toy",
                   progress=False, layer=2)
    m = result.method
    changed = any(not torch.equal(a, b) for a, b in zip(backbone_before, bb.model.parameters()))
    assert changed == (method == "finetune")
    assert m.layer == {"probe": 4, "finetune": 4, "prompt-tuning": 0, "static": 2}[method]
    assert m.saves_adapter == (method in ("prompt-tuning", "static"))
    head = sum(p.numel() for p in m.adapter.head.parameters())
    if method == "probe":
        assert m.trainable_parameters() == head
    if method == "finetune":
        assert m.trainable_parameters() == head + sum(p.numel() for p in bb.model.parameters())
        assert not result.cached


def test_schedule_and_weight_decay_groups():
    f = linear_warmup_decay(100, 0.06)
    assert f(0) == pytest.approx(1 / 6) and f(5) == 1.0 and f(99) == pytest.approx(1 / 94) and f(100) == 0.0
    bb = make_backbone("bert", lm_head=False)
    m = build_method(bb, "lpt", task="t", labels=LABELS, layer=2)
    groups = param_groups(m, TrainConfig(lr=1e-3, head_lr=1e-2).resolved())
    for g in groups:
        assert g["weight_decay"] == (0.1 if all(p.dim() >= 2 for p in g["params"]) else 0.0)
    head_ids = {id(p) for p in m.adapter.head.parameters()}
    assert all(g["lr"] == (1e-2 if id(g["params"][0]) in head_ids else 1e-3) for g in groups)


def test_length_grouped_batches_cover_every_example_once_and_are_deterministic():
    lengths = [(i * 7) % 23 for i in range(100)]
    a = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0), pool=4)
    b = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0), pool=4)
    assert a == b
    assert sorted(i for batch in a for i in batch) == list(range(100))
    assert max(len(x) for x in a) == 8


def test_template_and_label_words_train_through_the_frozen_mlm_head():
    bb = make_backbone("bert")                                  # with an MLM head
    ex = toy_examples(16)
    result = train(bb, ex, ex, LABELS, TrainConfig(epochs=2, batch_size=8), task="toy", progress=False,
                   head_kind="mlm", template="{text} . it was {mask} .", label_words=["bad", "good"])
    adapter = result.method.adapter
    assert result.method.trainable_parameters() == sum(p.numel() for p in adapter.generator.parameters())
    assert adapter.config.head_kind == "mlm" and len(result.history) == 2


def test_the_bar_names_the_epoch_its_dev_accuracy_is_from(capsys, monkeypatch):
    """During epoch 2 the bar shows epoch 1's dev accuracy, labelled as such; then that the dev
    set is being evaluated; at the epoch's end, its own dev accuracy."""
    import tqdm
    monkeypatch.setattr(tqdm.tqdm, "__init__", functools.partialmethod(tqdm.tqdm.__init__, mininterval=0))  # every step
    bb = make_backbone("bert", lm_head=False)
    ex = toy_examples(24)
    result = train(bb, ex, ex, LABELS, TrainConfig(method="lpt", epochs=2, batch_size=8), task="toy", progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    epoch2 = [line for line in err.splitlines() if line.startswith("epoch 2/2") and "loss=" in line]
    during = [line for line in epoch2 if "dev_acc@1=" in line]
    assert during and all(f"dev_acc@1={result.history[0].dev_accuracy:.4f}" in line and "dev_acc=" not in line
                          for line in during)
    assert any("dev_acc=evaluating" in line for line in epoch2)
    assert f"dev_acc={result.history[1].dev_accuracy:.4f}" in epoch2[-1]

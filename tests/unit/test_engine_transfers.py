"""Host <-> device traffic of one engine call: on a GPU every copy back is a wait for the device,
and a copy in from pageable memory another, so a batch copies its logits back once and each
stage copies its host data (tokens and lengths; gather indices and readouts) in once."""
import pytest
import torch

import lpt.engine as engine_module
import lpt.forward as forward_module
from lpt import Engine, Row, new_adapter
from tiny import make_backbone, random_texts

pytestmark = pytest.mark.unit


def test_a_batch_copies_back_once_and_each_stage_copies_in_once(monkeypatch):
    bb = make_backbone("bert")
    adapters = []
    for i in range(6):
        torch.manual_seed(i)
        adapters.append(new_adapter(bb, task=f"t{i}", labels=[f"c{j}" for j in range(2 + i % 3)], layer=1 + i % 3,
                                    prompt_length=1 + i, generator=("npg", "max", "avg", "static")[i % 4]).eval())
    rows = [Row(adapters[i % 6], t) for i, t in enumerate(random_texts(36, seed=7, lo=1, hi=40))]
    engine = Engine(bb, cache_entries=0, min_bucket_rows=4)
    expected = engine.logits(rows)
    buckets = len(engine.buckets(engine.encode(rows)[0]))
    assert buckets >= 3                       # several buckets, each with several adapters

    to_device, copies_in = forward_module.to_device, []
    monkeypatch.setattr(forward_module, "to_device", lambda t, d: copies_in.append(t.numel()) or to_device(t, d))
    monkeypatch.setattr(engine_module, "to_device", forward_module.to_device)
    cpu, copies_back = torch.Tensor.cpu, []
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies_back.append(self.shape) or cpu(self, *a, **k))
    new_tensor, built_on_device = torch.tensor, []

    def tensor(*a, **k):
        if k.get("device") is not None:
            built_on_device.append(k["device"])
        return new_tensor(*a, **k)
    monkeypatch.setattr(torch, "tensor", tensor)

    got = engine.logits(rows)
    assert len(copies_back) == 1, f"{len(copies_back)} copies back for one batch: {copies_back}"
    # per bucket: tokens + lengths; gather indices + readouts; the late pass's row data (these
    # adapters' prompt lengths differ)
    assert len(copies_in) == 3 * buckets
    assert not built_on_device                # no tensor made from host data straight on the device
    for a, b in zip(got, expected):
        assert torch.equal(a, b)

"""int8 serving (`--dtype int8`): each linear layer of the blocks is an int8 product with a scale
per weight row and per token. Checked against a product quantized by hand in float64, for
independence from the batch (a per-batch scale would fail it), and end to end: the engine on an
int8 model equals the one-row reference forward run on that same model, stays close to float32
and is not float32."""
import pytest
import torch
from torch import nn

import lpt.quantize as quantize
from lpt import Engine, Row, new_adapter
from lpt.backbone import FAMILIES, Backbone, ModelLoadError
from lpt.quantize import INT8, Int8Linear, weight_range
from reference_forward import reference_logits
from tiny import make_backbone, own_twin, random_texts, save_backbone

pytestmark = pytest.mark.unit


def linear(seed: int = 0, n_in: int = 48, n_out: int = 40) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


def by_hand(lin: nn.Linear, x: torch.Tensor, weight_max: int = 127) -> torch.Tensor:
    """Symmetric int8 with a scale per weight row and per row of x, in float64."""
    w, x = lin.weight.double(), x.double()
    ws = w.abs().amax(1, keepdim=True) / weight_max
    xs = x.abs().amax(1, keepdim=True) / 127
    return (torch.round(x / xs) * xs) @ (torch.round(w / ws) * ws).T + lin.bias.double()


def test_the_product_is_the_hand_quantized_one_and_not_the_float_one():
    lin = linear()
    x = torch.randn(9, 48) * torch.logspace(-2, 2, 9)[:, None]   # rows of very different sizes
    got = Int8Linear.of(lin)(x)
    want = by_hand(lin, x)
    assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()
    assert (got - lin(x)).abs().max() > 1e-4 * lin(x).abs().max()     # int8 really ran: not the float product
    assert torch.allclose(got, lin(x), rtol=0.05, atol=0.05 * lin(x).abs().max().item())


def test_a_rows_answer_does_not_depend_on_the_rows_beside_it():
    q = Int8Linear.of(linear(1))
    row = torch.randn(1, 48)
    loud = torch.randn(5, 48) * 100                 # would widen a per-batch scale 100-fold
    alone = q(row)
    assert torch.equal(q(torch.cat([loud[:2], row, loud[2:]]))[2:3], alone)
    assert torch.equal(q(torch.cat([row, loud]).reshape(2, 3, 48)).reshape(6, -1)[:1], alone)   # any leading shape


def test_gpt2s_conv1d_is_the_same_product():
    lin = linear(2)
    conv = quantize.Conv1D(40, 48)
    conv.weight.data, conv.bias.data = lin.weight.data.T.clone(), lin.bias.data.clone()
    x = torch.randn(4, 48)
    assert torch.equal(Int8Linear.of(conv)(x), Int8Linear.of(lin)(x))
    assert Int8Linear.of(nn.LayerNorm(4)) is None


@pytest.mark.parametrize("own", [False, True], ids=["transformers", "own-modules"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_linear_layer_of_the_blocks_and_nothing_else_turns_int8(family, own, tmp_path):
    float_bb, bb = make_backbone(family), make_backbone(family)
    if own:                      # as a server loads it: lpt's own modules (GPT-2: its own Conv1D)
        bb = own_twin(bb, tmp_path / "model")
    assert bb.to_int8() is bb and bb.precision == INT8 and bb.dtype == torch.float32
    per_block = {"gpt2": 4}.get(family, 6)        # q, k, v, out, up, down (GPT-2: c_attn, c_proj, c_fc, c_proj)
    assert sum(isinstance(m, Int8Linear) for m in bb.layers.modules()) == per_block * bb.num_layers
    assert not any(isinstance(m, (nn.Linear, quantize.Conv1D, quantize.OwnConv1D)) for m in bb.layers.modules())
    outside = [m for name, m in bb.model.named_modules() if not name.startswith(_blocks_path(bb))]
    assert not any(isinstance(m, Int8Linear) for m in outside)
    assert bb.fingerprint() == float_bb.fingerprint()      # adapters trained on the float model still load


def _blocks_path(bb) -> str:
    return next(name for name, m in bb.model.named_modules() if m is bb.layers)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_the_engine_on_an_int8_model_equals_the_reference_forward_on_it(family):
    """One mixed batch: each row as the one-row reference (the model's own blocks, now int8)
    computes it; float32 answers differ from int8 by far more than that, and not by much."""
    float_bb = make_backbone(family, init_range=0.1)
    bb = make_backbone(family, init_range=0.1).to_int8()
    torch.manual_seed(0)
    specs = [dict(layer=1, prompt_length=4, generator="npg"), dict(layer=2, prompt_length=2, generator="avg",
                                                                   pooling="mean")]
    adapters = [new_adapter(float_bb, task=f"t{i}", labels=["a", "b", "c"], **s).eval() for i, s in enumerate(specs)]
    texts = random_texts(8, seed=3, lo=1, hi=25)
    rows = [Row(adapters[i % 2], t) for i, t in enumerate(texts)]
    got = Engine(bb, cache_entries=0).logits(rows)
    ref = [reference_logits(bb, r.adapter, r.text) for r in rows]
    floats = Engine(float_bb, cache_entries=0).logits(rows)
    for g, r, f in zip(got, ref, floats):
        assert (g - r).abs().max() < 1e-4
        assert 1e-3 < (g - f).abs().max() < 0.1 * f.abs().max() + 0.05


def u8_s8_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """An int8 product as x86 CPUs without VNNI compute it: a + 128 as u8, pairs of u8 x s8
    products summed in saturating 16 bits, then the 128 * sum(b) taken back."""
    u, w = (a.long() + 128), b.long()
    k = u.shape[1] - u.shape[1] % 2
    pairs = (u[:, 0:k:2, None] * w[None, 0:k:2] + u[:, 1:k:2, None] * w[None, 1:k:2]).clamp(-(1 << 15), (1 << 15) - 1)
    out = pairs.sum(1) + (u[:, k:, None] * w[None, k:]).sum(1) - 128 * w.sum(0)
    return out.int()


def test_without_vnni_weights_get_7_bits_and_stay_exact(monkeypatch):
    assert weight_range() is not None     # on this machine's CPU: the int8 tests above rely on it
    monkeypatch.setattr(torch, "_int_mm", u8_s8_pairs)
    assert weight_range() == 63
    bb = make_backbone("bert").to_int8()
    q = bb.layers[0].intermediate.dense
    assert q.weight_t.abs().max() == 63
    torch.manual_seed(4)
    lin, x = linear(3), torch.randn(6, 48) * 10
    got = Int8Linear.of(lin, 63)(x)
    assert (got.double() - by_hand(lin, x, 63)).abs().max() < 1e-5 * got.abs().max()


def test_the_check_runs_at_the_models_own_shapes(monkeypatch):
    """A kernel chosen by shape (here: one that saturates only for inputs of 1,000 or more) is
    found at the layer's shape, not at the small shapes alone."""
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: u8_s8_pairs(a, b) if a.shape[1] >= 1000 else real(a, b))
    assert weight_range() == 127
    assert weight_range([(384, 1536)]) == 127 and weight_range([(1536, 384)]) == 63
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: u8_s8_pairs(a, b) if a.shape[1] == 64 else real(a, b))
    bb = make_backbone("bert").to_int8()                  # the tiny model's FFN down-projection takes 64
    assert max(int(m.weight_t.abs().max()) for m in bb.layers.modules() if isinstance(m, Int8Linear)) == 63


def test_int8_refuses_where_it_cannot_be_exact(monkeypatch):
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: u8_s8_pairs(a, b) + (a[:, :1].int() == 127).int())
    assert weight_range() is None
    with pytest.raises(ValueError, match="int8 is not available here.*float32"):
        make_backbone("bert").to_int8()


def test_int8_quantizes_only_a_float32_model():
    bb = make_backbone("bert").to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32 model on a CPU, not bfloat16"):
        bb.to_int8()


def test_loading_in_int8_says_in_one_line_why_it_cannot(tmp_path, monkeypatch):
    """`--dtype int8` loads a float32 checkpoint and quantizes it; on a GPU, or where this CPU's
    int8 product is not exact, the load fails with a message (the server prints it, no traceback)."""
    path = save_backbone(make_backbone("bert"), tmp_path / "tiny")
    assert Backbone.load(path, dtype="int8").precision == INT8
    with pytest.raises(ModelLoadError, match="runs on a CPU only; on cuda use bfloat16 or float16"):
        Backbone.load(path, device="cuda", dtype="int8")
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32))
    with pytest.raises(ModelLoadError, match="in int8: int8 is not available here"):
        Backbone.load(path, dtype="int8")

"""Split forward without a prompt == the model's own forward, for every row of the family table."""
import pytest
import torch

from lpt.backbone import FAMILIES as TABLE, PACK_ROWS, Backbone, Packing
from lpt.forward import lower_pass, pad_tokens
from tiny import SPECIALS, make_backbone, random_texts

pytestmark = pytest.mark.unit
FAMILIES = sorted(TABLE)


def test_every_row_of_the_family_table_has_its_own_tiny_model():
    assert {"bert", "roberta", "distilbert", "electra", "gpt2"} <= set(FAMILIES)
    for family in FAMILIES:
        bb = make_backbone(family)
        assert bb.config.model_type == family and bb.spec is TABLE[family]


def _tokens(bb, texts, pairs=None):
    encs = [bb.tokenizer(t, p) for t, p in zip(texts, pairs or [None] * len(texts))]
    types = [tuple(e["token_type_ids"]) if "token_type_ids" in e else None for e in encs]
    return pad_tokens([tuple(e["input_ids"]) for e in encs], types, bb.pad_id, bb.device)


def distinct_norms(bb):
    """Every LayerNorm unlike the others (a tiny model's all start at weight 1, bias 0, so a norm
    used in another's place would go unseen)."""
    torch.manual_seed(4)
    with torch.no_grad():
        for m in bb.model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return bb


def reference(bb, tokens, head: bool = False) -> torch.Tensor:
    """The model's own forward on the batch: last hidden states, or the LM head's logits."""
    kwargs = dict(input_ids=tokens.input_ids, attention_mask=tokens.valid.long())
    if tokens.token_type_ids is not None:
        kwargs["token_type_ids"] = tokens.token_type_ids
    with torch.no_grad():
        return bb.model(**kwargs).logits if head else bb.base(**kwargs).last_hidden_state


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_split_forward_equals_model_forward(family, attn):
    bb = distinct_norms(make_backbone(family, attn=attn))
    texts = random_texts(6, seed=1)
    pairs = random_texts(6, seed=2) if family != "gpt2" else None
    tokens = _tokens(bb, texts, pairs)
    assert not tokens.valid.all(), "the batch must contain padding"
    ref = reference(bb, tokens)
    with torch.no_grad():
        whole = bb.final_norm(lower_pass(bb, tokens, {bb.num_layers})[bb.num_layers])
        for k in range(bb.num_layers + 1):
            h = lower_pass(bb, tokens, {k})[k]
            split = bb.final_norm(bb.run_layers(h, tokens.valid, k, bb.num_layers))
            diff = (split - ref)[tokens.valid].abs().max().item()
            assert diff < 1e-5, f"{family} split at {k}: max diff {diff}"
    assert (whole - ref)[tokens.valid].abs().max().item() < 1e-5


@pytest.mark.parametrize("family", [f for f in FAMILIES if TABLE[f].packed_block is not None])
def test_on_a_cpu_the_linear_layers_see_the_real_tokens_packed_unless_the_model_trains(family):
    """The test above checks the packed blocks against the model's own forward; this one checks
    that they are what runs, on the real tokens and the few zero rows that round their count (and
    that training, which needs dropout, runs the model's blocks)."""
    bb = make_backbone(family)
    tokens = _tokens(bb, random_texts(6, seed=4))
    inputs, block_calls = [], []
    first_linear = next(m for m in bb.layers[1].modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda m, args, out: inputs.append(tuple(args[0].shape)))
    bb.layers[1].register_forward_hook(lambda m, args, out: block_calls.append(m))
    with torch.no_grad():
        h = bb.embed(tokens.input_ids, tokens.token_type_ids)
        bb.run_layers(h, tokens.valid, 0, bb.num_layers)
        real = int(tokens.valid.sum())
        assert inputs == [(-(-real // PACK_ROWS) * PACK_ROWS, bb.hidden_size)] and not block_calls
        bb.model.train()
        bb.run_layers(h, tokens.valid, 0, bb.num_layers)
    assert inputs[1] == tuple(h.shape) and len(block_calls) == 1


def test_packing_takes_every_real_token_then_zero_rows_up_to_a_multiple_of_pack_rows():
    assert PACK_ROWS == 16                                               # the numbers below
    valid = torch.zeros(4, 10, dtype=torch.bool)
    valid[0, :10], valid[1, :2], valid[2, :5] = True, True, True         # 17 real tokens of 40
    p = Packing.of(valid, bias=None)
    h = torch.randn(4, 10, 3)
    x = p.pack(h)
    assert x.shape == (32, 3) and p.rows == 32
    assert torch.equal(x[:17], h[valid]) and not x[17:].any()            # the real tokens in order, then zeros
    back = p.pad(x + 1)
    assert torch.equal(back[valid], h[valid] + 1) and not back[~valid].any()   # zero rows dropped, padding zero
    assert Packing.of(valid, bias=None, multiple=1).pack(h).shape == (17, 3)
    full = torch.ones(1, 5, dtype=torch.bool)                            # no padding at all: still rounded
    assert Packing.of(full, bias=None).pack(torch.randn(1, 5, 3)).shape == (16, 3)


def test_a_model_with_relative_positions_runs_its_own_blocks():
    bb = make_backbone("bert")
    assert bb.packed_block is not None
    bb.config.position_embedding_type = "relative_key"      # what older BERT configs may carry
    assert Backbone(bb.model, bb.tokenizer).packed_block is None


@pytest.mark.parametrize("family", FAMILIES)
def test_label_scores_equal_full_lm_logits(family):
    bb = make_backbone(family)
    tokens = _tokens(bb, random_texts(3, seed=3))
    with torch.no_grad():
        h = bb.final_norm(lower_pass(bb, tokens, {bb.num_layers})[bb.num_layers])
        full = reference(bb, tokens, head=True)              # [B, T, V]
        ids = torch.tensor([5, 7, 11])
        ours = bb.label_scores(h[:, 1], ids)
    assert (ours - full[:, 1][:, ids]).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_max_positions_is_exactly_what_the_embeddings_take(family):
    bb = make_backbone(family)
    n = bb.max_positions
    with torch.no_grad():
        assert bb.embed(torch.full((1, n), 5)).shape[:2] == (1, n)
        with pytest.raises((IndexError, RuntimeError)):
            bb.embed(torch.full((1, n + 1), 5))


def test_pad_id_is_the_pad_token_or_the_family_fallback():
    for family in FAMILIES:
        bb = make_backbone(family)
        pad, eos = SPECIALS[family][0], SPECIALS[family][3]
        assert bb.pad_id == bb.tokenizer.convert_tokens_to_ids(pad or eos)   # GPT-2 has no pad token: eos
    assert make_backbone("gpt2").pad_id != 0


def test_the_engine_and_the_training_methods_pad_with_pad_id(monkeypatch):
    import lpt.engine
    from lpt import Engine, Row, new_adapter
    from lpt.methods import build_method

    bb = make_backbone("gpt2")
    texts = ["great film", "a very boring plot"]
    seen = []
    real = lpt.engine.lower_pass
    monkeypatch.setattr(lpt.engine, "lower_pass", lambda b, tokens, stops: seen.append(tokens) or real(b, tokens, stops))
    Engine(bb, max_padding=None).logits([Row(new_adapter(bb, task="t", labels=["a", "b"], layer=2), t) for t in texts])
    method = build_method(bb, "lpt", task="t", labels=["a", "b"])
    assert len(seen) == 1
    for tokens in seen + [method._tokens(method.encode([(t, None) for t in texts]))]:
        assert not tokens.valid.all() and (tokens.input_ids[~tokens.valid] == bb.pad_id).all()


def test_base_model_without_lm_head_refuses_label_scores():
    bb = make_backbone("bert", lm_head=False)
    assert not bb.has_lm_head
    with pytest.raises(ValueError, match="no LM head"):
        bb.label_scores(torch.zeros(1, bb.hidden_size), torch.tensor([1]))


def test_fingerprint_tells_weights_apart_and_tolerates_bf16():
    from lpt.backbone import fingerprint_problems
    a, b = make_backbone("bert", seed=0), make_backbone("bert", seed=1)
    assert fingerprint_problems(a.fingerprint(), a.fingerprint()) == []
    assert any("weights differ" in p for p in fingerprint_problems(a.fingerprint(), b.fingerprint()))
    half = make_backbone("bert", seed=0)
    half.model.to(torch.bfloat16)
    half._fingerprint = None
    assert fingerprint_problems(a.fingerprint(), half.fingerprint()) == []
    other = make_backbone("bert", layers=3)
    assert any("num_layers" in p for p in fingerprint_problems(a.fingerprint(), other.fingerprint()))


def test_auto_dtype_is_bf16_only_where_it_is_fast(monkeypatch):
    from lpt import backbone

    assert backbone.resolve_dtype("float16", "cuda") == "float16"       # explicit names pass through
    monkeypatch.setattr(backbone, "cpu_has_amx", lambda: True)
    assert backbone.resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(backbone, "cpu_has_amx", lambda: False)
    assert backbone.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert backbone.resolve_dtype("auto", "cuda:1") == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert backbone.resolve_dtype("auto", "cuda") == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        backbone.Backbone.load("no/such-model", dtype="int4")     # checked before the model is looked for

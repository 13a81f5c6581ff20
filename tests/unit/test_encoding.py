"""Tokenization per adapter: templates survive truncation; batched equals one by one."""
import pytest

from lpt import new_adapter
from tiny import make_backbone, random_texts

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bb():
    return make_backbone("bert")


def test_long_text_is_cut_but_the_template_and_mask_survive(bb):
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, head_kind="mlm",
                    template="{text} . it was {mask} .", label_words=["bad", "great"], max_length=16)
    enc = a.encoder.encode(" ".join(["film"] * 100))
    assert len(enc.input_ids) <= 16
    assert enc.input_ids[enc.readout] == bb.tokenizer.mask_token_id
    tail = bb.tokenizer.convert_ids_to_tokens(list(enc.input_ids[-6:]))
    assert tail == [".", "it", "was", "[MASK]", ".", "[SEP]"]


@pytest.mark.parametrize("template", [None, "{text} . it was {mask} .", "{text} [SEP] {text_pair} {mask}"])
def test_batched_encoding_equals_one_by_one(bb, template):
    kwargs = dict(head_kind="mlm", template=template, label_words=["bad", "great"]) if template else {}
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, max_length=24, **kwargs)
    texts = random_texts(12, seed=3, lo=1, hi=40)
    pairs = random_texts(12, seed=4, lo=1, hi=30) if template is None or "{text_pair}" in template else [None] * 12
    items = [(t, p if i % 2 else None) for i, (t, p) in enumerate(zip(texts, pairs))]
    batched = a.encoder.encode_many(items)
    for item, got in zip(items, batched):
        assert got == a.encoder.encode(*item)
        assert len(got.input_ids) <= 24


def test_pairs_get_token_types_and_both_segments(bb):
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1)
    enc = a.encoder.encode("great film", "bad plot")
    assert enc.token_type_ids is not None and set(enc.token_type_ids) == {0, 1}
    assert enc.readout == 0


def test_pair_for_a_single_text_template_fails_that_row_only(bb):
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, head_kind="mlm", template="{text} {mask}",
                    label_words=["bad", "great"])
    out = a.encoder.encode_many([("fine", None), ("x", "y")])
    assert not isinstance(out[0], Exception)
    assert isinstance(out[1], ValueError) and "{text_pair}" in str(out[1])

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


def test_a_text_is_tokenized_once_and_its_cut_is_known(bb, monkeypatch):
    """Texts under, at and over the token limit (alone and with pairs): `truncated` is true for
    the cut ones only, what the fast tokenizer's overflow says, as tokenizing them whole would;
    and the texts are tokenized in one call, not again to find the cut ones."""
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1)
    limit = 8
    words = random_texts(1, seed=5, lo=30, hi=31)[0].split()
    items = [(" ".join(words[:n]), None) for n in (3, limit, limit + 1, 20)]
    items += [(" ".join(words[:2]), " ".join(words[:3])), (" ".join(words[:5]), " ".join(words[:9]))]
    calls = []
    real_call = type(bb.tokenizer).__call__
    monkeypatch.setattr(type(bb.tokenizer), "__call__", lambda self, *x, **k: calls.append(k) or real_call(self, *x, **k))
    got = a.encoder.encode_many(items, max_text_tokens=limit)
    assert len(calls) == 2                       # one call for the single texts, one for the pairs
    monkeypatch.undo()
    whole = [len(bb.tokenizer(t, p, add_special_tokens=False)["input_ids"]) for t, p in items]
    assert [e.truncated for e in got] == [n > limit for n in whole]
    assert [e.truncated for e in got] == [False, False, True, True, False, True]


def _whole(tok, texts, limit):
    """The reference: each text tokenized whole, truncated to limit, and whether it was cut."""
    return [(tuple(tok(t, truncation=True, max_length=limit)["input_ids"]), len(tok(t)["input_ids"]) > limit)
            for t in texts]


def long_texts(words: list[str], seed: int) -> list[str]:
    """Texts well past the prefix bound: plain ones, one with a long unbroken run where the
    kept tokens end (the prefix cannot decide it), one whose words are all long."""
    import random

    rng = random.Random(seed)
    plain = [" ".join(rng.choice(words) for _ in range(rng.randint(60, 400))) for _ in range(8)]
    unbroken = " ".join(words[:3]) + " " + "x" * 300 + " " + " ".join(words[:50])
    wide = " ".join(rng.choice(words) * 6 for _ in range(200))
    return plain + [unbroken, wide, "short one"]


def test_a_long_text_is_tokenized_from_a_prefix_when_that_gives_what_the_whole_gives(bb, monkeypatch):
    from lpt.encoding import PREFIX_CHARS_PER_TOKEN

    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1)
    limit = 12
    texts = long_texts(random_texts(1, seed=6, lo=200, hi=201)[0].split(), seed=6)
    seen = []
    real_call = type(bb.tokenizer).__call__
    monkeypatch.setattr(type(bb.tokenizer), "__call__",
                        lambda self, x, *r, **k: seen.append(max(map(len, x)) if isinstance(x, list) else len(x))
                        or real_call(self, x, *r, **k))
    got = a.encoder.encode_many([(t, None) for t in texts], max_text_tokens=limit - 2)
    monkeypatch.undo()
    assert seen[0] <= limit * PREFIX_CHARS_PER_TOKEN       # the first call saw prefixes only
    assert len(seen) == 2 and seen[1] > limit * PREFIX_CHARS_PER_TOKEN   # one text needed its whole
    assert [(e.input_ids, e.truncated) for e in got] == _whole(bb.tokenizer, texts, limit)


@pytest.mark.parametrize("template", [None, "{text} . it was {mask} .", "{text} [SEP] {text_pair} {mask}"])
def test_a_text_the_tokenizer_reads_nothing_of_fails_alone(bb, template):
    """Special tokens (and a template) alone are no text: classifying them would answer for an
    empty input. Such a row gets its error; the rows beside it are encoded."""
    kwargs = dict(head_kind="mlm", template=template, label_words=["bad", "great"]) if template else {}
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, max_length=24, **kwargs)
    pair = "" if template is None or "{text_pair}" in template else None
    out = a.encoder.encode_many([("great film", None), ("", None), ("", pair)])
    assert not isinstance(out[0], Exception)
    for got in out[1:]:
        assert isinstance(got, ValueError) and "no characters this model's tokenizer reads" in str(got)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_special_tokens_typed_in_a_text_are_words(family):
    """"[SEP]" in a text must not split it into a pair, "[CLS]" not restart it: a user's text is
    tokenized with its special tokens' strings split (the reference: the tokenizer's own
    split_special_tokens), and the rows beside it are unchanged."""
    bb = make_backbone(family)
    tok = bb.tokenizer
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, max_length=24)
    text = f"great {tok.sep_token} film {tok.cls_token} {tok.mask_token} {tok.pad_token}"
    got = a.encoder.encode(text)
    assert list(got.input_ids) == tok(text, split_special_tokens=True)["input_ids"]
    specials = set(tok.all_special_ids) - {tok.unk_token_id}       # the tiny vocabulary reads "[" as unknown
    assert sum(i in specials for i in got.input_ids) == 2          # the row's own two
    plain = a.encoder.encode("great film")
    assert list(plain.input_ids) == tok("great film")["input_ids"]
    pair = a.encoder.encode("great", f"bad {tok.sep_token} plot")
    assert list(pair.input_ids) == tok("great", f"bad {tok.sep_token} plot", split_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_mask_typed_in_a_text_never_becomes_the_readout(family):
    """An mlm head reads the template's mask: a user's "[MASK]" (or "<mask>") earlier in the text
    took its place, and the answer was read at the user's token."""
    bb = make_backbone(family)
    tok = bb.tokenizer
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, head_kind="mlm", max_length=24,
                    template="{text} . it was {mask} .", label_words=["bad", "great"])
    for text in (f"a {tok.mask_token} film", f"{tok.mask_token} " * 40):          # the second is cut
        got = a.encoder.encode(text)
        assert list(got.input_ids).count(tok.mask_token_id) == 1
        assert got.input_ids[got.readout] == tok.mask_token_id
        tail = tok.convert_ids_to_tokens(list(got.input_ids[-6:]))
        assert tail[:4] == [".", "it", "was", tok.mask_token], tail    # the template's own mask
        assert len(got.input_ids) <= 24
    assert a.encoder.encode(f"{tok.mask_token} " * 40).truncated
    # the template's own special tokens stay special
    b = new_adapter(bb, task="t", labels=["n", "p"], layer=1, head_kind="mlm", max_length=24,
                    template="{text} " + tok.sep_token + " {text_pair} {mask}", label_words=["bad", "great"])
    got = b.encoder.encode("film", f"plot {tok.sep_token}")
    assert list(got.input_ids).count(tok.sep_token_id) == 2                  # the template's and the end


def test_placeholders_in_a_text_are_not_filled():
    """The template is filled in one pass: a pair holding "{text}" or "{mask}" is those words,
    not the text again or a second mask."""
    bb = make_backbone("bert")
    tok = bb.tokenizer
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, head_kind="mlm", max_length=32,
                    template="{text} ? {mask} , {text_pair}", label_words=["bad", "great"])
    got = tok.convert_ids_to_tokens(list(a.encoder.encode("film", "{text} {mask} {text_pair}").input_ids))
    assert got.count("film") == 1 and got.count(tok.mask_token) == 1, got
    assert got == tok.convert_ids_to_tokens(tok("film ? [MASK] , {text} {mask} {text_pair}")["input_ids"])


@pytest.mark.parametrize("seed", range(4))
def test_a_cut_text_keeps_its_first_tokens_as_the_text_alone_gives_them(bb, seed):
    """The text's slot holds the first tokens of the text, as many as the budget allows."""
    a = new_adapter(bb, task="t", labels=["n", "p"], layer=1, head_kind="mlm",
                    template="{text} . it was {mask} .", label_words=["bad", "great"], max_length=16)
    text = random_texts(1, seed=seed, lo=60, hi=80)[0]
    enc = a.encoder.encode(text)
    alone = bb.tokenizer(text, add_special_tokens=False)["input_ids"]
    kept = list(enc.input_ids[1:-6])                       # [CLS] text . it was [MASK] . [SEP]
    assert enc.truncated and len(enc.input_ids) == 16
    assert kept == alone[:len(kept)] and len(kept) == 16 - 7

"""The adapter file: bit-exact round trip, and validation that lists every problem at once."""
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from lpt import AdapterError, load_adapter, new_adapter, read_adapter, save_adapter, validate
from lpt.adapter import CONFIG_KEY, adapter_bytes
from tiny import make_backbone

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bb():
    return make_backbone("bert")


@pytest.fixture
def module(bb):
    torch.manual_seed(0)
    return new_adapter(bb, task="sentiment", labels=["neg", "pos"], layer=2, prompt_length=5)


def _rewrite(data: bytes, tensors=None, config_edit=None) -> bytes:
    f = read_adapter(data)
    cfg = json.loads(f.config.to_json())
    if config_edit:
        config_edit(cfg)
    return st_save(tensors if tensors is not None else f.tensors, metadata={CONFIG_KEY: json.dumps(cfg)})


def test_round_trip_is_bit_exact(bb, module, tmp_path):
    path = tmp_path / "a.safetensors"
    version = save_adapter(module, path)
    loaded = load_adapter(path, bb)
    assert loaded.version == version and len(version) == 64
    assert loaded.config == module.config
    for (k, a), (k2, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert adapter_bytes(loaded) == path.read_bytes()
    assert not list(tmp_path.glob(".*tmp"))      # no temporary file left behind


def test_loading_never_unpickles(bb, tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(AdapterError, match="pickle"):
        load_adapter(path, bb)
    zipfile = tmp_path / "torch.safetensors"
    torch.save({"w": torch.zeros(2)}, zipfile)
    with pytest.raises(AdapterError, match="pickle"):
        load_adapter(zipfile, bb)


def test_truncated_file_is_refused(bb, module):
    data = adapter_bytes(module)
    for cut in (4, 100, len(data) - 10):
        with pytest.raises(AdapterError) as e:
            load_adapter(data[:cut], bb)
        assert "truncated" in str(e.value) or "too short" in str(e.value)


def test_not_an_adapter(bb):
    with pytest.raises(AdapterError, match="no 'lpt.config'"):
        read_adapter(st_save({"w": torch.zeros(2)}))
    with pytest.raises(AdapterError, match="not JSON|header"):
        read_adapter(struct.pack("<Q", 5) + b"hello world")


def test_validation_lists_every_problem_at_once(bb, module):
    data = adapter_bytes(module)
    tensors = dict(read_adapter(data).tensors)
    tensors.pop("generator.down.bias")                                   # missing
    tensors["generator.extra"] = torch.zeros(3)                           # extra
    tensors["generator.up.weight"] = torch.zeros(7, 7)                    # misshaped

    def edit(cfg):
        cfg["layer"] = 9                                                  # k outside the model
        cfg["base_model"]["weights_sample"] = [x + 1 for x in cfg["base_model"]["weights_sample"]]

    with pytest.raises(AdapterError) as e:
        load_adapter(_rewrite(data, tensors, edit), bb)
    text = "\n".join(e.value.problems)
    for needle in ("missing tensor 'generator.down.bias'", "unexpected tensor 'generator.extra'",
                   "'generator.up.weight' has shape [7, 7]", "layer (k) is 9", "weights differ"):
        assert needle in text, f"{needle!r} not in {text}"


def test_nan_and_inf_are_refused(bb, module):
    data = adapter_bytes(module)
    tensors = dict(read_adapter(data).tensors)
    tensors["generator.down.weight"] = tensors["generator.down.weight"].clone()
    tensors["generator.down.weight"][0, 0] = float("nan")
    tensors["head.linear.bias"] = torch.tensor([float("inf"), 0.0])
    with pytest.raises(AdapterError) as e:
        load_adapter(_rewrite(data, tensors), bb)
    assert sum("NaN or Inf" in p for p in e.value.problems) == 2


def test_other_hidden_size_and_other_base_model(module):
    data = adapter_bytes(module)
    wider = make_backbone("bert", layers=3)          # other layer count
    problems = validate(read_adapter(data), wider)
    assert any("num_layers" in p for p in problems)
    other = make_backbone("bert", seed=7)            # same shape, other weights
    assert any("weights differ" in p for p in validate(read_adapter(data), other))
    gpt = make_backbone("gpt2")
    assert any("model_type" in p for p in validate(read_adapter(data), gpt))


def test_hidden_size_mismatch_reports_shapes(bb, module):
    from transformers import BertConfig, BertForMaskedLM

    from lpt import Backbone
    cfg = BertConfig(vocab_size=len(bb.tokenizer), hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    wide = Backbone(BertForMaskedLM(cfg), bb.tokenizer, "tiny-wide")
    problems = validate(read_adapter(adapter_bytes(module)), wide)
    assert any("hidden_size is 48" in p for p in problems)
    assert any("expected [" in p and "hidden size 48" in p for p in problems)


def test_bad_config_and_size_limit(bb, module):
    data = adapter_bytes(module)

    def edit(cfg):
        cfg["labels"] = ["only-one"]
        cfg["generator"] = "lstm"
        cfg["surprise"] = 1

    with pytest.raises(AdapterError) as e:
        read_adapter(_rewrite(data, config_edit=edit))
    assert "unknown config key 'surprise'" in e.value.problems
    assert validate(read_adapter(data), bb, max_bytes=100)[0].startswith(f"adapter is {len(data)} bytes")


def test_multi_token_label_words_are_a_clear_error(bb):
    for words, why in ((["great", "bad."], "'bad.' -> ['bad', '.']"), (["great", "zzz"], "not in the vocabulary")):
        with pytest.raises(ValueError, match="single tokens") as e:
            new_adapter(bb, task="t", labels=["a", "b"], layer=1, head_kind="mlm", template="{text} {mask}",
                        label_words=words)
        assert why in str(e.value)


def test_mlm_head_needs_an_lm_head():
    bare = make_backbone("bert", lm_head=False)
    with pytest.raises(AdapterError, match="needs a model with an LM head"):
        new_adapter(bare, task="t", labels=["a", "b"], layer=1, head_kind="mlm", template="{text} {mask}",
                    label_words=["great", "bad"])

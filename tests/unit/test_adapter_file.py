"""The adapter file: bit-exact round trip, and validation that lists every problem at once."""
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from lpt import AdapterError, load_adapter, new_adapter, read_adapter, save_adapter, validate
from lpt.adapter import CONFIG_KEY, adapter_bytes, tensor_bytes
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


# ---- untrusted files: a typed schema with bounds, checked before anything is allocated ------
def _raw_file(header: object, body: bytes = b"") -> bytes:
    """A safetensors-shaped file with any JSON header (st_save only writes valid ones)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _with_config(data: bytes, cfg: object) -> bytes:
    header, body = _split(data)
    header["__metadata__"] = {CONFIG_KEY: cfg if isinstance(cfg, str) else json.dumps(cfg)}
    return _raw_file(header, body)


def _outcome(data: bytes, bb) -> list[str]:
    """Every problem read_adapter + validate find; anything but AdapterError propagates."""
    try:
        af = read_adapter(data)
    except AdapterError as e:
        return e.problems
    problems = validate(af, bb)
    assert isinstance(problems, list)
    return problems


BAD = ["text", "", None, [1], {"a": 1}, 10 ** 30, -1, 2.5, float("inf"), True, [[[[[[[[[[1]]]]]]]]]], "x" * 100_000]
# the mutations above that are genuinely fine for a field
FINE = [("task", "text"), ("template", None), ("label_words", None), ("base_model.id", "text"),
        ("base_model.weights_sha256", "text")]


def test_fuzz_every_config_field_with_wrong_values(bb, module):
    data = adapter_bytes(module)
    cfg = json.loads(module.config.to_json())
    assert _outcome(data, bb) == []
    mutations = [(k, v) for k in cfg if k != "base_model" for v in BAD]
    mutations += [(f"base_model.{k}", v) for k in cfg["base_model"] for v in BAD + [{"nested": [1, 2]}]]
    mutations += [(k, v) for k in ("base_model",) for v in BAD]
    for key, value in mutations:
        edited = json.loads(json.dumps(cfg))
        where, _, sub = key.partition(".")
        (edited[where] if sub else edited)[sub or key] = value
        bad = _with_config(data, edited)
        problems = _outcome(bad, bb)
        if any(key == k and value == v and type(value) is type(v) for k, v in FINE):
            assert problems == [], (key, value, problems)
            load_adapter(bad, bb)
        else:
            assert problems, f"{key}={value!r} was accepted"
            assert all(isinstance(p, str) and len(p) < 400 for p in problems), problems
            with pytest.raises(AdapterError):
                load_adapter(bad, bb)
    for required in ("task", "labels", "layer", "base_model", "base_model.hidden_size", "base_model.weights_sample"):
        edited = json.loads(json.dumps(cfg))
        where, _, sub = required.partition(".")
        del (edited[where] if sub else edited)[sub or required]
        assert any("is missing" in p for p in _outcome(_with_config(data, edited), bb)), required


def test_fuzz_header_and_metadata_with_wrong_values(bb, module):
    data = adapter_bytes(module)
    header, body = _split(data)
    name = next(k for k in header if k != "__metadata__")
    files = [_raw_file(v, body) for v in BAD] + [_with_config(data, v) for v in BAD if not isinstance(v, str)]
    files += [_raw_file({**header, "__metadata__": v}, body) for v in BAD]
    files += [_raw_file({**header, "__metadata__": {CONFIG_KEY: v}}, body) for v in BAD]
    for field in ("dtype", "shape", "data_offsets"):
        files += [_raw_file({**header, name: {**header[name], field: v}}, body) for v in BAD]
        files.append(_raw_file({**header, name: {k: v for k, v in header[name].items() if k != field}}, body))
    files += [_raw_file({**header, name: v}, body) for v in BAD]
    for f in files:
        assert _outcome(f, bb), f[:200]


@pytest.mark.parametrize("case,words", [
    ("deep header", "nests 100000 levels deep"),
    ("deep config", "lpt.config nests 50000 levels deep"),
    ("metadata number", "__metadata__ must be an object of strings"),
    ("metadata list", "__metadata__ must be an object of strings"),
    ("huge integer", "a number too long to read"),
    ("float8 tensor", "dtype must be one of 'F32', 'F16', 'BF16', got 'F8_E4M3'"),
    ("int tensor", "got 'I64'"),
    ("bool as int", "layer must be an integer in [0, 1023], got True"),
    ("bottleneck 1e15", "bottleneck must be an integer in [1, 4096]"),
    ("too many tensors", "declares 17 tensors, an adapter has at most 16"),
])
def test_hostile_files_are_refused_before_tensor_data_is_read(bb, module, monkeypatch, case, words):
    import lpt.adapter as A
    data = adapter_bytes(module)
    header, body = _split(data)
    cfg = json.loads(module.config.to_json())
    tensors = dict(read_adapter(data).tensors)
    files = {
        "deep header": lambda: _raw_file(b"[" * 100_000 + b"]" * 100_000),
        "deep config": lambda: _with_config(data, "[" * 50_000 + "]" * 50_000),
        "metadata number": lambda: _raw_file({**header, "__metadata__": 5}, body),
        "metadata list": lambda: _raw_file({**header, "__metadata__": [1, 2]}, body),
        "huge integer": lambda: _with_config(data, json.dumps(cfg)[:-1] + ', "layer": ' + "9" * 5000 + "}"),
        "float8 tensor": lambda: st_save({**tensors, "head.linear.bias": tensors["head.linear.bias"].to(torch.float8_e4m3fn)},
                                         metadata={CONFIG_KEY: json.dumps(cfg)}),
        "int tensor": lambda: st_save({**tensors, "head.linear.bias": torch.tensor([1, 2])}, metadata={CONFIG_KEY: json.dumps(cfg)}),
        "bool as int": lambda: _with_config(data, {**cfg, "layer": True}),
        "bottleneck 1e15": lambda: _with_config(data, {**cfg, "bottleneck": 10 ** 15}),
        "too many tensors": lambda: st_save({f"t{i}": torch.zeros(1) for i in range(17)}, metadata={CONFIG_KEY: json.dumps(cfg)}),
    }
    bad = files[case]()
    loads, builds = [], []
    monkeypatch.setattr(A, "st_load", lambda *a: loads.append(1))
    monkeypatch.setattr(A.LatePrompt, "__init__", lambda *a: builds.append(1))
    for attempt in (lambda: read_adapter(bad), lambda: load_adapter(bad, bb)):
        with pytest.raises(AdapterError) as e:
            attempt()
        assert any(words in p for p in e.value.problems), e.value.problems
    assert loads == [] and builds == []


def test_a_small_file_cannot_ask_for_a_big_module(bb, module, monkeypatch):
    """Within every bound, the tensors a config implies are tied to the file's size: a 1 kB file
    asking for a 10^8-parameter generator is refused by arithmetic, nothing allocated."""
    import lpt.adapter as A
    cfg = json.loads(module.config.to_json())
    cfg.update(bottleneck=4096, prompt_length=256)
    cfg["base_model"]["hidden_size"] = 384
    small = st_save({}, metadata={CONFIG_KEY: json.dumps(cfg)})
    builds = []
    monkeypatch.setattr(A.LatePrompt, "__init__", lambda *a: builds.append(1))
    with pytest.raises(AdapterError) as e:
        read_adapter(small)
    params = 4096 * 384 + 4096 + 256 * 384 * 4096 + 256 * 384 + 2 * 384 + 2
    assert e.value.problems[0].startswith(
        f"the config implies {params} parameters (at least {2 * params} bytes) but the file is {len(small)} bytes")
    assert "missing tensor 'generator.up.weight' (shape [98304, 4096])" in e.value.problems
    with pytest.raises(AdapterError) as e:
        load_adapter(small, bb)                      # against the backbone: its hidden size counts
    params = 4096 * 32 + 4096 + 256 * 32 * 4096 + 256 * 32 + 2 * 32 + 2
    assert e.value.problems[0].startswith(f"the config implies {params} parameters")
    assert "base model hidden_size is 32, adapter was trained on 384" in e.value.problems
    assert builds == []


def test_schema_reports_every_bad_field_at_once(bb, module):
    cfg = json.loads(module.config.to_json())
    cfg.update(task=12345, dropout=None, template=["{text}"], bottleneck=10 ** 9, labels=["a", "a"], extra=1)
    cfg["base_model"] = {**cfg["base_model"], "id": 5, "hidden_size": "32", "colour": "red"}
    with pytest.raises(AdapterError) as e:
        read_adapter(_with_config(adapter_bytes(module), cfg))
    assert e.value.problems == [
        "unknown config key 'extra'",
        "task must be a string of 1 to 2000 characters, got 12345",
        "labels must be a list of 2 to 1000 distinct items, each a string of 1 to 200 characters, got ['a', 'a']",
        "bottleneck must be an integer in [1, 4096], got 1000000000",
        "dropout must be a number in [0, 1), got None",
        "template must be null or a string of 1 to 2000 characters, got ['{text}']",
        "unknown base_model key 'colour'",
        "base_model.id must be a string of 1 to 500 characters, got 5",
        "base_model.hidden_size must be an integer in [1, 65536], got '32'",
    ]


def test_brackets_inside_strings_do_not_count_as_nesting(bb):
    labels = ["[[[[[[[[[[", "{{{{{{{{{{\"]]]]"]
    m = new_adapter(bb, task="t" + "[" * 20, labels=labels, layer=1)
    assert load_adapter(adapter_bytes(m), bb).labels == labels


@pytest.mark.parametrize("family,head", [("bert", "linear"), ("bert", "mlm"), ("gpt2", "lm")])
@pytest.mark.parametrize("generator", ["npg", "max", "avg", "static"])
def test_expected_shapes_are_the_built_modules(family, head, generator):
    """validate() compares files with shapes computed from the config: they must be the shapes
    LatePrompt really has, for every generator and head."""
    from lpt.adapter import expected_shapes
    bb = make_backbone(family)
    words = {"label_words": ["good", "bad"], "template": "{text} it was {mask}" if head == "mlm" else None} \
        if head != "linear" else {}
    m = new_adapter(bb, task="t", labels=["p", "n"], layer=1, prompt_length=3, bottleneck=7, generator=generator,
                    head_kind=head, **words)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected_shapes(m.config, bb.hidden_size)


def test_one_read_one_parse_one_check_one_build(bb, module, monkeypatch):
    import lpt.adapter as A
    calls = {"parse": 0, "check": 0, "build": 0}

    def spy(target, attr, key):
        original = getattr(target, attr)

        def counted(*a, **k):
            calls[key] += 1
            return original(*a, **k)
        monkeypatch.setattr(target, attr, counted)

    spy(A, "_header", "parse")
    spy(A, "_fit_problems", "check")
    spy(A.LatePrompt, "__init__", "build")
    data = adapter_bytes(module)
    assert load_adapter(data, bb).version                          # bytes -> module
    assert calls == {"parse": 1, "check": 1, "build": 1}
    calls.update(parse=0, check=0, build=0)
    af = read_adapter(data)                                        # the registry's way: read, validate, load
    assert validate(af, bb) == [] and validate(af, bb, max_bytes=len(data)) == []
    load_adapter(af, bb)
    assert calls == {"parse": 1, "check": 1, "build": 1}
    assert validate(af, bb, max_bytes=10)[0].startswith("adapter is")   # the size limit is not cached
    other = make_backbone("bert", seed=7)
    assert any("weights differ" in p for p in validate(af, other))      # another backbone: checked anew
    assert calls["check"] == 2


@pytest.mark.parametrize("config", [
    dict(generator="npg", prompt_length=5, bottleneck=7),
    dict(generator="max", prompt_length=3, bottleneck=11),
    dict(generator="static", prompt_length=9),
])
def test_tensor_bytes_is_what_the_file_of_the_built_adapter_holds(bb, config):
    """The size a training form is checked against before anything is built."""
    m = new_adapter(bb, task="t", labels=["a", "b", "c"], layer=1, **config)
    data = adapter_bytes(m)
    header = struct.unpack("<Q", data[:8])[0]
    assert tensor_bytes(m.config, bb.hidden_size) == len(data) - 8 - header

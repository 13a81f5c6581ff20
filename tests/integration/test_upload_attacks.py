"""Hostile adapter uploads: each is a 400 naming what to fix, stores nothing, builds nothing,
and leaves listing, describing and serving the other adapters working (also after a restart)."""
import json
import os

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import lpt.adapter
from tiny_server import adapter_file, running, upload, with_config
from lpt.adapter import CONFIG_KEY

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def listing(root):
    out = []
    for d, _, files in os.walk(root):
        out += [(os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f))) for f in files]
    return sorted(out)


def _raw(header: bytes, body: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + body


def _config(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(json.loads(data[8:8 + n])["__metadata__"][CONFIG_KEY])


def _base_model(data: bytes, **changes) -> bytes:
    return with_config(data, base_model={**_config(data)["base_model"], **changes})


def _metadata(data: bytes, meta) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return _raw(json.dumps({**header, "__metadata__": meta}).encode(), data[8 + n:])


def _float8(data: bytes) -> bytes:
    tensors = st_load(data)
    tensors["head.linear.bias"] = tensors["head.linear.bias"].to(torch.float8_e4m3fn)
    return st_save(tensors, metadata={CONFIG_KEY: json.dumps(_config(data))})


def _tiny_file_big_config(data: bytes) -> bytes:
    """Under 1 kB, every field within its bounds, asking for a 33M-parameter generator."""
    return st_save({}, metadata={CONFIG_KEY: json.dumps({**_config(data), "bottleneck": 4096, "prompt_length": 256})})


CASES = {
    # accepted on main, then every listing answered 500
    "task number": (lambda d: with_config(d, task=12345), "task must be a string"),
    "base_model id number": (lambda d: _base_model(d, id=5), "base_model.id must be a string"),
    # answered 500 on main
    "metadata number": (lambda d: _metadata(d, 5), "__metadata__ must be an object of strings"),
    "metadata list": (lambda d: _metadata(d, [1, 2]), "__metadata__ must be an object of strings"),
    "deep header": (lambda d: _raw(b"[" * 100_000 + b"]" * 100_000), "nests 100000 levels deep"),
    "deep config": (lambda d: _metadata(d, {CONFIG_KEY: "[" * 100_000 + "]" * 100_000}), "lpt.config nests"),
    "float8 tensor": (_float8, "dtype must be one of 'F32', 'F16', 'BF16'"),
    "dropout text": (lambda d: with_config(d, dropout="high"), "dropout must be a number in [0, 1)"),
    "dropout null": (lambda d: with_config(d, dropout=None), "dropout must be a number in [0, 1)"),
    "template list": (lambda d: with_config(d, template=["{text}"]), "template must be null or a string"),
    "base_model list": (lambda d: with_config(d, base_model=[1]), "base_model must be an object"),
    "weights_sample text": (lambda d: _base_model(d, weights_sample="abc"), "base_model.weights_sample must be"),
    "label_words number": (lambda d: with_config(d, label_words=5), "label_words must be null or a list"),
    "bottleneck 1e9": (lambda d: with_config(d, bottleneck=10 ** 9), "bottleneck must be an integer in [1, 4096]"),
    "bottleneck 1e15": (lambda d: with_config(d, bottleneck=10 ** 15), "bottleneck must be an integer in [1, 4096]"),
    "bottleneck 50000, tiny file": (lambda d: st_save({}, metadata={CONFIG_KEY: json.dumps({**_config(d), "bottleneck": 50_000})}),
                                    "bottleneck must be an integer in [1, 4096]"),
    "big module, tiny file": (_tiny_file_big_config, "the config implies"),
    # types Python would let through
    "layer true": (lambda d: with_config(d, layer=True), "layer must be an integer"),
    "unknown key": (lambda d: with_config(d, colour="red"), "unknown config key 'colour'"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_upload_is_a_400_and_changes_nothing(tmp_path, tiny_bb, monkeypatch, case):
    make, words = CASES[case]
    good = adapter_file(tiny_bb, "sent")
    bad = make(good)
    builds = []
    original = lpt.adapter.LatePrompt.__init__

    def counted(self, *a, **k):
        builds.append(1)
        original(self, *a, **k)

    async with running(tmp_path, tiny_bb) as (app, c):
        assert (await upload(c, "existing", good)).status_code == 201
        listed = (await c.get("/v1/adapters")).json()
        before = listing(tmp_path / "store")
        monkeypatch.setattr(lpt.adapter.LatePrompt, "__init__", counted)
        for name in ("existing", "newname"):
            r = await upload(c, name, bad)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["type"] == "invalid_adapter" and any(words in p for p in err["problems"]), err
            assert len(err["message"]) < 4000
        assert builds == [], "a module was built from a refused file"
        monkeypatch.undo()
        assert listing(tmp_path / "store") == before
        assert (await c.get("/v1/adapters")).json() == listed
        assert (await c.get("/v1/adapters/existing")).status_code == 200
        assert (await c.get("/v1/adapters/newname")).status_code == 404
        assert (await c.post("/v1/classify", json={"inputs": "x", "task": "existing"})).status_code == 200
    async with running(tmp_path, tiny_bb) as (app, c):         # a restart on the same store
        assert [a["name"] for a in (await c.get("/v1/adapters")).json()["adapters"]] == ["existing"]
        assert (await c.get("/v1/adapters/existing")).status_code == 200

"""The app in process on the real embedded model (all-MiniLM-L6-v2): mixed tasks, pairs, truncation."""
import pytest
import torch

from tiny_server import running, upload
from lpt_server.runtime import engine_for
from lpt import Backbone, Engine, Row, load_adapter, new_adapter
from lpt.adapter import adapter_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio]

TEXTS = ["I loved this film, the actors were wonderful.", "Terrible service.",
         "The central bank raised interest rates again on Thursday, surprising markets."]


async def test_minilm_mixed_tasks_equal_the_engine(tmp_path):
    bb = Backbone.load("minilm")
    files = {}
    for i, (name, labels, k, length) in enumerate([("sentiment", ["neg", "pos"], 3, 5),
                                                   ("topic", ["world", "sports", "business", "tech"], 2, 8),
                                                   ("nli", ["entailment", "neutral", "contradiction"], 4, 3)]):
        torch.manual_seed(i)
        files[name] = adapter_bytes(new_adapter(bb, task=name, labels=labels, layer=k, prompt_length=length))
    async with running(tmp_path, bb, engine_factory=lambda s: engine_for(bb, s)) as (app, c):
        for name, data in files.items():
            r = await upload(c, name, data)
            assert r.status_code == 201, r.text
        r = await c.post("/v1/classify", json={"inputs": TEXTS, "tasks": ["sentiment", "topic"], "raw_scores": True})
        assert r.status_code == 200, r.text
        pair = await c.post("/v1/tasks/nli/classify", json={"inputs": [[TEXTS[0], TEXTS[1]]], "raw_scores": True})
        assert pair.status_code == 200, pair.text
        modules = {n: load_adapter(d, bb) for n, d in files.items()}
        ref = Engine(bb, cache_entries=0)
        for text, per_input in zip(TEXTS, r.json()["results"]):
            for item in per_input:
                want = ref.predict([Row(modules[item["task"]], text)])[0]
                assert item["label"] == want.label
                assert item["scores"] == pytest.approx(want.scores, abs=1e-5)
        want = ref.predict([Row(modules["nli"], TEXTS[0], TEXTS[1])])[0]
        assert pair.json()["results"][0][0]["scores"] == pytest.approx(want.scores, abs=1e-5)
        # visible characters BERT's tokenizer drops (U+FFFD, private use): read as an empty text
        # would answer like one; a 400 names the input instead
        r = await c.post("/v1/classify", json={"inputs": ["ok", "\ufffd\ue000"], "task": "sentiment"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_input", r.text
        assert "inputs[1]" in r.json()["error"]["message"] and "no characters this model's tokenizer reads" in r.text
        # special tokens typed in a text are words: "[SEP]" does not make a pair of it, so the
        # answer is that for the words BERT's tokenizer splits it into (an ordinary text)
        typed = await c.post("/v1/classify", json={"inputs": ["I loved it [SEP] dull", "I loved it [ sep ] dull"],
                                                   "task": "sentiment",
                                                   "raw_scores": True})
        typed = [row[0]["scores"] for row in typed.json()["results"]]
        assert typed[0] == pytest.approx(typed[1], abs=1e-6)
        info = (await c.get("/info")).json()["model"]
        assert (info["id"], info["layers"], info["hidden_size"], info["modules"]) == ("minilm", 6, 384, "lpt")

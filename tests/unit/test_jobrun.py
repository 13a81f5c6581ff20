"""`lpt.jobrun`, the training child, run in this process on a tiny model saved to disk: the events
it sends (JSON lines), the adapter it writes, and that a stop request ends it at the next step."""
from __future__ import annotations

import io
import json
import threading

import pytest
from tiny import make_backbone, save_backbone

from lpt import read_adapter
from lpt.jobrun import Reporter, run

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobrun")
    save_backbone(make_backbone("bert", lm_head=False), root / "model")
    rows = "".join(f"{'great fun' if i % 2 else 'bad boring'} w{i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    (root / "train.csv").write_text("text,label\n" + rows)
    return root


def argv(root, *extra):
    return ["--task", "t", "--data", str(root / "train.csv"), "--model", str(root / "model"), "--quiet",
            "--batch-size", "8", "--out", str(root / "out" / "t.safetensors"), *extra]


def events(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_run_reports_progress_then_done_and_writes_the_adapter(setup):
    out = io.StringIO()
    code = run({"argv": argv(setup, "--epochs", "2")}, Reporter(out), threading.Event())
    sent = events(out)
    assert code == 0, sent[-1]
    progress, done = sent[:-1], sent[-1]
    assert done["event"] == "done" and done["summary"]["dev"]["examples"] > 0
    assert all(e["event"] == "progress" for e in progress)
    steps = progress[-1]["steps"]
    assert steps == 2 * 5 and progress[-1]["step"] == steps          # 36 train rows (4 held out) / 8 per batch
    assert [e["dev_accuracy"] is not None for e in progress].count(True) == 2   # one evaluation per epoch
    assert read_adapter(setup / "out" / "t.safetensors").config.labels == ["neg", "pos"]
    assert done["summary"]["dev"]["confusion_matrix"] is not None          # a few labels: kept


def test_the_done_event_is_the_summary_for_the_record(setup, monkeypatch):
    from lpt import jobrun

    monkeypatch.setattr(jobrun, "RECORD_CONFUSION_LABELS", 1)         # 2 labels are then "many"
    out = io.StringIO()
    assert run({"argv": argv(setup, "--epochs", "1")}, Reporter(out), threading.Event()) == 0
    done = events(out)[-1]
    assert done["summary"]["dev"]["confusion_matrix"] is None and "2 labels" in done["summary"]["dev"][
        "confusion_matrix_omitted"]


def test_a_many_label_summary_leaves_its_confusion_matrices_out_of_the_record():
    """1,000 labels made a done line of several MiB: the server could not read it, and a job that
    had trained and written its adapter was reported failed."""
    from lpt.jobrun import RECORD_CONFUSION_LABELS, for_the_record

    labels = [f"l{i}" for i in range(1000)]
    report = {"accuracy": 0.5, "labels": labels, "per_class": {x: {"f1": 0.5} for x in labels},
              "confusion_matrix": [[0] * 1000 for _ in range(1000)]}
    summary = {"dev": report, "test": report, "method": "lpt"}
    line = json.dumps({"event": "done", "summary": for_the_record(summary)})
    assert len(line) < 200_000 and len(json.dumps(summary)) > (1 << 20)
    kept = json.loads(line)["summary"]
    assert kept["dev"]["confusion_matrix"] is None and "1000 labels" in kept["dev"]["confusion_matrix_omitted"]
    assert kept["dev"]["per_class"] == report["per_class"] and kept["method"] == "lpt"
    assert summary["dev"]["confusion_matrix"] is report["confusion_matrix"]        # the caller's is untouched
    few = {"dev": {**report, "labels": labels[:RECORD_CONFUSION_LABELS]}}
    assert for_the_record(few) == few


def test_a_stop_request_ends_the_run_at_the_next_step(setup):
    out, stop = io.StringIO(), threading.Event()

    class StopAfterFirst(Reporter):
        def progress(self, p):
            super().progress(p)
            stop.set()

    (setup / "out" / "t.safetensors").unlink(missing_ok=True)
    code = run({"argv": argv(setup, "--epochs", "50")}, StopAfterFirst(out), stop)
    sent = events(out)
    assert code == 3 and sent[-1] == {"event": "error", "kind": "cancelled", "message": "cancelled"}
    assert [e["step"] for e in sent if e["event"] == "progress"] == [1]
    assert not (setup / "out" / "t.safetensors").exists()


def test_a_problem_is_reported_with_lpt_trains_message(setup):
    out = io.StringIO()
    code = run({"argv": argv(setup, "--label-column", "nope")}, Reporter(out), threading.Event())
    assert code == 2
    [error] = events(out)
    assert error["event"] == "error" and error["kind"] == "usage"
    assert "has no column 'nope'" in error["message"] and "--label-column" in error["message"]

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

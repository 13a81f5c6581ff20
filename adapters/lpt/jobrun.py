"""One `lpt train` run as a child process that reports as it goes: `python -m lpt.jobrun`.

    stdin, first line:  {"argv": ["--task", "t", "--data", "train.csv", ...], "nice": 10}
                        (`lpt train`'s arguments; the niceness to run at, optional)
    stdin, later:       any line, or end of input: stop at the next step
    stdout:             JSON lines, one event each:
        {"event": "progress", "epoch", "epochs", "step", "steps", "loss", "dev_accuracy"}
        {"event": "done", "summary": {...}}               (what `lpt train --metrics-json` writes,
                                                           without confusion matrices past
                                                           RECORD_CONFUSION_LABELS labels)
        {"event": "error", "kind": "usage" | "cancelled" | "crash", "message": "..."}

Plain JSON both ways: nothing is pickled, nothing sent is code. Everything else the run prints
(its log, warnings) goes to stderr. End of input also stops the run, so a child whose parent
died does not train on. Exit code: 0 done, 2 usage, 3 cancelled, 1 crash.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TextIO

from .cli import UsageError, _load_backbone, parse_train_args, plan_training, run_training
from .data import DataError
from .training import Progress

PROGRESS_EVERY_S = 0.2      # step reports at most this often (the last step of an epoch always)
# The summary becomes the job's record (kept in memory and in the journal, sent in every job
# listing): an L x L confusion matrix per split outgrows it (a 1 MiB event line near 400 labels,
# which the server could not read). Past this many labels the matrix is left out.
RECORD_CONFUSION_LABELS = 64


def for_the_record(summary: dict) -> dict:
    """The summary with the confusion matrices of many-label reports left out (and said so)."""
    out = dict(summary)
    for split in ("dev", "test"):
        report = out.get(split)
        if isinstance(report, dict) and len(report.get("labels") or ()) > RECORD_CONFUSION_LABELS:
            out[split] = {**report, "confusion_matrix": None,
                          "confusion_matrix_omitted": f"{len(report['labels'])} labels, more than "
                                                      f"{RECORD_CONFUSION_LABELS}: `lpt eval` prints it"}
    return out


class Cancelled(Exception):
    """Stop asked for on stdin."""


class Reporter:
    """Writes events as JSON lines, one per write."""

    def __init__(self, out: TextIO):
        self.out, self.last = out, 0.0

    def send(self, event: str, **fields) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        epoch_done = p.step % (p.steps // p.epochs) == 0
        if p.dev_accuracy is None and not epoch_done and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        self.send("progress", epoch=p.epoch, epochs=p.epochs, step=p.step, steps=p.steps, loss=p.loss,
                  dev_accuracy=p.dev_accuracy)


def _watch(stream: TextIO, stop: threading.Event) -> None:
    stream.readline()           # a line, or end of input
    stop.set()


def run(spec: dict, reporter: Reporter, stop: threading.Event) -> int:
    def on_step(p: Progress) -> None:
        if stop.is_set():
            raise Cancelled
        reporter.progress(p)

    try:
        args = parse_train_args(list(spec["argv"]))
        plan = plan_training(args)
        bb = _load_backbone(args.model, args)
        summary = run_training(bb, plan, args, on_step=on_step)
    except Cancelled:
        reporter.send("error", kind="cancelled", message="cancelled")
        return 3
    except (DataError, UsageError) as e:
        reporter.send("error", kind="usage", message=str(e))
        return 2
    except Exception as e:       # reported, and the traceback kept on stderr for the log
        import traceback

        traceback.print_exc()
        reporter.send("error", kind="crash", message=f"{type(e).__name__}: {e}")
        return 1
    reporter.send("done", summary=for_the_record(summary))
    return 0


def main() -> int:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")    # the event stream
    os.dup2(2, 1)                                         # anything printed goes to stderr
    sys.stdout = sys.stderr
    spec = json.loads(sys.stdin.readline() or "{}")
    if spec.get("nice"):
        os.nice(int(spec["nice"]))      # the server's requests get the CPU first
    stop = threading.Event()
    threading.Thread(target=_watch, args=(sys.stdin, stop), daemon=True).start()
    return run(spec, Reporter(out), stop)


if __name__ == "__main__":
    sys.exit(main())

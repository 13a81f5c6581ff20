"""`lpt train --remote URL ...`: the local `lpt train` command line, run as a server's job.

    lpt train --remote http://127.0.0.1:8080 --admin-key KEY --task my-task --data train.csv --epochs 2

`--data`, `--dev` and `--test` are uploaded; every other `lpt train` option (`--text-column x`,
`--labels neg pos`, ...) is sent as the form field of the same name, and the server checks it
exactly as `lpt train` would (its message comes back as a 400). The job is followed with a
progress bar until it ends (Ctrl-C cancels it). Exit codes as the other commands, and 7 when the
job failed or was cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from .models import TrainingJob
from .sync_client import Client

EXIT_OK = 0
EXIT_TRAINING_FAILED = 7


class OptionError(ValueError):
    """Extra arguments that are not `--option value ...` pairs."""


def add_parser(commands: Any, common: argparse.ArgumentParser, usage_error: type[Exception],
               seconds: Any) -> None:
    """The `train` command; arguments it does not know are `lpt train` options for the server.
    `seconds` is the CLI's argparse type for a positive number of seconds."""
    train = commands.add_parser(
        "train",
        parents=[common],
        allow_abbrev=False,  # an `lpt train` option must never be read as an abbreviation of these
        help="train an adapter on the server (what `lpt train --remote URL` runs)",
    )
    train.add_argument("--remote", dest="url", help="the server's URL (the same as --url)")
    train.add_argument("--task", required=True, help="the adapter's name")
    train.add_argument("--data", required=True, help="training file: .csv, .tsv or .jsonl")
    train.add_argument("--dev", help="dev file (default: the server holds out part of --data)")
    train.add_argument("--test", help="test file: its metrics are reported with the job")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--poll", type=seconds, default=1.0, help="seconds between progress checks")
    train.set_defaults(run=run_train, key="admin", forward_extra=True, usage_error=usage_error)


def options(extra: list[str]) -> dict[str, list[str]]:
    """`--text-column x --labels a b --seed=3` -> {"text_column": ["x"], "labels": ["a", "b"], "seed": ["3"]}."""
    fields: dict[str, list[str]] = {}
    name = None
    for token in extra:
        if token.startswith("--") and len(token) > 2:
            key, eq, value = token[2:].partition("=")
            name = key.replace("-", "_")
            fields.setdefault(name, [])
            if eq:
                fields[name].append(value)
        elif name is None:
            raise OptionError(f"unexpected argument {token!r}: options are --name value")
        else:
            fields[name].append(token)
    bare = [n for n, values in fields.items() if not values]
    if bare:
        raise OptionError(f"--{bare[0].replace('_', '-')} has no value: a remote job takes options with values")
    return fields


def run_train(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """Upload, then follow the job until it ends."""
    try:
        fields = options(args.extra)
    except OptionError as exc:
        raise args.usage_error(str(exc)) from None
    try:
        job = client.train(args.task, args.data, dev=args.dev, test=args.test, **fields)
    except OSError as exc:
        raise args.usage_error(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    print(f"training job {job.id} queued on {client.base_url}", file=sys.stderr)
    bar = ProgressBar(disabled=args.quiet)
    try:
        job = client.wait_training(job.id, poll_s=args.poll, on_update=bar.update)
    except KeyboardInterrupt:
        bar.close()
        job = client.cancel_training(job.id)
        print(f"training job {job.id} cancelled", file=sys.stderr)
        return 130
    bar.close()
    if args.json:
        out.write(json.dumps(job.model_dump(mode="json"), indent=2) + "\n")
    if job.state != "succeeded":
        print(f"training job {job.id} {job.state}: {job.error}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    if not args.json:
        out.write(summary(job) + "\n")
    return EXIT_OK


def summary(job: TrainingJob) -> str:
    adapter = job.adapter
    line = f"trained {job.task}: adapter {adapter.name} version {adapter.version[:12]}" if adapter else job.task
    for split in ("dev", "test"):
        report = (job.metrics or {}).get(split)
        if isinstance(report, dict) and isinstance(report.get("accuracy"), (int, float)):
            line += f"; {split} accuracy {report['accuracy']:.4f}"
    return line


class ProgressBar:
    """A tqdm bar on stderr over the job's steps (plain lines when tqdm is not installed)."""

    def __init__(self, disabled: bool) -> None:
        self.disabled, self.bar, self.state, self.shown = disabled, None, None, None

    def update(self, job: TrainingJob) -> None:
        if self.disabled:
            return
        if job.state != self.state:
            self.state = job.state
            if self.bar is None:
                print(f"{job.state}", file=sys.stderr)
        p = job.progress
        if p.steps < 1 or (p.step, p.dev_accuracy) == self.shown:
            return
        self.shown = (p.step, p.dev_accuracy)
        if self.bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                print(f"step {p.step}/{p.steps} epoch {p.epoch}/{p.epochs} loss {p.loss}", file=sys.stderr)
                return
            self.bar = tqdm(total=p.steps, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.n = p.step
        post = {"epoch": f"{p.epoch}/{p.epochs}"}
        if p.loss is not None:
            post["loss"] = f"{p.loss:.4f}"
        if p.dev_accuracy is not None:
            post["dev_acc"] = f"{p.dev_accuracy:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

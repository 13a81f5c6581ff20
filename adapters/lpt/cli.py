"""`lpt train` and `lpt eval`.

    lpt train --task sentiment --data train.csv --dev dev.csv --out sentiment.safetensors
    lpt eval --adapter sentiment.safetensors --data test.csv --plot confusion.png

Exit codes: 0 done; 2 a problem the user can fix (bad data, bad flags, an adapter that does not
fit the model), with a message saying what and where; nothing is written in that case.
Also runnable as `python -m lpt.cli train ...`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .data import ENCODING_ERRORS, DataError, Example, check_known_labels, holdout, label_set, read_examples
from .config import AdapterConfig
from .methods import ADAPTER_METHODS, METHODS, adapter_settings
from .quantize import INT8
from .training import METHOD_DEFAULTS, TrainConfig

DEV_FRACTION = 0.1
HOLDOUT_SEED = 0     # the held-out dev split does not move with --seed


class UsageError(Exception):
    """Exit code 2 with this message."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- arguments -------------------------------------------------------------------------------------
def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data columns")
    g.add_argument("--text-column", default="text", help="column (or JSONL key) with the text (default: text)")
    g.add_argument("--text-pair-column", default=None, help="column with a second text, for pair tasks")
    g.add_argument("--label-column", default="label", help="column with the label (default: label)")
    g.add_argument("--format", choices=("csv", "tsv", "jsonl"), default=None,
                   help="file format (default: from the extension: .csv, .tsv, .jsonl)")
    g.add_argument("--encoding-errors", choices=ENCODING_ERRORS, default="strict",
                   help="bytes that are not UTF-8: strict refuses the file and names the lines (default), "
                        "skip leaves out the rows whose text or label holds any, replace reads them as U+FFFD")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32",
                   help="the backbone's dtype: float32 (default), bfloat16, float16, int8 (eval only, on a CPU: the "
                        "blocks' linear layers in int8), or auto (bfloat16 on a GPU and on a CPU with AMX); trained "
                        "weights stay float32 whatever the backbone's dtype")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


class _RaisingParser(argparse.ArgumentParser):
    """A parser that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(message)


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = parser_class(prog="lpt", description="Train and evaluate Late Prompt Tuning adapters.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an adapter (or a comparison method) on a labelled file")
    t.add_argument("--model", default="minilm", help="model id, local path, or minilm (the embedded default)")
    t.add_argument("--task", required=True, help="task name stored in the adapter (what clients ask for)")
    t.add_argument("--data", required=True, help="training file: .csv, .tsv or .jsonl")
    t.add_argument("--dev", default=None,
                   help=f"dev file for best-checkpoint selection (default: hold out {DEV_FRACTION:.0%}% of --data)")
    t.add_argument("--test", default=None, help="also report metrics on this file with the chosen checkpoint")
    _data_args(t)
    t.add_argument("--labels", nargs="+", default=None,
                   help="label order (default: sorted); --label-words follow this order")
    m = t.add_argument_group("method")
    m.add_argument("--method", choices=METHODS, default="lpt",
                   help="lpt (NPG late prompt; default), static (static late prompt), prompt-tuning (k=0, static), "
                        "probe (head on final states), finetune (all weights)")
    m.add_argument("--layer", type=int, default=None, help="insertion layer k (default: num_layers // 2)")
    m.add_argument("--prompt-length", type=int, default=5, help="L, prompt vectors (default: 5)")
    m.add_argument("--generator", choices=("npg", "max", "avg", "static"), default="npg",
                   help="prompt generator of --method lpt (default: npg)")
    m.add_argument("--bottleneck", type=int, default=128, help="generator bottleneck r (default: 128)")
    m.add_argument("--head", choices=("linear", "mlm", "lm"), default=None,
                   help="head kind (default: mlm/lm when --label-words is given, else linear)")
    m.add_argument("--pooling", choices=("cls", "mean", "last"), default="mean",
                   help="what the linear head reads: mean of the final token states (default; all-MiniLM-L6-v2 "
                        "was trained for mean pooling), the [CLS]/first token, or the last token")
    m.add_argument("--template", default=None, help='e.g. "{text} . It was {mask} ."')
    m.add_argument("--label-words", nargs="+", default=None, help="one word per label, in label order")
    m.add_argument("--max-length", type=int, default=256, help="tokens per example, longer texts are cut (default: 256)")
    o = t.add_argument_group("optimisation (defaults per method: " + "; ".join(
        f"{k}: lr {v['lr']:g}, head {v['head_lr']:g}, {v['epochs']} epochs" for k, v in METHOD_DEFAULTS.items()) + ")")
    o.add_argument("--epochs", type=int, default=None)
    o.add_argument("--lr", type=float, default=None, help="generator lr (backbone lr for finetune)")
    o.add_argument("--head-lr", type=float, default=None)
    o.add_argument("--weight-decay", type=float, default=0.1, help="AdamW, not on biases or norms (default: 0.1)")
    o.add_argument("--warmup", type=float, default=0.06, help="warmup fraction of all steps, then linear decay "
                                                                "(default: 0.06)")
    o.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    o.add_argument("--seed", type=int, default=0, help="initial weights, shuffling, dropout (default: 0)")
    o.add_argument("--cache-states", action=argparse.BooleanOptionalAction, default=True,
                   help="compute the frozen layers' states once and reuse them every epoch (default: on)")
    o.add_argument("--cache-budget-mb", type=float, default=1024.0,
                   help="cache only if train (+ dev) states fit in this many MB (default: 1024)")
    out = t.add_argument_group("output")
    out.add_argument("--out", default=None, help="adapter file to write (default: TASK.safetensors)")
    out.add_argument("--no-save", action="store_true", help="write no adapter (report metrics only)")
    out.add_argument("--metrics-json", default=None, help="write the run's numbers to this JSON file")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    _runtime_args(t)
    r = t.add_argument_group("on a server (`lpt train --remote URL --admin-key KEY ...` uploads the files and "
                             "follows the job; the other options are sent as they are)")
    r.add_argument("--remote", metavar="URL", default=None, help="the lpt-serve server to train on")
    r.add_argument("--admin-key", default=None, help="the server's admin key (default: $LPT_ADMIN_KEY)")

    e = sub.add_parser("eval", help="evaluate an adapter file on a labelled file")
    e.add_argument("--adapter", required=True, help="adapter .safetensors file")
    e.add_argument("--data", required=True, help="labelled file: .csv, .tsv or .jsonl")
    e.add_argument("--model", default=None, help="base model (default: the one the adapter records)")
    _data_args(e)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--plot", default=None, metavar="FILE", help="write the confusion matrix as a PNG")
    _runtime_args(e)
    return parser


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """`lpt train`'s arguments from a list (without the word `train`), exactly as the command
    line reads them; a bad one raises UsageError with argparse's message instead of exiting."""
    return build_parser(_RaisingParser).parse_args(["train", *argv])


# ---- shared steps -----------------------------------------------------------------------------------
def _read(path: str, args):
    return read_examples(path, args.text_column, args.label_column, args.text_pair_column, args.format,
                         flag_prefix="--", encoding_errors=args.encoding_errors, log=_log)


def _load_backbone(name: str, args):
    import torch

    from .backbone import Backbone, ModelLoadError

    if args.threads:
        torch.set_num_threads(args.threads)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():   # torch would assert
        raise UsageError(f"--device {args.device}: this torch sees no CUDA device (a CPU-only build, or no "
                         "GPU); use --device cpu")
    try:
        return Backbone.load(name, device=args.device, dtype=args.dtype)
    except ModelLoadError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"cannot load model {name!r}: {e}") from None


# ---- train ------------------------------------------------------------------------------------------
def _check_train_args(args) -> Path | None:
    if args.dtype == INT8:
        raise UsageError(f"--dtype {INT8} serves and evaluates only (it has no backward pass): train in float32 "
                         f"(the default); the adapter then serves on an {INT8} model too")
    if args.method in ADAPTER_METHODS:
        if args.no_save:
            return None
        return Path(args.out or f"{args.task}.safetensors")
    if args.out:
        raise UsageError(f"--method {args.method} writes no adapter file (only lpt, static and prompt-tuning "
                         f"make one): drop --out, or use --metrics-json FILE to keep the numbers")
    return None


@dataclass
class TrainPlan:
    """A training run's data, read and checked before any model is loaded."""

    train: list[Example]
    dev: list[Example]
    dev_source: str                  # where the dev set came from, for the log
    test: list[Example] | None
    labels: list[str]
    out: Path | None                 # the adapter file to write (None: none)


# Options that cannot make a sound run (lr=nan or -1, epochs=10**20, a seed torch cannot take):
# refused before anything is read or trained. name -> (least, most, whether the least is excluded)
BOUNDS = {"epochs": (1, 10_000, False), "batch_size": (1, 65_536, False), "prompt_length": (1, 4_096, False),
          "bottleneck": (1, 65_536, False), "max_length": (1, 1_000_000, False), "seed": (0, 2**63 - 1, False),
          "lr": (0, None, True), "head_lr": (0, None, True), "weight_decay": (0, None, False),
          "warmup": (0, 1, False), "cache_budget_mb": (0, None, False)}


def check_bounds(args) -> None:
    for name, (least, most, open_low) in BOUNDS.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):     # an int is finite (and may be too big for a float)
            raise UsageError(f"{flag} must be a finite number, got {v}")
        got = str(v) if len(str(v)) <= 24 else f"a number of {len(str(v))} digits"
        if v < least or (open_low and v == least):
            raise UsageError(f"{flag} must be {'more than' if open_low else 'at least'} {least}, got {got}")
        if most is not None and v > most:
            raise UsageError(f"{flag} must be at most {most}, got {got}")


def plan_training(args) -> TrainPlan:
    """Every check of the arguments and the data that needs no model: DataError or UsageError
    with the message `lpt train` prints. The server runs this too, before it queues a job."""
    out = _check_train_args(args)
    check_bounds(args)
    train_ex = _read(args.data, args)
    labels = label_set(train_ex, args.data, args.labels)
    if args.dev:
        dev_ex = _read(args.dev, args)
        check_known_labels(dev_ex, labels, args.dev)
        dev_source = args.dev
    elif len(train_ex) < 20:
        dev_ex, dev_source = train_ex, f"{args.data} (too small to hold out a dev set: selecting on train)"
    else:
        train_ex, dev_ex = holdout(train_ex, DEV_FRACTION, HOLDOUT_SEED)
        dev_source = f"{len(dev_ex)} examples held out of {args.data}"
    test_ex = None
    if args.test:
        test_ex = _read(args.test, args)
        check_known_labels(test_ex, labels, args.test)
    if args.label_words and len(args.label_words) != len(labels):
        raise UsageError(f"--label-words has {len(args.label_words)} words for {len(labels)} labels "
                         f"({', '.join(labels)}): give one word per label, in that order")
    return TrainPlan(train_ex, dev_ex, dev_source, test_ex, labels, out)


def training_config(bb, args) -> tuple[TrainConfig, dict]:
    """The optimisation settings and the adapter settings (`new_adapter`'s) of a run on `bb`."""
    head = args.head or (("lm" if bb.causal else "mlm") if args.label_words else "linear")
    cfg = TrainConfig(method=args.method, epochs=args.epochs, lr=args.lr, head_lr=args.head_lr,
                      weight_decay=args.weight_decay, warmup=args.warmup, batch_size=args.batch_size,
                      seed=args.seed, cache_states=args.cache_states, cache_budget_mb=args.cache_budget_mb)
    adapter_config = dict(prompt_length=args.prompt_length, generator=args.generator, bottleneck=args.bottleneck,
                          head_kind=head, pooling=args.pooling, template=args.template,
                          label_words=args.label_words, max_length=args.max_length)
    return cfg, adapter_config


@contextmanager
def _config_errors():
    """An adapter configuration that does not fit the model, as the UsageError `lpt train` prints."""
    from .adapter import AdapterError

    try:
        yield
    except AdapterError as e:
        raise UsageError("the adapter configuration is invalid:\n  - " + "\n  - ".join(e.problems)) from None
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_training(bb, plan: TrainPlan, args) -> AdapterConfig:
    """Check, without building anything, the adapter an adapter method would train on `bb`:
    UsageError, with `lpt train`'s message, for a configuration that does not fit the model.
    Lets a caller refuse a run before queueing it (`adapter.tensor_bytes` of the config returned
    gives the size of its file, less a small header); options asking for a huge adapter cost
    nothing to refuse."""
    from .adapter import new_config

    if args.method not in ADAPTER_METHODS:
        raise ValueError(f"check_training checks adapter methods only, not {args.method!r}")
    cfg, adapter_config = training_config(bb, args)
    with _config_errors():
        cfg.resolved()
        return new_config(bb, **adapter_settings(bb, args.method, task=args.task, labels=plan.labels,
                                                 layer=args.layer, **adapter_config))


def run_training(bb, plan: TrainPlan, args, on_step=None) -> dict:
    """Train, report, and write the adapter file (plan.out); returns the run's summary (what
    --metrics-json writes). `on_step` hears `training.Progress` after every step."""
    from .metrics import classification_report, format_report
    from .training import fit, make_split, predict, prepare

    cfg, adapter_config = training_config(bb, args)
    with _config_errors():
        method, train_split, dev_split, result = prepare(bb, plan.train, plan.dev, plan.labels, cfg, task=args.task,
                                                         layer=args.layer, log=_log, **adapter_config)
        test_split = make_split(method, plan.test, plan.labels) if plan.test else None

    rc = result.config
    _log(f"{args.method}: {len(plan.train)} train examples, dev: {plan.dev_source}; labels: {', '.join(plan.labels)}")
    _log(f"k={method.layer} of {bb.num_layers} layers, {method.trainable_parameters():,} trainable parameters; "
         f"lr {rc.lr:g}, head lr {rc.head_lr:g}, {rc.epochs} epochs, batch {rc.batch_size}, seed {rc.seed}; "
         + (f"layer-{method.layer} states cached ({result.cache_mb:.0f} MB, {result.cache_seconds:.1f} s)"
            if result.cached else "states not cached"))
    fit(method, train_split, dev_split, cfg, result, progress=not args.quiet, on_step=on_step)
    print(f"best dev accuracy {result.best_dev_accuracy:.4f} at epoch {result.best_epoch}/{rc.epochs}; "
          f"{result.seconds_per_epoch:.1f} s per epoch")

    summary = result.summary()
    summary.update(task=args.task, model=args.model, train_examples=len(plan.train), dev_examples=len(plan.dev))
    summary["dev"] = classification_report(dev_split.targets.tolist(), predict(method, dev_split).argmax(-1).tolist(),
                                           plan.labels)
    if test_split is not None:
        report = classification_report(test_split.targets.tolist(), predict(method, test_split).argmax(-1).tolist(),
                                       plan.labels)
        summary["test"] = report
        print(f"test ({args.test}):\n" + format_report(report))
    if plan.out is not None:
        version = method.save(plan.out)
        size = plan.out.stat().st_size
        summary.update(adapter=str(plan.out), version=version, adapter_bytes=size)
        print(f"wrote {plan.out} ({size / 1024:.0f} KiB, sha256 {version[:12]})")
    return summary


def cmd_train(args) -> int:
    if args.remote or args.admin_key:
        raise UsageError("--remote and --admin-key are read by the `lpt` command (`lpt train --remote URL ...`), "
                         "not by `python -m lpt.cli`")
    plan = plan_training(args)
    bb = _load_backbone(args.model, args)
    summary = run_training(bb, plan, args)
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps(summary, indent=2))
    return 0


# ---- eval -------------------------------------------------------------------------------------------
def _check_plot(path: str | None) -> None:
    """What --plot needs, checked before any computing: a missing matplotlib must not cost the run."""
    if path is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: `pip install matplotlib` (the `plot` "
                         "extra of lpt-serve), or run without --plot") from None
    if not Path(path).parent.is_dir():
        raise UsageError(f"--plot {path}: the folder {Path(path).parent} does not exist")


def cmd_eval(args) -> int:
    from .adapter import AdapterError, load_adapter, read_adapter
    from .engine import Engine, Row
    from .methods import longest_first_batches
    from .metrics import classification_report, format_report, plot_confusion

    try:
        adapter_file = read_adapter(args.adapter)
    except FileNotFoundError:
        raise UsageError(f"{args.adapter}: no such file") from None
    except AdapterError as e:
        raise UsageError(f"{args.adapter} is not a usable adapter:\n  - " + "\n  - ".join(e.problems)) from None
    labels = adapter_file.config.labels
    _check_plot(args.plot)
    examples = _read(args.data, args)
    check_known_labels(examples, labels, args.data)
    bb = _load_backbone(args.model or adapter_file.config.base_model.get("id", "minilm"), args)
    try:
        adapter = load_adapter(adapter_file, bb)
    except AdapterError as e:
        raise UsageError(f"{args.adapter} does not fit model {bb.model_id!r}:\n  - " + "\n  - ".join(e.problems)) from None

    # The serving engine computes the scores: what is measured here is what the server answers.
    engine = Engine(bb, cache_entries=0)
    chars = [len(e.text) + len(e.text_pair or "") for e in examples]
    pred = [0] * len(examples)
    for idx in longest_first_batches(chars, args.batch_size):
        for i, lg in zip(idx, engine.logits([Row(adapter, examples[i].text, examples[i].text_pair) for i in idx])):
            if isinstance(lg, Exception):
                raise UsageError(f"{args.data} line {examples[i].line}: {lg}")
            pred[i] = int(lg.argmax())
    index = {label: i for i, label in enumerate(labels)}
    report = classification_report([index[e.label] for e in examples], pred, labels)
    report.update(adapter=args.adapter, task=adapter_file.config.task, version=adapter_file.version, data=args.data)
    # the metrics first: whatever happens to the plot, the computed numbers are not lost
    if args.json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        print(f"adapter {args.adapter} (task {adapter_file.config.task}, sha256 {adapter_file.version[:12]}) "
              f"on {args.data}\n" + format_report(report), flush=True)
    if args.plot:
        try:
            plot_confusion(report, args.plot, title=f"{adapter_file.config.task}: accuracy {report['accuracy']:.3f}")
        except (OSError, RuntimeError) as e:
            raise UsageError(f"the metrics are above, but the plot was not written: {e}") from None
        _log(f"wrote {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "eval": cmd_eval}[args.command](args)
    except (DataError, UsageError) as e:
        print(f"lpt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Train and evaluate an adapter (or a comparison method) on a frozen backbone.

    bb = Backbone.load("minilm")
    train_ex, dev_ex = read_examples("train.csv"), read_examples("dev.csv")     # lpt.data
    result = train(bb, train_ex, dev_ex, ["negative", "positive"], TrainConfig(method="lpt"), task="sentiment")
    result.method.save("sentiment.safetensors")       # best-dev weights

The recipe is the paper's: AdamW, weight decay 0.1 (not on biases or norms), 6% warmup then
linear decay, gradient clipping at 1.0, batch 32; only the generator and the head are trained, and
the frozen layers below k run in eval mode. Their output never changes, so by default it is
computed once per example and reused every epoch (`cache_states`). The dev set picks the
checkpoint: after every epoch, the best dev accuracy so far is kept.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .data import Example
from .methods import METHODS, Method, Split, build_method, longest_first_batches

# Defaults per method, measured on all-MiniLM-L6-v2 with best-dev selection (docs/training.md):
# LPT's dev accuracy peaks by epoch 3-5. Fine-tuning's was still rising after 2 epochs on both
# tasks: it gets the common BERT recipe (lr 3e-5, 4 epochs). The head gets its own, 10x
# larger lr (1e-2 vs 1e-3: +5 points for the probe in the calibration); a static prompt (one
# L x d parameter) wants a larger lr than the NPG's weights.
METHOD_DEFAULTS: dict[str, dict] = {
    "lpt": dict(lr=1e-3, head_lr=1e-2, epochs=5),
    "static": dict(lr=1e-2, head_lr=1e-2, epochs=5),
    "prompt-tuning": dict(lr=1e-2, head_lr=1e-2, epochs=5),
    "probe": dict(lr=1e-2, head_lr=1e-2, epochs=10),
    "finetune": dict(lr=3e-5, head_lr=1e-3, epochs=4),
}


@dataclass
class TrainConfig:
    method: str = "lpt"
    epochs: int | None = None          # None: the method's default
    lr: float | None = None            # generator (or backbone, for finetune)
    head_lr: float | None = None
    weight_decay: float = 0.1
    warmup: float = 0.06               # fraction of all steps
    batch_size: int = 32
    clip: float = 1.0
    seed: int = 0
    cache_states: bool = True
    cache_budget_mb: float = 1024.0
    eval_batch_size: int = 64

    def resolved(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        d = METHOD_DEFAULTS[self.method]
        out = TrainConfig(**asdict(self))
        for k in ("epochs", "lr", "head_lr"):
            if getattr(out, k) is None:
                setattr(out, k, d[k])
        if out.epochs < 1 or out.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        return out


@dataclass
class EpochLog:
    epoch: int
    loss: float
    dev_accuracy: float
    train_seconds: float
    eval_seconds: float
    train_cpu_seconds: float          # process CPU time: less sensitive to other load on the machine


@dataclass(frozen=True)
class Progress:
    """What `fit` tells its `on_step` callback: after every step (dev_accuracy None), and once
    more after each epoch's dev evaluation (dev_accuracy set). A callback that raises stops the
    training: the exception leaves `fit`."""

    epoch: int              # 1-based
    epochs: int
    step: int               # steps done, all epochs counted
    steps: int              # steps in all: epochs x steps per epoch
    loss: float             # mean training loss of this epoch so far
    dev_accuracy: float | None = None


@dataclass
class TrainResult:
    method: Method
    labels: list[str]
    config: TrainConfig
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_dev_accuracy: float = float("nan")
    cache_seconds: float = 0.0        # one-off: the frozen part over train (+ dev)
    cache_mb: float = 0.0
    cached: bool = False

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of the training steps of one epoch (dev evaluation not included)."""
        return sum(h.train_seconds for h in self.history) / max(len(self.history), 1)

    @property
    def cpu_seconds_per_epoch(self) -> float:
        return sum(h.train_cpu_seconds for h in self.history) / max(len(self.history), 1)

    def summary(self) -> dict:
        return {
            "method": self.method.name, "labels": self.labels, "config": asdict(self.config),
            "trainable_parameters": self.method.trainable_parameters(),
            "best_epoch": self.best_epoch, "best_dev_accuracy": self.best_dev_accuracy,
            "seconds_per_epoch": self.seconds_per_epoch, "cpu_seconds_per_epoch": self.cpu_seconds_per_epoch,
            "cache_seconds": self.cache_seconds,
            "cache_mb": self.cache_mb, "cached_states": self.cached,
            "history": [asdict(h) for h in self.history],
        }


# ---- batches ------------------------------------------------------------------------------------
def length_grouped_batches(lengths: list[int], batch_size: int, gen: torch.Generator,
                           pool: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length examples: shuffle, sort within pools of
    `pool` batches, cut, shuffle the batches. Padding, not the prompt, is what costs."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    batches = []
    for s in range(0, len(order), batch_size * pool):
        part = sorted(order[s:s + batch_size * pool], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


# ---- the loop ----------------------------------------------------------------------------------
def make_split(method: Method, examples: list[Example], labels: list[str]) -> Split:
    index = {label: i for i, label in enumerate(labels)}
    encoded = method.encode([(e.text, e.text_pair) for e in examples])
    targets = torch.tensor([index[e.label] for e in examples], dtype=torch.long, device=method.bb.device)
    return Split(encoded, targets)


def cache_splits(method: Method, splits: list[Split], budget_mb: float, log=None) -> tuple[float, float]:
    """Cache the frozen-part states of each split, in order, while they fit the budget.
    Returns (seconds, megabytes)."""
    t0, used = time.perf_counter(), 0.0
    for split in splits:
        need = method.cache_bytes(split.encoded) / 2**20
        if used + need > budget_mb:
            if log:
                log(f"layer-{method.layer} states of {len(split)} examples need {need:.0f} MB, over the "
                    f"--cache-budget-mb {budget_mb:.0f} (already used {used:.0f}): computing them every step")
            continue
        split.store = method.compute_states(split.encoded)
        used += split.store.nbytes / 2**20
    return time.perf_counter() - t0, used


def param_groups(method: Method, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not biases, not norm weights)."""
    groups = []
    for lr_kind, named in method.param_groups():
        lr = getattr(cfg, lr_kind)
        decay = [p for _, p in named if p.requires_grad and p.dim() >= 2]
        no_decay = [p for _, p in named if p.requires_grad and p.dim() < 2]
        groups += [g for g in ({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "lr": lr, "weight_decay": 0.0}) if g["params"]]
    return groups


def linear_warmup_decay(total: int, warmup: float):
    warm = max(1, math.ceil(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))
    return factor


def batch_loss(method: Method, split: Split, idx: list[int]) -> torch.Tensor:
    return F.cross_entropy(method.logits(split, idx), split.targets[idx])


@torch.no_grad()
def predict(method: Method, split: Split, batch_size: int = 64) -> torch.Tensor:
    """Logits [N, C] in the split's order, in eval mode."""
    method.train(False)
    out = [None] * len(split)
    for idx in longest_first_batches(split.lengths, batch_size):
        for i, row in zip(idx, method.logits(split, idx).float()):
            out[i] = row
    return torch.stack(out)


def accuracy(method: Method, split: Split, batch_size: int = 64) -> float:
    pred = predict(method, split, batch_size).argmax(-1)
    return (pred == split.targets.cpu()).float().mean().item()


def fit(method: Method, train_split: Split, dev_split: Split, cfg: TrainConfig,
        result: TrainResult, progress: bool = True,
        on_step: Callable[[Progress], None] | None = None) -> TrainResult:
    """The training loop; keeps the best-dev weights in `method` at the end. `on_step` hears
    the progress (see `Progress`)."""
    from tqdm import tqdm

    cfg = cfg.resolved()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)                      # dropout in the generator
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    opt = torch.optim.AdamW(param_groups(method, cfg))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(cfg.epochs * steps_per_epoch, cfg.warmup))
    params = [p for g in opt.param_groups for p in g["params"]]
    best, best_acc, last_acc = None, -1.0, None
    steps, done = cfg.epochs * steps_per_epoch, 0
    for epoch in range(1, cfg.epochs + 1):
        batches = length_grouped_batches(train_split.lengths, cfg.batch_size, gen)
        method.train(True)
        # advanced by hand: a bar iterated over closes itself at the last batch, before the
        # epoch's dev accuracy could be shown on it
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True, leave=True)
        total, seen = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        for idx in batches:
            loss = batch_loss(method, train_split, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            done += 1
            if on_step is not None:
                on_step(Progress(epoch, cfg.epochs, done, steps, total / seen))
            # during an epoch the dev accuracy shown is the previous epoch's: named so
            bar.set_postfix(loss=f"{total / seen:.4f}", **({} if last_acc is None else
                                                          {f"dev_acc@{epoch - 1}": f"{last_acc:.4f}"}), refresh=False)
            bar.update(1)
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        bar.set_postfix(loss=f"{total / seen:.4f}", dev_acc="evaluating")
        t1 = time.perf_counter()
        acc = last_acc = accuracy(method, dev_split, cfg.eval_batch_size)
        eval_s = time.perf_counter() - t1
        result.history.append(EpochLog(epoch, total / seen, acc, train_s, eval_s, train_cpu))
        if on_step is not None:
            on_step(Progress(epoch, cfg.epochs, done, steps, total / seen, acc))
        if acc > best_acc:
            best, best_acc, result.best_epoch = method.snapshot(), acc, epoch
        bar.set_postfix(loss=f"{total / seen:.4f}", dev_acc=f"{acc:.4f}", best=f"{best_acc:.4f}@{result.best_epoch}")
        bar.close()
    method.restore(best)
    method.train(False)
    result.best_dev_accuracy = best_acc
    return result


def prepare(bb: Backbone, train_examples: list[Example], dev_examples: list[Example], labels: list[str],
            cfg: TrainConfig, *, task: str, layer: int | None = None, log=None,
            **adapter_config) -> tuple[Method, Split, Split, TrainResult]:
    """Build the method, tokenize, and cache the frozen part's states if they fit the budget.

    `adapter_config` goes to `new_adapter` (prompt_length, generator, template, label_words,
    pooling, max_length, ...). Every configuration or text problem raises here (AdapterError,
    ValueError), before any training.
    """
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)                      # the generator's and head's initial weights
    method = build_method(bb, cfg.method, task=task, labels=labels, layer=layer, **adapter_config)
    train_split = make_split(method, train_examples, labels)
    dev_split = make_split(method, dev_examples, labels)
    result = TrainResult(method, labels, cfg)
    if cfg.cache_states and method.cacheable:
        result.cache_seconds, result.cache_mb = cache_splits(method, [train_split, dev_split],
                                                             cfg.cache_budget_mb, log)
        result.cached = train_split.store is not None
    return method, train_split, dev_split, result


def train(bb: Backbone, train_examples: list[Example], dev_examples: list[Example], labels: list[str],
          cfg: TrainConfig, *, task: str, layer: int | None = None, progress: bool = True, log=None,
          **adapter_config) -> TrainResult:
    """`prepare` then `fit`: returns the result with the best-dev weights in `result.method`."""
    method, train_split, dev_split, result = prepare(bb, train_examples, dev_examples, labels, cfg, task=task,
                                                     layer=layer, log=log, **adapter_config)
    return fit(method, train_split, dev_split, cfg, result, progress)

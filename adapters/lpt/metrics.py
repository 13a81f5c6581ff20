"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix.

    report = classification_report(gold, pred, labels)   # gold/pred: label indices
    print(format_report(report))
"""
from __future__ import annotations


def confusion_matrix(gold: list[int], pred: list[int], n: int) -> list[list[int]]:
    """m[i][j] = how many examples of true class i were predicted as class j."""
    m = [[0] * n for _ in range(n)]
    for g, p in zip(gold, pred):
        m[g][p] += 1
    return m


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def classification_report(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    """Everything `lpt eval` prints, as plain JSON-able values."""
    n = len(labels)
    m = confusion_matrix(gold, pred, n)
    per_class = {}
    for i, label in enumerate(labels):
        tp = m[i][i]
        predicted = sum(m[r][i] for r in range(n))
        support = sum(m[i])
        p, r = _safe_div(tp, predicted), _safe_div(tp, support)
        per_class[label] = {"precision": p, "recall": r, "f1": _safe_div(2 * p * r, p + r), "support": support}
    total = len(gold)
    return {
        "examples": total,
        "accuracy": _safe_div(sum(m[i][i] for i in range(n)), total),
        "macro_f1": sum(c["f1"] for c in per_class.values()) / n,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": m,
    }


def format_report(report: dict) -> str:
    labels = report["labels"]
    w = max(9, *(len(x) for x in labels))
    lines = [f"examples  {report['examples']}",
             f"accuracy  {report['accuracy']:.4f}",
             f"macro-F1  {report['macro_f1']:.4f}",
             "",
             f"{'label':<{w}}  precision  recall      f1  support"]
    for label, c in report["per_class"].items():
        lines.append(f"{label:<{w}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    cw = max(6, *(len(x) for x in labels), *(len(str(v)) for row in report["confusion_matrix"] for v in row))
    lines += ["", "confusion matrix (rows: true label, columns: predicted)",
              " " * w + "  " + "  ".join(f"{x:>{cw}}" for x in labels)]
    for label, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"{label:<{w}}  " + "  ".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)


def plot_confusion(report: dict, path: str, title: str = "") -> None:
    """Write the confusion matrix as a PNG (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, m = report["labels"], report["confusion_matrix"]
    size = 2.5 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in m) or 1
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    ax.set_title(title or f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

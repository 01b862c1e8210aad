"""PNG figures (matplotlib, headless): per experiment (confusion matrices, training curves) and per sweep
(accuracy per target and method, accuracy vs cost)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.io import atomic_write  # noqa: E402


def _save(fig, path: Path, pdf: bool = False) -> Path:
    """The figure as ``path`` (PNG) and, for a paper's figures (``pdf``), beside it as vector PDF."""
    out = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    if pdf:
        atomic_write(path.with_suffix(".pdf"), lambda p: fig.savefig(p, format="pdf", bbox_inches="tight"))
    plt.close(fig)
    return out


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> Path:
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 2), max(3.5, 0.45 * n + 1.5)))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if n > 10 else 0, fontsize=7 if n > 10 else 9)
    ax.set_yticks(range(n), classes, fontsize=7 if n > 10 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_training_curves(history: Sequence[dict], path: Path, title: str) -> Path:
    """Validation accuracy (and training loss where recorded) over every epoch of every step, in order."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if history:
        xs = list(range(len(history)))
        ax.plot(xs, [h.get("val_accuracy") for h in history], marker="o", ms=3, label="val accuracy")
        losses = [h.get("train_loss") for h in history]
        if any(v is not None for v in losses):
            ax2 = ax.twinx()
            ax2.plot(xs, [v if v is not None else float("nan") for v in losses], color="tab:red", alpha=0.6,
                     label="train loss")
            ax2.set_ylabel("train loss")
        starts = [i for i, h in enumerate(history) if h.get("epoch") == 0]
        for i in starts:
            ax.axvline(i, color="grey", lw=0.5, ls=":")
            ax.text(i, 1.0, str(history[i].get("source", history[i].get("step", ""))), fontsize=6, rotation=90,
                    va="top")
    else:
        ax.text(0.5, 0.5, "no training (method does not fine-tune)", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epoch (all steps in order; dotted lines start a step)")
    ax.set_ylabel("val accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    return _save(fig, path)


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _count(v: float | None) -> str:
    return "?" if v is None else str(int(v))


def plot_accuracy_per_target(comp: dict, path: Path) -> Path:
    """Grouped bars: mean test accuracy per target, one colour per method; error bars: the 95% bootstrap
    interval over the target's test examples (the one the comparison reports), none where predictions are
    missing."""
    targets, rows = comp["targets"], comp["methods"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(targets) + 2), 3.8))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(targets))
    for i, r in enumerate(rows):
        means = [_nan(r["per_target_accuracy"].get(t)) for t in targets]
        cis = [(r.get("per_target_accuracy_ci95") or {}).get(t) for t in targets]
        below = [0.0 if ci is None or np.isnan(m) else max(0.0, m - ci[0]) for m, ci in zip(means, cis)]
        above = [0.0 if ci is None or np.isnan(m) else max(0.0, ci[1] - m) for m, ci in zip(means, cis)]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=[below, above], capsize=2,
               label=r["method"])
    ax.set_xticks(x, targets, rotation=20 if len(targets) > 5 else 0)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{comp['dataset']} / {comp['model']}: accuracy per target (error bars: 95% bootstrap "
                 "intervals over test examples)")
    # Beside the axes, never over them: inside, the legend hid the bars of the best methods near 1.0.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(fig, path)


def plot_accuracy_vs_cost(comp: dict, path: Path) -> Path:
    """Mean accuracy over targets against peak memory, resident model memory and total compute, per method.

    On CPU the peak is the process's RSS (interpreter and libraries included); the resident model bytes show
    what the method itself holds (O(K) for ensemble/fusion, O(1) for GRASP)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = (("peak_memory_bytes", 2**20, "peak memory (MiB)"),
              ("resident_model_bytes", 2**20, "max resident model memory (MiB)"),
              ("flops_total_macs", 1e9, "total compute (GMACs)"))
    for ax, (key, scale, label) in zip(axes, panels):
        xs = [_nan(r[key]) / scale for r in comp["methods"]]
        for r in comp["methods"]:
            x, y = _nan(r[key]) / scale, _nan(r["accuracy_mean"])
            err = 0.0 if r["accuracy_std"] is None else r["accuracy_std"]
            ax.errorbar([x], [y], yerr=[err], fmt="o", capsize=3, label=r["method"])
            if not (np.isnan(x) or np.isnan(y)):
                ax.annotate(f"{r['method']} ({_count(r['max_models_resident'])} models)", (x, y), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        if any(np.isfinite(xs)):
            ax.set_xlim(0, 1.45 * np.nanmax(xs) or 1.0)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (mean over targets)")
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{comp['dataset']} / {comp['model']}: accuracy vs cost")
    return _save(fig, path)


def plot_drift_heatmap(matrix: Sequence[Sequence[float | None]], bins: Sequence[str], path: Path, title: str) -> Path:
    """Test accuracy of each bin's source model (rows) on each bin (columns), with the values written in."""
    m = np.array([[_nan(v) for v in row] for row in matrix], dtype=float)
    size = max(4.0, 0.7 * len(bins) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(bins)), bins, rotation=45, ha="right")
    ax.set_yticks(range(len(bins)), bins)
    ax.set_xlabel("test bin")
    ax.set_ylabel("source model's bin")
    for i in range(len(bins)):
        for j in range(len(bins)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if m[i, j] > 0.6 else "white", fontweight="bold" if i == j else None)
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_title(title)
    return _save(fig, path)


def plot_data_efficiency(eff: dict, path: Path) -> Path:
    """Test accuracy against the target train images a label budget leaves (log scale), one line per method with
    its 95% intervals: the mean over targets first, then each target. PNG and PDF."""
    panels = ["over targets", *eff["targets"]]
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols + 2.2, 3.3 * rows_n), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in eff["rows"]))
    for ax, panel in zip(axes.flat, panels):
        ticks: set[float] = set()
        for i, m in enumerate(methods):
            pts = sorted((r["target_train_images"], r["accuracy"], r["ci95"]) for r in eff["rows"]
                         if r["method"] == m and r["target"] == panel and r["target_train_images"]
                         and r["accuracy"] is not None)
            if not pts:
                continue
            ticks.update(p[0] for p in pts)
            # each method a little apart in x, so intervals at one budget do not hide each other
            shift = 1 + 0.025 * (i - (len(methods) - 1) / 2)
            xs, ys = [p[0] * shift for p in pts], [p[1] for p in pts]
            below = [0.0 if p[2] is None else max(0.0, p[1] - p[2][0]) for p in pts]
            above = [0.0 if p[2] is None else max(0.0, p[2][1] - p[1]) for p in pts]
            ax.errorbar(xs, ys, yerr=[below, above], marker="o", ms=3, capsize=2, label=m)
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [f"{t:.0f}" for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("target train images", fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.suptitle(f"{eff['dataset']} / {eff['model']}: accuracy against the label budget (95% intervals)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, pdf=True)

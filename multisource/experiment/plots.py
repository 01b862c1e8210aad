"""PNG figures written beside each experiment's metrics (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils.io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    out = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
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

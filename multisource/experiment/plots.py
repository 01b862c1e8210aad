"""Figures (matplotlib, headless), each as PNG and PDF: per experiment (confusion matrices, training curves) and per
sweep (accuracy per target, over time, vs cost, against the label budget; the drift heatmap).

Each ``figure_*`` builds the figure and each ``plot_*`` saves it, so a test can check the built figure's texts
for overlaps (:func:`overlapping_texts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.lines  # noqa: E402
import matplotlib.text  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    """The figure as ``path`` (PNG) and beside it as vector PDF (for a paper)."""
    out = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
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


def figure_training_curves(history: Sequence[dict], title: str):
    """Validation accuracy (and training loss where recorded) over every epoch of every step, in order; a dotted
    line where a step (a source, an adapter, the fine-tuning) starts, named in the legend."""
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    handles = []
    if history:
        xs = list(range(len(history)))
        handles += ax.plot(xs, [_nan(h.get("val_accuracy")) for h in history], marker="o", ms=3,
                           label="val accuracy")
        losses = [h.get("train_loss") for h in history]
        if any(v is not None for v in losses):
            ax2 = ax.twinx()
            handles += ax2.plot(xs, [_nan(v) for v in losses], color="tab:red", alpha=0.6, label="train loss")
            ax2.set_ylabel("train loss")
        starts = [i for i, h in enumerate(history) if i == 0 or h.get("step") != history[i - 1].get("step")]
        for n, i in enumerate(starts):
            line = ax.axvline(i - 0.5, color="grey", lw=0.8, ls=":", label="a step starts" if n == 0 else None)
            if n == 0:
                handles.append(line)
        if len(starts) <= 12:  # the step's name above the plot, where it starts (more would crowd)
            for i in starts:
                h = history[i]
                ax.annotate(_short(str(h.get("source", h.get("step", "")))), (i - 0.5, 1.02),
                            xycoords=("data", "axes fraction"), fontsize=6, rotation=60, ha="left", va="bottom")
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no training (method does not fine-tune)", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epoch (all steps in order)")
    ax.set_ylabel("val accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, pad=28 if history else None)
    return fig


def plot_training_curves(history: Sequence[dict], path: Path, title: str) -> Path:
    return _save(figure_training_curves(history, title), path)


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def wrap_label(label: str, width: int = 13) -> str:
    """A bin name broken into lines of about ``width`` characters at its ``_`` (a date range
    ``2004-01-01_to_2006-12-31`` becomes two lines), so long names stay readable side by side."""
    if len(label) <= width:
        return label
    lines, line = [], ""
    for part in label.split("_"):
        piece = part if not line else f"{line}_{part}"
        if line and len(piece) > width:
            lines.append(line + "_")
            line = part
        else:
            line = piece
    return "\n".join([*lines, line])


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of ``fig`` whose drawn boxes overlap (tick labels, titles, axis labels,
    annotations, legend entries): an unreadable figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks, drawn = set(), []  # a tick label outside its axis's view limits is not drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                labels = (tick.label1, tick.label2)
                ticks.update(map(id, labels))
                if lo - slack <= tick.get_loc() <= hi + slack:
                    drawn += [t for t in labels if t.get_visible()]
    texts = [t for t in fig.findobj(matplotlib.text.Text) if id(t) not in ticks and t.get_visible()] + drawn
    texts = [t for t in texts if t.get_text().strip() and t.get_figure() is not None]
    boxes = [(t.get_text(), t.get_window_extent(renderer).expanded(0.98, 0.9)) for t in texts]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _models(v: float | None) -> str:
    return "? models" if v is None else f"{int(v)} model{'' if int(v) == 1 else 's'}"


def _errors(means: Sequence[float], cis: Sequence[list | None]) -> list[list[float]]:
    """Error bar lengths below and above each mean from its 95% interval (none where there is no interval)."""
    below = [0.0 if ci is None or np.isnan(m) else max(0.0, m - ci[0]) for m, ci in zip(means, cis)]
    above = [0.0 if ci is None or np.isnan(m) else max(0.0, ci[1] - m) for m, ci in zip(means, cis)]
    return [below, above]


def _legend_beside(ax, **kw) -> None:
    # Beside the axes, never over them: inside, the legend hid the bars of the best methods near 1.0.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def _target_ticks(ax, targets: Sequence[str]) -> None:
    labels = [wrap_label(t) for t in targets]
    ax.set_xticks(range(len(targets)), labels, fontsize=8 if len(targets) <= 8 else 7)


def _width_for(targets: Sequence[str], per_target: float) -> float:
    """A figure wide enough that every target's (wrapped) label has its own room."""
    longest = max((max(len(line) for line in wrap_label(t).split("\n")) for t in targets), default=4)
    return max(6.0, len(targets) * max(per_target, 0.085 * longest + 0.3) + 2.8)


def figure_accuracy_per_target(comp: dict):
    """Grouped bars: mean test accuracy per target, one colour per method; error bars: the 95% bootstrap
    interval over the target's test examples (the one the comparison reports), none where predictions are
    missing."""
    targets, rows = comp["targets"], comp["methods"]
    fig, ax = plt.subplots(figsize=(_width_for(targets, 0.25 * len(rows) + 0.4), 4.0))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(targets))
    for i, r in enumerate(rows):
        means = [_nan(r["per_target_accuracy"].get(t)) for t in targets]
        cis = [(r.get("per_target_accuracy_ci95") or {}).get(t) for t in targets]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=_errors(means, cis), capsize=2,
               label=r["method"])
    _target_ticks(ax, targets)
    ax.set_xlabel("target bin")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{comp['dataset']} / {comp['model']}: accuracy per target\n(error bars: 95% bootstrap intervals "
                 "over test examples)", fontsize=10)
    _legend_beside(ax)
    return fig


def plot_accuracy_per_target(comp: dict, path: Path) -> Path:
    return _save(figure_accuracy_per_target(comp), path)


def figure_accuracy_over_time(comp: dict):
    """Test accuracy on each target bin in time order, one line per method with its 95% bootstrap intervals, and
    chance (one over the number of classes): the picture of temporal drift."""
    targets, rows = comp["targets"], comp["methods"]
    fig, ax = plt.subplots(figsize=(_width_for(targets, 1.0), 4.0))
    x = np.arange(len(targets))
    for i, r in enumerate(rows):
        means = [_nan(r["per_target_accuracy"].get(t)) for t in targets]
        cis = [(r.get("per_target_accuracy_ci95") or {}).get(t) for t in targets]
        shift = 0.06 * (i - (len(rows) - 1) / 2)  # methods a little apart, so intervals do not hide each other
        ax.errorbar(x + shift, means, yerr=_errors(means, cis), marker="o", ms=4, capsize=2, label=r["method"])
    if comp.get("num_classes"):
        ax.axhline(1 / comp["num_classes"], color="grey", ls="--", lw=1, label=f"chance (1/{comp['num_classes']})")
    _target_ticks(ax, targets)
    ax.set_xlabel("target bin (in time order)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{comp['dataset']} / {comp['model']}: accuracy over time (95% bootstrap intervals)", fontsize=10)
    _legend_beside(ax)
    return fig


def plot_accuracy_over_time(comp: dict, path: Path) -> Path:
    return _save(figure_accuracy_over_time(comp), path)


def figure_accuracy_vs_cost(comp: dict):
    """Mean accuracy over targets against peak memory, resident model memory and total compute, per method: one
    marker per method, named in one legend beside the panels (labels on the points overlapped).

    On CPU the peak is the process's RSS (interpreter and libraries included); the resident model bytes show
    what the method itself holds (O(K) for ensemble/fusion, O(1) for GRASP)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    # One target has no spread over targets: its error bar is then the target's 95% bootstrap interval over the
    # test examples (what the comparison reports for it), and the axis label says which one is drawn.
    single = comp["targets"][0] if len(comp["targets"]) == 1 else None
    panels = (("peak_memory_bytes", 2**20, "peak memory (MiB)"),
              ("resident_model_bytes", 2**20, "max resident model memory (MiB)"),
              ("flops_total_macs", 1e9, "total compute (GMACs)"))
    markers = "osD^v<>pPX*h"
    for ax, (key, scale, label) in zip(axes, panels):
        xs = [_nan(r[key]) / scale for r in comp["methods"]]
        for i, r in enumerate(comp["methods"]):
            x, y = _nan(r[key]) / scale, _nan(r["accuracy_mean"])
            if single is not None:
                err = _errors([y], [(r.get("per_target_accuracy_ci95") or {}).get(single)])
            else:
                err = [[0.0 if r["accuracy_std"] is None else r["accuracy_std"]]] * 2
            ax.errorbar([x], [y], yerr=err, fmt=markers[i % len(markers)], capsize=3,
                        label=f"{r['method']} ({_models(r['max_models_resident'])} resident)")
        if any(np.isfinite(xs)):
            ax.set_xlim(0, 1.15 * np.nanmax(xs) or 1.0)
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel(f"test accuracy on {single}\n(95% bootstrap interval)" if single is not None
                       else "test accuracy\n(mean over targets ± std)")
    _legend_beside(axes[-1])
    fig.suptitle(f"{comp['dataset']} / {comp['model']}: accuracy vs cost")
    fig.tight_layout()
    return fig


def plot_accuracy_vs_cost(comp: dict, path: Path) -> Path:
    return _save(figure_accuracy_vs_cost(comp), path)


def figure_drift_heatmap(matrix: Sequence[Sequence[float | None]], bins: Sequence[str], title: str,
                         counts: Sequence[int] | None = None):
    """Test accuracy of each bin's source model (rows) on each bin (columns), with the values written in and,
    under each test bin, its number of test images (``counts``)."""
    m = np.array([[_nan(v) for v in row] for row in matrix], dtype=float)
    size = max(4.0, 0.75 * len(bins) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
    xlabels = [wrap_label(b) + ("" if counts is None else f"\nn={counts[j]}") for j, b in enumerate(bins)]
    ax.set_xticks(range(len(bins)), xlabels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(bins)), [_short(b, 28) for b in bins], fontsize=7)
    ax.set_xlabel("test bin" + ("" if counts is None else " (n: its test images)"))
    ax.set_ylabel("source model's bin")
    for i in range(len(bins)):
        for j in range(len(bins)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7 if len(bins) > 8 else 8,
                        color="black" if m[i, j] > 0.6 else "white", fontweight="bold" if i == j else None)
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_title(title, fontsize=10)
    return fig


def plot_drift_heatmap(matrix: Sequence[Sequence[float | None]], bins: Sequence[str], path: Path, title: str,
                       counts: Sequence[int] | None = None) -> Path:
    return _save(figure_drift_heatmap(matrix, bins, title, counts), path)


def plot_num_sources(summary: dict, path: Path) -> Path:
    return _save(figure_num_sources(summary), path)


def figure_num_sources(summary: dict):
    """Two panels against the number of sources K, one line per method: test accuracy (mean over targets) with
    its 95% interval, and the most models held at once. PNG and PDF."""
    rows = [r for r in summary["rows"] if r["target"] == "over targets"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ks = summary["num_sources"]
    fig, (acc_ax, mem_ax) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for i, m in enumerate(methods):
        pts = sorted((r["num_sources"], r["accuracy"], r["ci95"], r["max_models_resident"]) for r in rows
                     if r["method"] == m and r["accuracy"] is not None)
        if not pts:
            continue
        shift = 1 + 0.02 * (i - (len(methods) - 1) / 2)  # methods a little apart, so intervals stay visible
        xs = [p[0] * shift for p in pts]
        below = [0.0 if p[2] is None else max(0.0, p[1] - p[2][0]) for p in pts]
        above = [0.0 if p[2] is None else max(0.0, p[2][1] - p[1]) for p in pts]
        line = acc_ax.errorbar(xs, [p[1] for p in pts], yerr=[below, above], marker="o", ms=3, capsize=2, label=m)
        mem_ax.plot(xs, [p[3] for p in pts], marker="o", ms=3, color=line[0].get_color(), label=m)
    common = summary.get("common_targets", summary["targets"])
    where = common[0] if len(common) == 1 else "mean over targets"
    for ax, label in ((acc_ax, f"test accuracy ({where})"), (mem_ax, "models held at once (max)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("number of sources K (the K nearest earlier bins)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.92))
    fig.suptitle(f"{summary['dataset']} / {summary['model']}: accuracy (95% intervals) and memory against K",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_stream(summary: dict, path: Path) -> Path:
    return _save(figure_stream(summary), path)


def figure_stream(summary: dict):
    """A stream over its bins, one line per method: accuracy on each bin's own test split and on the next bin's
    (95% intervals, chance dashed), target epochs summed so far (stream solid, ``past`` dotted where it ran) and
    the models held at once. PNG and PDF."""
    bins = summary["bins"]
    rows = [r for r in summary["rows"] if r["target"] in bins]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(max(10.0, 0.9 * len(bins) + 2), 7.0), sharex=True)
    (own_ax, next_ax), (epochs_ax, models_ax) = axes
    x_of = {b: i for i, b in enumerate(bins)}
    for i, m in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: x_of[r["target"]])
        shift = 0.06 * (i - (len(methods) - 1) / 2)  # methods a little apart, so intervals stay visible
        xs = np.array([x_of[r["target"]] for r in mine], dtype=float) + shift
        own = [_nan(r["accuracy"]) for r in mine]
        line = own_ax.errorbar(xs, own, yerr=_errors(own, [r["ci95"] for r in mine]), marker="o", ms=3,
                               capsize=2, label=m)
        color = line[0].get_color()
        nxt = [r for r in mine if r["next_bin"]]
        next_ax.errorbar([x_of[r["target"]] + shift for r in nxt], [_nan(r["next_accuracy"]) for r in nxt],
                         yerr=_errors([_nan(r["next_accuracy"]) for r in nxt], [r["next_ci95"] for r in nxt]),
                         marker="o", ms=3, capsize=2, color=color)
        epochs_ax.plot(xs, [_nan(r["cumulative_target_epochs"]) for r in mine], marker="o", ms=3, color=color)
        past = [_nan(r["past_cumulative_target_epochs"]) for r in mine]
        if any(np.isfinite(past)):
            epochs_ax.plot(xs, past, ls=":", marker="x", ms=3, color=color)
        models_ax.plot(xs, [_nan(r["max_models_resident"]) for r in mine], marker="o", ms=3, color=color)
    # both accuracy panels on one range that holds every interval (from 0 the differences between methods near
    # 1.0 vanish); chance is drawn when it falls inside
    ends = [v for r in rows for key, ci in (("accuracy", "ci95"), ("next_accuracy", "next_ci95"))
            for v in ([r[key]] + list(r[ci] or [])) if v is not None]
    low, high = (max(0.0, min(ends) - 0.02), min(1.0, max(ends)) + 0.01) if ends else (0.0, 1.05)
    chance = 1 / summary["num_classes"] if summary.get("num_classes") else None
    for ax in (own_ax, next_ax):
        ax.set_ylim(low, high)
        if chance is not None and chance >= low:
            ax.axhline(chance, color="grey", ls="--", lw=1)
    for ax, label in ((own_ax, "test accuracy, own bin"), (next_ax, "test accuracy on the next bin"),
                      (epochs_ax, "target epochs so far"), (models_ax, "models held at once")):
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    models_ax.set_ylim(0, max([_nan(r["max_models_resident"]) for r in rows] + [1.0]) + 1)
    models_ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in (epochs_ax, models_ax):
        _target_ticks(ax, bins)
        ax.set_xlabel("bin (in time order)", fontsize=8)
    handles, labels = own_ax.get_legend_handles_labels()
    handles += [matplotlib.lines.Line2D([], [], color="black", ls="-"), matplotlib.lines.Line2D([], [], color="black",
                                                                                                ls=":", marker="x")]
    labels += ["stream (epochs)", "past (epochs)"]
    if chance is not None and chance >= low:
        handles.append(matplotlib.lines.Line2D([], [], color="grey", ls="--"))
        labels.append(f"chance (1/{summary['num_classes']})")
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.92))
    fig.suptitle(f"{summary['dataset']} / {summary['model']}: a stream over {len(bins)} bins (95% intervals)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_data_efficiency(eff: dict, path: Path) -> Path:
    return _save(figure_data_efficiency(eff), path)


def figure_data_efficiency(eff: dict):
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
    return fig

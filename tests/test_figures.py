"""Figures for a paper: no two texts of a figure overlap (long date-range bin names, many methods), the error
bars are the reported 95% intervals, and every sweep figure is written as PNG and PDF."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from multisource.experiment import plots  # noqa: E402
from multisource.experiment.table import latex_escape, latex_table  # noqa: E402

# Bin names as own-data imports write them (time ranges), the case whose labels ran into one line.
LONG_BINS = [f"{2000 + 2 * i}-01-01_to_{2001 + 2 * i}-12-31" for i in range(8)]
METHODS = ["ensemble", "fusion", "grasp", "grasp[nearest-first]", "pearl", "target_only", "source_finetune",
           "ties"]


def comparison(targets=LONG_BINS, methods=METHODS) -> dict:
    rng = np.random.default_rng(0)
    rows = []
    for i, m in enumerate(methods):
        acc = {t: float(rng.uniform(0.4, 0.99)) for t in targets}
        rows.append({"method": m, "per_target_accuracy": acc,
                     "per_target_accuracy_ci95": {t: [a - 0.03, min(1.0, a + 0.02)] for t, a in acc.items()},
                     "accuracy_mean": float(np.mean(list(acc.values()))), "accuracy_std": 0.02,
                     # several methods at nearly the same cost: labels on the points used to overlap here
                     "peak_memory_bytes": 400 * 2**20 + i * 2**18, "resident_model_bytes": (1 + i % 2) * 2**20,
                     "flops_total_macs": 2e9 + i * 1e7, "max_models_resident": 1 + i % 2})
    return {"dataset": "my_photos", "model": "tiny-resnet", "targets": list(targets), "methods": rows,
            "num_classes": 10, "protocol": "leave-one-out", "reference": "grasp"}


def no_overlaps(fig) -> None:
    found = plots.overlapping_texts(fig)
    plt.close(fig)
    assert found == [], f"overlapping texts: {found[:5]}"


def test_the_overlap_check_finds_overlapping_labels():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks(range(4), [f"{b}" for b in LONG_BINS[:4]])  # four long names on a small axis
    assert plots.overlapping_texts(fig)
    plt.close(fig)


@pytest.mark.parametrize("build", [plots.figure_accuracy_per_target, plots.figure_accuracy_over_time,
                                   plots.figure_accuracy_vs_cost])
@pytest.mark.parametrize("n_targets", [2, 8])
def test_sweep_figures_keep_long_bin_names_readable(build, n_targets):
    no_overlaps(build(comparison(LONG_BINS[:n_targets])))


def test_error_bars_are_the_reported_intervals():
    comp = comparison(LONG_BINS[:3], ["grasp", "fusion"])
    fig = plots.figure_accuracy_over_time(comp)
    ax = fig.axes[0]
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    wanted = sorted((round(lo, 6), round(hi, 6)) for r in comp["methods"]
                    for lo, hi in r["per_target_accuracy_ci95"].values())
    drawn = sorted((round(float(min(s[:, 1])), 6), round(float(max(s[:, 1])), 6)) for s in segments)
    assert drawn == wanted
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(0.1)
    plt.close(fig)


def _vertical_bars(ax) -> list[tuple[float, float]]:
    return sorted((round(float(min(s[:, 1])), 6), round(float(max(s[:, 1])), 6))
                  for coll in ax.collections for s in coll.get_segments())


def test_accuracy_vs_cost_draws_the_targets_interval_when_there_is_one_target():
    """The demo's case: one target has no spread over targets, so each method's bar is its bootstrap interval on
    that target (none was drawn under a '± std' label before); with several targets, ± std over targets."""
    one = comparison(LONG_BINS[:1], ["grasp", "fusion"])
    for r in one["methods"]:
        r["accuracy_std"] = None  # as the summary writes it for one target
    fig = plots.figure_accuracy_vs_cost(one)
    wanted = sorted((round(lo, 6), round(hi, 6)) for r in one["methods"] for lo, hi in
                    r["per_target_accuracy_ci95"].values())
    assert all(_vertical_bars(ax) == wanted for ax in fig.axes[:3])
    assert "95% bootstrap interval" in fig.axes[0].get_ylabel() and LONG_BINS[0] in fig.axes[0].get_ylabel()
    plt.close(fig)
    several = comparison(LONG_BINS[:3], ["grasp"])
    fig = plots.figure_accuracy_vs_cost(several)
    mean = several["methods"][0]["accuracy_mean"]
    assert _vertical_bars(fig.axes[0]) == [(round(mean - 0.02, 6), round(mean + 0.02, 6))]
    assert "± std" in fig.axes[0].get_ylabel()
    plt.close(fig)


def test_drift_heatmap_names_every_bin_and_its_test_count():
    bins = [f"{2000 + i}-01-01_to_{2000 + i}-12-31" for i in range(12)]
    matrix = np.random.default_rng(1).uniform(0.2, 1.0, (12, 12)).tolist()
    fig = plots.figure_drift_heatmap(matrix, bins, "my_photos / tiny-resnet: test accuracy", counts=[40] * 12)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert all("n=40" in label for label in labels) and len(labels) == 12
    no_overlaps(fig)


def test_training_curves_draw_their_step_lines_and_a_legend():
    history = [{"step": s, "source": f"era_{s + 1}", "epoch": e, "val_accuracy": 0.5 + 0.05 * s, "train_loss": 1.0}
               for s in range(4) for e in range(1, 4)]
    fig = plots.figure_training_curves(history, "grasp -> era_5 (trial 1)")
    ax = fig.axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 4  # one per step
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["val accuracy", "train loss", "a step starts"]
    no_overlaps(fig)


def test_data_efficiency_figure_is_readable():
    rows = [{"method": m, "target_fraction": f, "target": t, "target_train_images": 400 * f, "accuracy": 0.5 + f / 3,
             "ci95": [0.45 + f / 3, 0.55 + f / 3]}
            for m in METHODS[:4] for f in (0.05, 0.25, 1.0) for t in ("over targets", *LONG_BINS[:4])]
    no_overlaps(plots.figure_data_efficiency({"dataset": "d", "model": "m", "targets": LONG_BINS[:4], "rows": rows}))


def test_latex_table_is_booktabs_with_escaped_cells():
    comp = {"dataset": "my_photos", "model": "tiny-resnet", "protocol": "leave-one-out", "reference": "grasp",
            "targets": ["era_1"], "methods": [{"method": "grasp[near_first]", "num_experiments": 2, "num_failed": 0,
                                               "accuracy_mean": 0.9, "accuracy_std": 0.01, "missing_targets": [],
                                               "per_target_accuracy": {"era_1": 0.9}}]}
    tex = latex_table(comp)
    assert tex.count("\\toprule") == tex.count("\\midrule") == tex.count("\\bottomrule") == 1
    body = tex.split("\\midrule\n")[1].split("\\\\")[0]
    assert body.startswith("grasp[near\\_first] & 2 & 0 & 0.9000 $\\pm$ 0.0100")
    assert latex_escape("50% & $x_1$") == "50\\% \\& \\$x\\_1\\$"


def test_every_figure_is_written_as_png_and_pdf(tmp_path):
    history = [{"step": "finetune", "epoch": e, "val_accuracy": 0.5, "train_loss": 1.0} for e in range(3)]
    written = [plots.plot_training_curves(history, tmp_path / "curves.png", "t"),
               plots.plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "confusion.png", "t"),
               plots.plot_accuracy_over_time(comparison(LONG_BINS[:2], METHODS[:2]), tmp_path / "time.png")]
    for png in written:
        pdf = png.with_suffix(".pdf")
        assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:5] == b"%PDF-"

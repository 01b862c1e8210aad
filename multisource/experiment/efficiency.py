"""Accuracy against the label budget: when does combining past models pay off over fine-tuning on the target?

A sweep with ``--target_fractions 0.05 0.25 1`` runs every method at each share of the target's train and val
images (results of each budget kept apart, ``budgets/fraction-<F>/``). This module reads them all back and
writes ``data_efficiency.{json,csv,md,png,pdf}`` beside the protocol's summaries: per method and budget, the
target train images, test accuracy with its 95% interval (per target, and the mean over targets with a
stratified bootstrap interval), and the paired difference to TARGET_ONLY (the row that learns from the target
alone) on the same test
examples, so a reader sees at which budgets a transfer method can be told apart from training on the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.folder import DataError
from ..data.loaders import open_dataset
from ..measure.statistics import holm, mean_over_targets_interval
from ..methods import no_transfer_method
from ..models.factory import resolve_model
from ..paths import budget_fractions, model_results_dir
from ..utils.seed import derive_seed
from .plots import plot_data_efficiency
from .protocols import DEFAULT_PROTOCOL, canonical_protocol
from .summary import _dataset_name, collect, compare_collected, paired_vs_reference, screened_key, summary_dir
from .table import write_rows_summary

EFFICIENCY_SCHEMA_VERSION = 1


def budgets_on_disk(results_dir: Path, dataset: str, model: str, protocol: str) -> list[float]:
    """The label budgets with results for (dataset, model, protocol), ascending; 1 when the whole-target
    results exist."""
    base = model_results_dir(results_dir, dataset, model, protocol)
    return budget_fractions(base) + ([1.0] if collect(results_dir, dataset, model, protocol) else [])


def train_images_of(records: list, fraction: float) -> dict[str, int]:
    """target -> the target train images a budget left (the same for every method of a target). A result
    recorded before budgets existed ran on the whole split: its count comes from the dataset's card."""
    found = {r.target: r.budget.target_train_split for r in records if r.budget.target_train_split is not None}
    missing = {r.target for r in records} - set(found)
    if missing and fraction == 1:
        root = next((r.extra.get("options", {}).get("data_root") for r in records), None)
        try:
            handle = open_dataset(records[0].config.dataset or records[0].dataset, root)
            found.update({t: handle.split_count(t, "train") for t in missing})
        except (DataError, KeyError, OSError, ValueError):
            pass  # the dataset is not where its results say: those points stay without a count
    return found


def paired_vs_baseline(summaries: dict, correct: dict, baseline: str) -> dict[str, dict]:
    """Every other row minus ``baseline`` on the same test examples (per target a paired bootstrap interval,
    over targets a paired t-test), Holm-corrected across the rows."""
    if baseline not in summaries:
        return {}
    paired = {m: paired_vs_reference(m, s, summaries[baseline], correct.get(m, {}), correct.get(baseline, {}))
              for m, s in summaries.items() if m != baseline}
    for m, p_holm in holm({m: p.get("p_value") for m, p in paired.items()}).items():
        paired[m]["p_value_holm"] = p_holm
    return paired


def budget_rows(key: str, model: str, protocol: str, fraction: float, found: dict,
                baseline: str) -> tuple[list[dict], dict]:
    """One row per (method, target) and per method over targets at one budget; and the budget's comparison."""
    summaries, correct, comp = compare_collected(key, model, found, protocol, fraction)
    versus = paired_vs_baseline(summaries, correct, baseline)
    rows = []
    for row in comp["methods"]:
        method = row["method"]
        records = found[method]["finished"]
        paired = versus.get(method) or {}
        per_images = train_images_of(records, fraction)
        for t in comp["targets"]:
            accuracy = row["per_target_accuracy"].get(t)
            if accuracy is None:
                continue
            diff = (paired.get("per_target") or {}).get(t) or {}
            rows.append({"method": method, "target_fraction": fraction, "target": t,
                         "target_train_images": per_images.get(t), "accuracy": accuracy,
                         "ci95": (row.get("per_target_accuracy_ci95") or {}).get(t),
                         "diff_vs_baseline": diff.get("mean_difference"), "diff_ci95": diff.get("ci95"),
                         "distinguishable": diff.get("distinguishable"), "p_value_holm": None})
        parts = [correct[method][t] for t in comp["targets"] if t in correct.get(method, {})]
        interval = (mean_over_targets_interval(parts, seed=derive_seed(0, "over-targets", method, f"{fraction:g}"))
                    if len(parts) == len(comp["targets"]) else None)
        p_holm = paired.get("p_value_holm")
        rows.append({"method": method, "target_fraction": fraction, "target": "over targets",
                     "target_train_images": float(np.mean(list(per_images.values()))) if per_images else None,
                     "accuracy": row["accuracy_mean"],
                     "ci95": interval, "diff_vs_baseline": paired.get("mean_difference"), "diff_ci95": None,
                     "distinguishable": None if p_holm is None else p_holm < 0.05, "p_value_holm": p_holm})
    return rows, comp


def data_efficiency(results_dir: str | Path, dataset: str, model: str,
                    protocol: str = DEFAULT_PROTOCOL) -> dict[str, Any]:
    """Every budget's rows of (dataset, model, protocol), and per transfer method the budgets at which it can be
    told apart from the no-transfer baseline (TARGET_ONLY) (a paired interval on some target that excludes 0, or p_holm < 0.05 over
    targets)."""
    results_dir, model, protocol = Path(results_dir), resolve_model(model).name, canonical_protocol(protocol)
    name = _dataset_name(dataset)
    fractions = budgets_on_disk(results_dir, name, model, protocol)
    if not fractions:
        raise FileNotFoundError(f"No {protocol} results of {name} / {model} under {results_dir}; run a sweep with "
                                "--target_fractions first.")
    rows, targets, baseline = [], [], no_transfer_method()
    for fraction in fractions:
        found = collect(results_dir, name, model, protocol, fraction)
        budget, comp = budget_rows(screened_key(dataset, found), model, protocol, fraction, found, baseline)
        rows += budget
        targets += [t for t in comp["targets"] if t not in targets]
    told_apart: dict[str, dict[str, list]] = {}  # where a transfer method beats (or loses to) the baseline
    for r in rows:
        if r["method"] == baseline or not r["distinguishable"]:
            continue
        side = "better" if r["diff_vs_baseline"] > 0 else "worse"
        entry = told_apart.setdefault(r["method"], {"better": [], "worse": []})
        entry[side].append({"target": r["target"], "target_fraction": r["target_fraction"]})
    return {"schema_version": EFFICIENCY_SCHEMA_VERSION, "kind": "data_efficiency", "dataset": name,
            "model": model, "protocol": protocol, "target_fractions": fractions, "targets": targets,
            "baseline": baseline, "rows": rows, "distinguishable_from_baseline": told_apart,
            "notes": {"target_fraction": "the share of each target's train and val images a method could use: a "
                                         "stratified subsample (at least one image per class), the same for every "
                                         "method of a (target, budget, trial); the test split is whole",
                      "ci95": "per target: a percentile bootstrap over the target's test examples (renderings of "
                              "one example together); over targets: the mean of the per-target accuracies with a "
                              "stratified bootstrap (each target's test examples resampled on their own)",
                      "diff_vs_baseline": f"method - {baseline} (learns from the target alone) test accuracy "
                                          "on the same examples; per target with a paired bootstrap interval "
                                          "(distinguishable when it excludes 0), over targets with the "
                                          "Holm-corrected paired t-test p (p_value_holm)"}}


def _cell(accuracy: float | None, ci: list | None) -> str:
    if accuracy is None:
        return "-"
    return f"{accuracy:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _diff_cell(row: dict) -> str:
    d = row["diff_vs_baseline"]
    if d is None:
        return "-"
    if row["target"] == "over targets":
        p = row["p_value_holm"]
        return f"{d:+.3f} (p {'-' if p is None else format(p, '.3g')})"
    ci = row["diff_ci95"]
    return f"{d:+.3f}" + ("" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]") + ("*" if row["distinguishable"]
                                                                                    else "")


def efficiency_markdown(eff: dict) -> str:
    """Two tables over budgets (columns): accuracy with intervals, and the difference to the baseline."""
    fractions, frame = eff["target_fractions"], pd.DataFrame(eff["rows"])
    over = frame[frame["target"] == "over targets"]
    methods = list(dict.fromkeys(over["method"]))
    images = {f: over[over["target_fraction"] == f]["target_train_images"].dropna() for f in fractions}
    head = [f"{f:g} ({images[f].iloc[0]:.0f} images)" if len(images[f]) else f"{f:g}" for f in fractions]
    lines = [f"# {eff['dataset']} / {eff['model']}: accuracy against the label budget (protocol: {eff['protocol']})",
             "", "Columns: the share of each target's train and val images a method could use (mean target train "
             "images over targets). Test accuracy, mean over targets, with a 95% stratified bootstrap interval:",
             "", "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(fractions)]
    for m in methods:
        cells = []
        for f in fractions:
            hit = over[(over["method"] == m) & (over["target_fraction"] == f)]
            cells.append("-" if hit.empty else _cell(hit.iloc[0]["accuracy"], hit.iloc[0]["ci95"]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ref = eff["baseline"]
    lines += ["", f"Difference to {ref} per target (paired 95% interval on the same test examples; * where it "
              "excludes 0) and over targets (Holm-corrected p):", "",
              "| method | target | " + " | ".join(f"{f:g}" for f in fractions) + " |",
              "|---|---|" + "---|" * len(fractions)]
    for m in (m for m in methods if m != ref):
        for t in [*eff["targets"], "over targets"]:
            cells = []
            for f in fractions:
                hit = frame[(frame["method"] == m) & (frame["target"] == t) & (frame["target_fraction"] == f)]
                cells.append("-" if hit.empty else _diff_cell(hit.iloc[0].to_dict()))
            lines.append(f"| {m} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "Where each transfer method can be told apart from " + ref + ":"]
    for m in (m for m in methods if m != ref):
        found = eff["distinguishable_from_baseline"].get(m, {"better": [], "worse": []})
        words = [f"{side} on " + ", ".join(f"{e['target']} at {e['target_fraction']:g}" for e in found[side])
                 for side in ("better", "worse") if found[side]]
        lines.append(f"- {m}: " + ("; ".join(words) if words else "at no budget (every interval includes 0)"))
    return "\n".join(lines) + "\n"


def write_data_efficiency(results_dir: str | Path, dataset: str, model: str, protocol: str = DEFAULT_PROTOCOL,
                          plots: bool = True) -> dict[str, Path]:
    """Write data_efficiency.{json,csv,md} (and the plot as PNG and PDF) into the protocol's summaries."""
    eff = data_efficiency(results_dir, dataset, model, protocol)
    out = summary_dir(Path(results_dir), eff["dataset"], eff["model"], eff["protocol"])
    return write_rows_summary(out, "data_efficiency", eff, efficiency_markdown(eff),
                              plot_data_efficiency if plots else None)

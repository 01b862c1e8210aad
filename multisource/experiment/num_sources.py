"""Accuracy and models resident against the number of sources K: does a method keep gaining from older bins,
and at what memory?

A sweep with ``--num_sources 1 2 4 8 12`` runs every method with each target's K nearest earlier bins as its
sources (protocol ``window:K``, results kept apart per K). This module reads every K back and writes
``num_sources.{json,csv,md,png,pdf}`` into ``<dataset>/<model>/protocols/``, beside the per-K folders: per
method, K and target the test accuracy with its 95% interval (over the target's test examples, trials averaged
per example), the paired difference to the reference method at that K on the same examples, the most models it
held at once, their bytes, its time and its target epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..measure.statistics import mean_over_targets_interval
from ..models.factory import resolve_model
from ..paths import model_results_dir
from ..utils.seed import derive_seed
from .plots import plot_num_sources
from .summary import _dataset_name, collect, compare_collected, screened_key
from .table import write_rows_summary

NUM_SOURCES_SCHEMA_VERSION = 1
OVER_TARGETS = "over targets"


def _compared(results_dir: Path, dataset: str, model: str, k: int, fraction: float) -> tuple[dict, dict] | None:
    """(per-example correctness, comparison) of the sources count ``k``; None when K has no results."""
    protocol = f"window:{k}"
    found = collect(results_dir, _dataset_name(dataset), model, protocol, fraction)
    if not found:
        return None
    _, correct, comp = compare_collected(screened_key(dataset, found), model, found, protocol, fraction)
    return correct, comp


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else float(sum(values) / len(values))


def num_sources_rows(k: int, correct: dict, comp: dict, common: Sequence[str]) -> list[dict]:
    """One row per (method, target) and per method over ``common`` (the targets every K has: a larger K skips
    the early targets, and a mean over other targets would mix their difficulty into the curve)."""
    rows = []
    for row in comp["methods"]:
        method = row["method"]
        cost = {"max_models_resident": row["max_models_resident"], "resident_model_bytes": row["resident_model_bytes"],
                "time_s": row["time_s"], "target_epochs": row["target_epochs"]}
        per_target = (comp["paired_vs_reference"].get(method) or {}).get("per_target") or {}
        for t in comp["targets"]:
            accuracy = row["per_target_accuracy"].get(t)
            if accuracy is None:
                continue
            diff = per_target.get(t) or {}
            rows.append({"method": method, "num_sources": k, "target": t, "accuracy": accuracy,
                         "ci95": (row.get("per_target_accuracy_ci95") or {}).get(t),
                         "diff_vs_reference": diff.get("mean_difference"), "diff_ci95": diff.get("ci95"), **cost})
        parts = [correct.get(method, {}).get(t) for t in common]
        interval = (mean_over_targets_interval(parts, seed=derive_seed(0, "over-targets", method, f"K{k}"))
                    if common and all(p is not None for p in parts) else None)
        is_reference = method == comp["reference"]
        rows.append({"method": method, "num_sources": k, "target": OVER_TARGETS,
                     "accuracy": _mean([row["per_target_accuracy"].get(t) for t in common]), "ci95": interval,
                     "diff_vs_reference": None if is_reference else _mean(
                         [(per_target.get(t) or {}).get("mean_difference") for t in common]),
                     "diff_ci95": None, **cost})
    return rows


def num_sources_summary(results_dir: str | Path, dataset: str, model: str, counts: Sequence[int],
                        fraction: float = 1.0) -> dict[str, Any]:
    """Every K's rows of (dataset, model) at the label budget ``fraction``."""
    results_dir, model = Path(results_dir), resolve_model(model).name
    per_k = {k: got for k in sorted(counts) if (got := _compared(results_dir, dataset, model, k, fraction))}
    if not per_k:
        raise FileNotFoundError(f"No results for --num_sources {list(counts)} of {_dataset_name(dataset)} / {model} "
                                f"under {results_dir}; run the sweep with --num_sources first.")
    targets: list[str] = []
    for _, comp in per_k.values():
        targets += [t for t in comp["targets"] if t not in targets]
    common = [t for t in targets if all(t in comp["targets"] for _, comp in per_k.values())]
    rows = [r for k, (correct, comp) in per_k.items() for r in num_sources_rows(k, correct, comp, common)]
    reference = next(iter(per_k.values()))[1]["reference"]
    return {"schema_version": NUM_SOURCES_SCHEMA_VERSION, "kind": "num_sources", "dataset": _dataset_name(dataset),
            "model": model, "num_sources": list(per_k), "target_fraction": fraction, "targets": targets,
            "common_targets": common, "reference": reference, "rows": rows,
            "notes": {"num_sources": "K: each target's K nearest earlier bins are its sources (protocol window:K); "
                                     "a target with fewer than K earlier bins has no result at that K",
                      "over targets": "the mean over common_targets, the targets every K has, so each K's point "
                                      "averages the same targets",
                      "ci95": "per target: a percentile bootstrap over the target's test examples (trials averaged "
                              "per example); over targets: a stratified bootstrap of the mean",
                      "diff_vs_reference": f"method - {reference} at the same K: per target on the same test "
                                           "examples (paired bootstrap interval), over targets the mean difference",
                      "max_models_resident": "the most models the method held at once (maximum over experiments)",
                      "resident_model_bytes": "their parameters and buffers (maximum over experiments)"}}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # pandas turns None into NaN


def _models(n: float) -> str:
    return f"{n:.0f} model" + ("" if round(n) == 1 else "s")


def _cell(accuracy: float | None, ci: list | None) -> str:
    if _missing(accuracy):
        return "-"
    return f"{accuracy:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def num_sources_markdown(summary: dict) -> str:
    """Accuracy (with intervals) and models resident per method (rows) and K (columns)."""
    frame = pd.DataFrame(summary["rows"])
    ks, over = summary["num_sources"], frame[frame["target"] == OVER_TARGETS]
    methods = list(dict.fromkeys(over["method"]))
    common = summary["common_targets"]
    where = common[0] if len(common) == 1 else "mean over the targets every K has: " + ", ".join(common)
    lines = [f"# {summary['dataset']} / {summary['model']}: accuracy and memory against the number of sources K",
             "", f"Each target's K nearest earlier bins are its sources. Test accuracy ({where}) with its 95% "
             "interval:", "", "| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]

    def cell(m: str, k: int, fn) -> str:
        hit = over[(over["method"] == m) & (over["num_sources"] == k)]
        return "-" if hit.empty else fn(hit.iloc[0])

    for m in methods:
        cells = [cell(m, k, lambda r: _cell(r["accuracy"], r["ci95"])) for k in ks]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    per_target = frame[frame["target"] != OVER_TARGETS]
    ref = summary["reference"]
    lines += ["", f"Difference to {ref} at the same K (paired 95% interval on the same test examples; * where it "
              "excludes 0):", "", "| method | target | " + " | ".join(f"K={k}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for m in (m for m in methods if m != ref):
        for t in summary["targets"]:
            cells = []
            for k in ks:
                hit = per_target[(per_target["method"] == m) & (per_target["target"] == t)
                                 & (per_target["num_sources"] == k)]
                d = None if hit.empty else hit.iloc[0]["diff_vs_reference"]
                ci = None if hit.empty or not isinstance(hit.iloc[0]["diff_ci95"], (list, tuple)) else \
                    hit.iloc[0]["diff_ci95"]
                cells.append("-" if _missing(d) else f"{d:+.3f}" + (
                    "" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" + ("*" if ci[0] > 0 or ci[1] < 0 else "")))
            lines.append(f"| {m} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "Models held at once (most over the experiments) and time per experiment:", "",
              "| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell(m, k, lambda r: "-" if _missing(r["max_models_resident"]) else
                                                    _models(r["max_models_resident"]) + f", {r['time_s']:.0f} s")
                                               for k in ks) + " |")
    return "\n".join(lines) + "\n"


def write_num_sources(results_dir: str | Path, dataset: str, model: str, counts: Sequence[int],
                      plots: bool = True, fraction: float = 1.0) -> dict[str, Path]:
    """Write num_sources.{json,csv,md} (and the figure as PNG and PDF) into ``<dataset>/<model>/protocols/``."""
    summary = num_sources_summary(results_dir, dataset, model, counts, fraction)
    out = model_results_dir(Path(results_dir), summary["dataset"], summary["model"]) / "protocols"
    return write_rows_summary(out, "num_sources", summary, num_sources_markdown(summary),
                              plot_num_sources if plots else None)

"""``--protocol stream``: bins that arrive one at a time, each deployed model built from the one before.

For bin t the method's pool is the model deployed for bin t-1 (standing for every bin before t-1) and bin t-1's
source model, nothing else (experiment/plan.py places the deployed model in time just before that source); the
second bin, with nothing deployed before it, has its one source. So each bin costs O(1) models and O(1) target
training, O(T) over T bins, where ``past`` replays every target from all its earlier sources (O(T^2)). Each bin's
experiment is an ordinary result folder written atomically, its final model saved, so a stream killed at bin t
continues from the model deployed for bin t-1 (a sweep runs the bins in time order). Besides its own bin's test
split, each deployed model is scored on the next bin's (``stream.next_bin_test`` in its record): the number a
deployment cares about before the next bin's labels arrive. Which methods have a running form, and what it is,
each method's registration says (``MethodSpec.stream``).

This module resolves a stream's bins and methods for a sweep and writes the stream summary,
``<dataset>/<model>/protocols/stream/stream.{json,csv,md,png,pdf}``: per method and bin the accuracy on the
bin's own test split and on the next bin's (95% intervals), the target epochs and time per bin and summed so far,
beside the same sums under ``past`` where that protocol's results exist, and the models held at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError
from ..measure.statistics import accuracy_interval, mean_over_targets_interval
from ..methods import get_method
from ..methods.base import stream_refusal
from ..models.factory import resolve_model
from ..paths import model_results_dir, split_label
from ..utils.seed import derive_seed
from .plots import plot_stream
from .protocols import STREAM
from .record import ExperimentRecord
from .runner import NEXT_BIN_PREDICTIONS_FILE
from .summary import _dataset_name, collect, compare_collected, correctness, screened_key
from .table import write_rows_summary

log = logging.getLogger(__name__)
STREAM_SCHEMA_VERSION = 1
OVER_BINS = "over bins"


def stream_targets(bins: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The bins a stream must run to reach the latest one asked for: every bin up to it (each continues the model
    deployed for the bin before it; the first has no sources and is skipped as under ``past``)."""
    last = max(list(bins).index(t) for t in wanted)
    chain = list(bins[:last + 1])
    if chain != list(wanted):
        log.info("--protocol stream: %s continue(s) the bins before; the stream runs %s .. %s", ", ".join(wanted),
                 chain[0], chain[-1])
    return chain


def stream_methods(method_configs: dict[str, Any], defaulted: bool) -> dict[str, Any]:
    """The methods of a stream sweep: those with a running form. Without --methods (``defaulted``) the others are
    left out with a note; named ones are refused, each with its reason."""
    refused = {m: why for m, c in method_configs.items() if (why := stream_refusal(get_method(split_label(m)[0]), c))}
    kept = {m: c for m, c in method_configs.items() if m not in refused}
    if refused and not defaulted:
        raise ConfigError("--protocol stream: " + "; ".join(refused.values()) + f". Drop {', '.join(refused)} "
                          f"from --methods{' (these stream: ' + ', '.join(kept) + ')' if kept else ''}.",
                          field="methods")
    if refused:
        log.info("--protocol stream leaves out %s (no running form in O(1) models)", ", ".join(refused))
    if not kept:
        raise ConfigError("--protocol stream: none of the methods has a running form; use grasp, fusion, "
                          "source_finetune or target_only.", field="methods")
    return kept


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else float(sum(values) / len(values))


def _by_bin(records: list[ExperimentRecord]) -> dict[str, list[ExperimentRecord]]:
    out: dict[str, list[ExperimentRecord]] = {}
    for r in records:
        out.setdefault(r.target, []).append(r)
    return out


def stream_rows(method: str, records: list[ExperimentRecord], past: list[ExperimentRecord], bins: Sequence[str],
                own: dict, comp: dict) -> list[dict]:
    """One row per bin of ``method``'s stream (trials averaged) and one over bins. ``own``: its per-example
    correctness on each bin's own test split; ``past``: its results under --protocol past (maybe none)."""
    next_correct = correctness(records, NEXT_BIN_PREDICTIONS_FILE)
    row = next(r for r in comp["methods"] if r["method"] == method)
    paired = (comp["paired_vs_reference"].get(method) or {}).get("per_target") or {}
    mine, theirs = _by_bin(records), _by_bin(past)
    rows: list[dict] = []
    sums = {"epochs": 0.0, "time": 0.0, "past_epochs": 0.0, "past_time": 0.0}
    for t in bins:
        if t not in mine:  # a bin missing from the stream (failed): sums past it would understate the cost
            sums = dict.fromkeys(sums)
            continue
        runs, before = mine[t], theirs.get(t)
        epochs, time_s = _mean([r.budget.target_epochs for r in runs]), _mean([r.time.total_s for r in runs])
        sums["epochs"] = None if epochs is None or sums["epochs"] is None else sums["epochs"] + epochs
        sums["time"] = None if time_s is None or sums["time"] is None else sums["time"] + time_s
        for key, get in (("past_epochs", lambda r: r.budget.target_epochs), ("past_time", lambda r: r.time.total_s)):
            value = _mean([get(r) for r in before]) if before else None  # past must have run every bin so far
            sums[key] = None if value is None or sums[key] is None else sums[key] + value
        step = runs[0].stream
        next_bin = step.next_bin if step is not None else None
        nxt = [r.stream.next_bin_test.accuracy if r.stream and r.stream.next_bin_test else None for r in runs]
        diff = paired.get(t) or {}
        rows.append({
            "method": method, "target": t, "carried_from": step.carried_from if step else None,
            "accuracy": row["per_target_accuracy"].get(t),
            "ci95": (row.get("per_target_accuracy_ci95") or {}).get(t),
            "next_bin": next_bin, "next_accuracy": _mean(nxt) if next_bin else None,
            "next_ci95": (accuracy_interval(next_correct[t][0], seed=derive_seed(0, "stream-next", method, t),
                                            groups=next_correct[t][1])
                          if next_bin and t in next_correct else None),
            "diff_vs_reference": diff.get("mean_difference"), "diff_ci95": diff.get("ci95"),
            "target_epochs": epochs, "cumulative_target_epochs": sums["epochs"],
            "time_s": time_s, "cumulative_time_s": sums["time"],
            "past_cumulative_target_epochs": sums["past_epochs"], "past_cumulative_time_s": sums["past_time"],
            "max_models_resident": max((r.memory.max_models_resident or 0) for r in runs),
            "trials": len(runs)})
    ran = [r["target"] for r in rows]
    with_next = [r["target"] for r in rows if r["next_bin"] and r["target"] in next_correct]
    over = {"method": method, "target": OVER_BINS, "carried_from": None,
            "accuracy": _mean([r["accuracy"] for r in rows]),
            "ci95": (mean_over_targets_interval([own[t] for t in ran], seed=derive_seed(0, "stream-own", method))
                     if ran and all(t in own for t in ran) else None),
            "next_bin": None, "next_accuracy": _mean([r["next_accuracy"] for r in rows if r["target"] in with_next]),
            "next_ci95": (mean_over_targets_interval([next_correct[t] for t in with_next],
                                                     seed=derive_seed(0, "stream-next", method)) if with_next else None),
            "diff_vs_reference": None, "diff_ci95": None,
            "target_epochs": None, "cumulative_target_epochs": sums["epochs"],
            "time_s": None, "cumulative_time_s": sums["time"],
            "past_cumulative_target_epochs": sums["past_epochs"], "past_cumulative_time_s": sums["past_time"],
            "max_models_resident": max((r["max_models_resident"] for r in rows), default=None),
            "trials": max((r["trials"] for r in rows), default=0)}
    return rows + [over]


def stream_summary(results_dir: str | Path, dataset: str, model: str, fraction: float = 1.0) -> dict[str, Any]:
    """Every method's stream of (dataset, model) at the label budget ``fraction``, against ``past`` where it ran."""
    results_dir, model = Path(results_dir), resolve_model(model).name
    name = _dataset_name(dataset)
    found = collect(results_dir, name, model, STREAM, fraction)
    if not any(runs["finished"] for runs in found.values()):
        raise FileNotFoundError(f"No results under --protocol stream of {name} / {model} in {results_dir}; run "
                                "a sweep with --protocol stream first.")
    key = screened_key(dataset, found)
    _, correct, comp = compare_collected(key, model, found, STREAM, fraction)
    past = collect(results_dir, name, model, "past", fraction)
    bins = comp["targets"]
    rows = [r for method, runs in found.items() if runs["finished"]
            for r in stream_rows(method, runs["finished"], (past.get(method) or {}).get("finished", []), bins,
                                 correct.get(method, {}), comp)]
    return {"schema_version": STREAM_SCHEMA_VERSION, "kind": "stream", "dataset": name, "model": model,
            "target_fraction": fraction, "bins": bins, "reference": comp["reference"],
            "num_classes": comp.get("num_classes"), "rows": rows,
            "failed": {m: len(runs["failed"]) for m, runs in found.items() if runs["failed"]},
            "notes": {"stream": "each bin's model is built from the model deployed for the bin before and that "
                                "bin's source model only (the second bin: its one source)",
                      "accuracy": "on the bin's own test split; ci95: percentile bootstrap over its test examples "
                                  "(trials averaged per example); over bins: a stratified bootstrap of the mean",
                      "next_accuracy": "the same deployed model on the next bin's test split, before that bin's "
                                       "labels are used (the last bin has none)",
                      "diff_vs_reference": f"method - {comp['reference']} on the bin's own test examples, paired",
                      "cumulative_target_epochs": "target epochs summed over the stream's bins so far",
                      "past_cumulative_target_epochs": "the same method under --protocol past (every earlier "
                                                       "source, each bin from scratch) summed over the same bins; "
                                                       "empty where past has not run every bin so far",
                      "max_models_resident": "the most models held at once in the bin's experiment"}}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _cell(accuracy: float | None, ci: Any) -> str:
    if _missing(accuracy):
        return "-"
    return f"{accuracy:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, (list, tuple)) else "")


def _number(value: Any, spec: str) -> str:
    return "-" if _missing(value) else format(value, spec)


def stream_markdown(summary: dict) -> str:
    """The stream at a glance (over bins), then per bin: accuracy on its own and the next bin, training and
    models held."""
    rows = summary["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    over = {r["method"]: r for r in rows if r["target"] == OVER_BINS}
    per = {(r["method"], r["target"]): r for r in rows if r["target"] != OVER_BINS}
    bins = summary["bins"]
    lines = [f"# {summary['dataset']} / {summary['model']}: a stream over {len(bins)} bins "
             f"({bins[0]} .. {bins[-1]})", "",
             "Bins arrive one at a time: each bin's model is built from the model deployed for the bin before and "
             "that bin's source model only. Test accuracy on each bin's own test split and on the next bin's "
             "(before its labels are used), mean over bins with 95% intervals; training and time summed over the "
             "stream, beside the same method under `--protocol past` (every earlier source, each bin from scratch) "
             "where it ran:", "",
             "| method | own bin | next bin | target epochs (stream / past) | time, s (stream / past) | models held |",
             "|---|---|---|---|---|---|"]
    for m in methods:
        o = over[m]
        lines.append(f"| {m} | {_cell(o['accuracy'], o['ci95'])} | {_cell(o['next_accuracy'], o['next_ci95'])} | "
                     f"{_number(o['cumulative_target_epochs'], '.0f')} / "
                     f"{_number(o['past_cumulative_target_epochs'], '.0f')} | "
                     f"{_number(o['cumulative_time_s'], '.0f')} / {_number(o['past_cumulative_time_s'], '.0f')} | "
                     f"{_number(o['max_models_resident'], '.0f')} |")
    for title, acc, ci, label in (("Accuracy on each bin's own test split", "accuracy", "ci95", "bin"),
                                  ("Accuracy on the next bin's test split", "next_accuracy", "next_ci95",
                                   "deployed for -> scored on")):
        lines += ["", f"{title} (95% intervals):", "", f"| {label} | " + " | ".join(methods) + " |",
                  "|---|" + "---|" * len(methods)]
        for t in bins:
            first = next((per[m, t] for m in methods if (m, t) in per), None)
            if first is None or (acc == "next_accuracy" and not first["next_bin"]):
                continue
            name = t if acc == "accuracy" else f"{t} -> {first['next_bin']}"
            lines.append(f"| {name} | " + " | ".join(_cell(per[m, t][acc], per[m, t][ci]) if (m, t) in per else "-"
                                                     for m in methods) + " |")
    lines += ["", "Target epochs summed so far (stream / past) and models held at once, per bin:", "",
              "| bin | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for t in bins:
        cells = []
        for m in methods:
            r = per.get((m, t))
            cells.append("-" if r is None else f"{_number(r['cumulative_target_epochs'], '.0f')} / "
                         f"{_number(r['past_cumulative_target_epochs'], '.0f')}, "
                         f"{_number(r['max_models_resident'], '.0f')} held")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if summary["failed"]:
        lines += ["", "Failed or unreadable bins (not averaged): " +
                  ", ".join(f"{m}: {n}" for m, n in summary["failed"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_stream_summary(results_dir: str | Path, dataset: str, model: str, plots: bool = True,
                         fraction: float = 1.0) -> dict[str, Path]:
    """Write stream.{json,csv,md} (and the figure as PNG and PDF) into the stream's protocol folder."""
    summary = stream_summary(results_dir, dataset, model, fraction)
    out = model_results_dir(Path(results_dir), summary["dataset"], summary["model"], STREAM, fraction)
    return write_rows_summary(out, "stream", summary, stream_markdown(summary), plot_stream if plots else None)

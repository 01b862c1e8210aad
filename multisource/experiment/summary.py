"""Summary reports built from whatever per-experiment metrics.json files exist.

Per (dataset, model, method): ``results/<dataset>/<model>/summaries/<method>.json`` with per-target statistics
over trials (mean, sample std, Student-t 95% CI) and overall figures. Across methods: ``comparison.json``,
``comparison.md``, ``comparison.csv`` and PNG plots. Failed experiments are counted, never scored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..data.card import read_card
from ..data.datasets import get_dataset
from ..methods import METHODS, reference_method
from ..models.factory import resolve_model
from ..paths import model_results_dir, split_variant, tag_problem, variant_folder, variant_label
from .protocols import DEFAULT_PROTOCOL, canonical_protocol
from ..utils.io import atomic_write, read_json, write_json, write_text
from .plots import plot_accuracy_over_time, plot_accuracy_per_target, plot_accuracy_vs_cost
from ..measure.statistics import MIN_TARGETS, accuracy_interval, holm, paired_bootstrap_difference, paired_test_over_targets
from ..utils.seed import derive_seed
from .record import METRICS_FILE, SCHEMA_VERSION, ExperimentRecord, RecordProblem, StageScores, read_record
from .runner import PREDICTIONS_FILE, is_finished, read_predictions
from .answers import answer_markdown, newest_bin_answer
from .table import MethodRow, comparison_frame, comparison_row, latex_table, markdown_table  # noqa: F401  (comparison_frame: API)

SUMMARY_SCHEMA_VERSION = 2
_NO_STAGE = StageScores()


def _stage(record: ExperimentRecord, name: str) -> StageScores:
    return record.stages.get(name) or _NO_STAGE


# summary key -> how it is read from an experiment's record. Units are in the names: bytes, seconds, MACs.
METRICS: dict[str, Callable[[ExperimentRecord], float | None]] = {
    "test_accuracy": lambda r: r.test.accuracy,
    # merging methods' merged model before target fine-tuning (null elsewhere)
    "test_accuracy_before_finetune": lambda r: _stage(r, "before_finetune").test_accuracy,
    "val_accuracy_before_finetune": lambda r: _stage(r, "before_finetune").val_accuracy,
    "test_precision_macro": lambda r: r.test.precision_macro,
    "test_recall_macro": lambda r: r.test.recall_macro,
    "test_f1_macro": lambda r: r.test.f1_macro,
    "val_accuracy": lambda r: r.val.accuracy,
    "time_s": lambda r: r.time.total_s,
    "peak_memory_bytes": lambda r: r.memory.peak_bytes,
    "resident_model_bytes": lambda r: r.memory.resident_model_bytes,
    "max_models_resident": lambda r: r.memory.max_models_resident,
    "flops_total_macs": lambda r: r.flops.total,
    "flops_forward_per_image_macs": lambda r: r.flops.forward_per_image,
    "target_epochs": lambda r: r.budget.target_epochs,
    "target_train_images": lambda r: r.budget.target_train_images,
    "source_models_read": lambda r: r.information_used.num_source_models if r.information_used else None,
}
TIMING_KEYS = ("time_s", "peak_memory_bytes")  # vary from run to run on the same inputs
NOTES = {
    "per_target": "Statistics over the trials found for a target: mean, sample standard deviation (ddof=1) and "
                  "95% confidence interval of the mean with Student's t (null for a single trial).",
    "overall.mean_over_targets": "Mean over targets of the per-target means (each target weighs the same); std "
                                 "is the sample std of the per-target means.",
    "overall.pooled": "Statistics over all finished experiments of the method, pooled across targets and trials.",
    "flops": "MACs (multiply-accumulates) as counted by the runner; FLOPs = 2 x MACs. See flops_convention.",
    "memory": "peak_memory_bytes: the runner's memory.peak_bytes (CUDA max allocated on GPU, peak RSS on CPU).",
    "failures": "Failed experiments are listed and counted; they never contribute a score.",
}


def describe(values: Sequence[float | None]) -> dict[str, Any]:
    """n, mean, sample std and Student-t 95% CI of the non-null values (std/CI null for fewer than two)."""
    xs = np.asarray([v for v in values if v is not None], dtype=float)
    n = int(xs.size)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci95_low": None, "ci95_high": None,
                           "min": None, "max": None}
    if n == 0:
        return out
    out.update(mean=float(xs.mean()), min=float(xs.min()), max=float(xs.max()))
    if n >= 2:
        std = float(xs.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci95_low=out["mean"] - half, ci95_high=out["mean"] + half)
    return out


def metric_value(record: ExperimentRecord, key: str) -> float | None:
    value = METRICS[key](record)
    return None if value is None else float(value)


def summary_dir(results_dir: Path, dataset: str, model: str, protocol: str = DEFAULT_PROTOCOL,
                fraction: float = 1.0) -> Path:
    return model_results_dir(Path(results_dir), dataset, model, protocol, fraction) / "summaries"


def collect(results_dir: Path, dataset: str, model: str, protocol: str = DEFAULT_PROTOCOL, fraction: float = 1.0
            ) -> dict[str, dict[str, list]]:
    """{method: {"finished": [ExperimentRecord, ...], "failed": [failure record, ...]}} of one protocol from disk.

    A trial folder whose metrics.json is unreadable or incomplete is listed as failed (never silently dropped),
    and so is one holding a value no summary may average (:class:`RecordProblem`) or one recorded under another
    protocol or label budget (a moved folder)."""
    base = model_results_dir(Path(results_dir), dataset, model, protocol, fraction)
    found: dict[str, dict[str, list]] = {}
    if not base.is_dir():
        return found
    for mdir in sorted(p for p in base.iterdir() if p.is_dir() and split_variant(p.name)[0] in METHODS):
        method, tag = split_variant(mdir.name)
        if tag and tag_problem(tag):
            continue
        finished, failed = [], []
        for tdir in sorted(p for p in mdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for run in sorted(tdir.glob("trial_*")):
                trial = run.name.removeprefix("trial_")
                trial_number = int(trial) if trial.isdigit() else None
                if run.is_dir() and is_finished(run):
                    try:
                        record = read_record(run)
                    except RecordProblem as e:
                        failed.append(invalid_result(run, tdir.name, trial_number, str(e)))
                        continue
                    found_protocol = record.config.protocol or DEFAULT_PROTOCOL
                    found_fraction = record.config.target_fraction or 1.0
                    if found_protocol == protocol and found_fraction == fraction:
                        finished.append(record)
                    else:
                        ran = (f"protocol {found_protocol}, not {protocol}" if found_protocol != protocol else
                               f"label budget {found_fraction:g}, not {fraction:g}")
                        failed.append({"error_type": "ProtocolMismatch", "target": tdir.name,
                                       "message": f"{run} was run under {ran}; move it back or re-run it",
                                       "record_file": str(run / METRICS_FILE), "config": {"trial": record.trial}})
                elif run.is_dir():
                    failed.append({"error_type": "UnreadableResult", "target": tdir.name,
                                   "message": f"{run / METRICS_FILE} is missing, unreadable or incomplete; re-run "
                                              "the experiment (the sweep does it) or remove the folder",
                                   "record_file": str(run / METRICS_FILE), "config": {"trial": trial_number}})
                elif run.name.endswith(".failed.json") and not is_finished(tdir / run.name[:-len(".failed.json")]):
                    failed.append({**_read_or_empty(run), "target": tdir.name, "record_file": str(run)})
        if finished or failed:  # a variant (--tag) is a row of its own: grasp[nearest]
            found[variant_label(METHODS.canonical(method), tag)] = {"finished": finished, "failed": failed}
    return found


def accuracy_intervals(correct: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]]
                       ) -> dict[str, dict[str, list[float] | None]]:
    """method -> target -> 95% bootstrap interval of its test accuracy over the target's test examples (renderings
    of one example resampled together), from the saved predictions; one seed per (method, target)."""
    return {m: {t: accuracy_interval(a, seed=derive_seed(0, "accuracy", m, t), groups=g) for t, (a, g) in by.items()}
            for m, by in correct.items()}


def _label_parts(label: str) -> tuple[str, str]:
    """(method, tag) of a comparison row's label (``grasp[nearest]`` -> ``("grasp", "nearest")``)."""
    method, _, tag = label.partition("[")
    return method, tag.rstrip("]")


def invalid_result(run: Path, target: str, trial: int | None, problem: str) -> dict:
    """The failure entry of a finished experiment whose record cannot be averaged."""
    path = run / METRICS_FILE
    return {"error_type": "InvalidResult", "record_file": str(path), "target": target,
            "message": f"{path}: {problem}; it is not averaged. Re-run the experiment (--overwrite) or restore the "
                       "file.", "config": {"trial": trial}}


def result_problem(record: ExperimentRecord, bins: Sequence[str]) -> str | None:
    """Why a well-formed record still cannot be averaged with this dataset's others (None if it can): its target
    is not a bin of the dataset. (Values out of range are refused when the record is read.)"""
    if bins and record.target not in bins:
        return f"target {record.target!r} is not a bin of the dataset ({', '.join(bins)})"
    return None


def screen_results(found: dict[str, dict[str, list]], bins: Sequence[str]) -> None:
    """Move every finished result with a :func:`result_problem` to the failed list, naming its file (in place)."""
    for runs in found.values():
        keep = []
        for r in runs["finished"]:
            problem = result_problem(r, bins)
            if problem is None:
                keep.append(r)
            else:
                runs["failed"].append(invalid_result(r.folder, r.target, r.trial, problem))
        runs["finished"] = keep


def _read_or_empty(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {"error_type": "unreadable failure record"}


def dataset_bins(dataset: str, root: str | Path | None = None) -> list[str]:
    """The dataset's bins in time order (none known for a name that is neither registered nor a card folder). A
    dataset whose bins are its build's (drifting glyphs' --bins) reads them from the card of the build at ``root``
    (the folder its results name), else at its default folder; none known without a card."""
    try:
        info = get_dataset(dataset)
    except (KeyError, ValueError):
        return []
    if info.bins_from_build and info.root is None:
        folder = Path(root) if root else info.default_root()
        try:
            card = read_card(folder)
        except ValueError:
            card = None
        return list(card.get("bin_order") or card.get("bins") or []) if card else []
    return list(info.bins)


def target_order(dataset: str, targets: set[str]) -> list[str]:
    bins = dataset_bins(dataset)
    return [b for b in bins if b in targets] + sorted(t for t in targets if t not in bins)


def method_summary(dataset: str, model: str, method: str, finished: list[ExperimentRecord],
                   failed: list[dict]) -> dict:
    """The per-method JSON summary (numbers straight from the experiments' records)."""
    by_target: dict[str, list[ExperimentRecord]] = {}
    for r in finished:
        by_target.setdefault(r.target, []).append(r)
    fails_by_target: dict[str, list[dict]] = {}
    for f in failed:
        fails_by_target.setdefault(f["target"], []).append(f)
    targets = target_order(dataset, set(by_target) | set(fails_by_target))
    per_target = {}
    for t in targets:
        runs = sorted(by_target.get(t, []), key=lambda r: r.trial)
        per_target[t] = {
            "trials": [r.trial for r in runs], "seeds": [r.seed for r in runs],
            "sources": runs[0].sources if runs else None, "num_trials": len(runs),
            # trials are seeds of one setting: anything else differing between them is named here
            "settings_differ": _differing_settings(runs),
            "failed_trials": sorted((f.get("config") or {}).get("trial") for f in fails_by_target.get(t, [])),
            "metrics": {k: {**describe(v := [metric_value(r, k) for r in runs]), "values": v} for k in METRICS},
        }
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION, "kind": "method_summary", "metrics_schema_version": SCHEMA_VERSION,
        "dataset": dataset, "model": model, "method": method,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_experiments": len(finished), "num_failed": len(failed),
        "num_targets": sum(1 for t in per_target.values() if t["num_trials"]),
        "targets": per_target,
        "overall": _overall(per_target, finished),
        "flops_convention": next((r.flops.convention for r in finished if r.flops.convention), None),
        "information_used": information_labels(finished),
        "configs": _distinct([_config_of(r) for r in finished]),
        "versions": _distinct([_versions_of(r) for r in finished]),
        "failed": [{k: f.get(k) for k in ("target", "error_type", "message", "traceback_file", "record_file")}
                   | {"trial": (f.get("config") or {}).get("trial")} for f in failed],
        "notes": NOTES,
    }


def _overall(per_target: dict, finished: list[ExperimentRecord]) -> dict:
    over_targets = {}
    for k in METRICS:
        means = [t["metrics"][k]["mean"] for t in per_target.values() if t["metrics"][k]["mean"] is not None]
        d = describe(means)
        over_targets[k] = {"mean": d["mean"], "std": d["std"], "n_targets": d["n"]}
    pooled = {k: describe([metric_value(r, k) for r in finished]) for k in METRICS}
    return {"mean_over_targets": over_targets, "pooled": pooled}


def information_labels(records: list[ExperimentRecord]) -> list[str]:
    """What the experiments' method read, in words, one label per kind of reading: "4 source models + target
    train/val". Counts that vary across experiments (a past-only protocol reads 1 source for the second bin,
    K for the last) become ranges ("1-4 source models") instead of one label per count."""
    kinds: dict[tuple, tuple[list[int], list[int]]] = {}
    unrecorded = False
    for record in records:
        used = record.information_used
        if used is None:
            unrecorded = True
            continue
        models, bins = used.num_source_models or 0, len(used.source_data or [])
        kind = (models > 0, bool(used.pretrained_start), bins > 0, tuple(used.target_data or ()))
        counts = kinds.setdefault(kind, ([], []))
        counts[0].append(models)
        counts[1].append(bins)
    labels = [_information_label(kind, *counts) for kind, counts in kinds.items()]
    return sorted(labels + (["not recorded"] if unrecorded else []))


def _information_label(kind: tuple, models: list[int], bins: list[int]) -> str:
    def count(values: list[int]) -> str:
        low, high = min(values), max(values)
        return str(low) if low == high else f"{low}-{high}"

    has_models, pretrained, has_bins, target = kind
    parts = []
    if has_models:
        parts.append(f"{count(models)} source model{'s' if max(models) > 1 else ''}")
    if pretrained:
        parts.append("shared start")
    if has_bins:
        parts.append(f"source data ({count(bins)} bin{'s' if max(bins) > 1 else ''})")
    if target:
        parts.append("target " + "/".join(target))
    return " + ".join(parts) or "nothing"


def _config_of(r: ExperimentRecord) -> dict:
    c = r.config
    return {"method_config": c.method_config, "base_seed": c.base_seed, "batch_size": c.batch_size,
            "image_size": c.image_size, "precision": c.precision, "device": r.environment.device}


def _versions_of(r: ExperimentRecord) -> dict:
    env = r.environment
    return {"multisource": env.multisource, "git_commit": env.git_commit, "python": env.python,
            "packages": env.packages}


def _differing_settings(runs: list[ExperimentRecord]) -> list[str]:
    """The settings (besides trial and seed) that differ between one target's trials: sources, the method's
    configuration, batch size, image size, precision, device, base seed."""
    settings = [{"sources": r.sources, **_config_of(r)} for r in runs]
    differ = set()
    for s in settings[1:]:
        differ |= {k for k in s if json.dumps(s[k], sort_keys=True, default=str) !=
                   json.dumps(settings[0][k], sort_keys=True, default=str)}
    return sorted(differ)


def _distinct(items: list[dict]) -> list[dict]:
    """Each distinct value once (a summary over mixed configurations shows all of them)."""
    seen, out = set(), []
    for it in items:
        key = json.dumps(it, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


def correctness(found: list[ExperimentRecord], predictions: str = PREDICTIONS_FILE
                ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """target -> ((trials x test examples) 0/1 correctness from the saved predictions, trials in order; each
    example's group of renderings or None); a target is left out when a trial has no predictions file or the
    trials disagree on the examples. ``predictions``: which file (a stream's next bin's: NEXT_BIN_PREDICTIONS_FILE)."""
    by_target: dict[str, list] = {}
    for r in sorted(found, key=lambda r: (r.target, r.trial)):
        by_target.setdefault(r.target, []).append(read_predictions(r.folder, predictions) if r.folder else None)
    out = {}
    for t, frames in by_target.items():
        if any(f is None for f in frames) or any(not f["label"].equals(frames[0]["label"]) for f in frames):
            continue
        groups = next((f["group"].astype(str).to_numpy() for f in frames if "group" in f), None)
        out[t] = (np.stack([(f["label"] == f["prediction"]).to_numpy(float) for f in frames]), groups)
    return out


def paired_vs_reference(method: str, summary: dict, reference: dict, correct: dict, ref_correct: dict) -> dict:
    """``method`` minus the reference. Per target: test accuracy averaged over each method's trials, with a
    paired bootstrap interval over the same test examples. Over targets: the mean of the per-target
    differences and a paired t-test over targets (no p-value below 3 targets)."""
    per_target = {}
    for t, rec in summary["targets"].items():
        ref = reference["targets"].get(t)
        mine = rec["metrics"]["test_accuracy"]["mean"]
        theirs = ref["metrics"]["test_accuracy"]["mean"] if ref else None
        if mine is None or theirs is None:
            continue
        entry = {"mean_difference": mine - theirs, "trials": rec["num_trials"], "reference_trials": ref["num_trials"],
                 "ci95": None, "distinguishable": None}
        (a, groups), (b, ref_groups) = correct.get(t, (None, None)), ref_correct.get(t, (None, None))
        if a is not None and b is not None and a.shape[1] == b.shape[1]:
            boot = paired_bootstrap_difference(a, b, seed=derive_seed(0, "paired", method, t),
                                               groups=groups if groups is not None else ref_groups)
            entry.update(ci95=boot["ci95"], distinguishable=boot["distinguishable"], n_examples=boot["n_examples"])
            if "n_groups" in boot:
                entry["n_groups"] = boot["n_groups"]
        else:
            entry["reason"] = "no per-example predictions for both methods on the same test examples"
        per_target[t] = entry
    over = paired_test_over_targets([e["mean_difference"] for e in per_target.values()])
    return {"metric": "test_accuracy", "reference": reference["method"], "per_target": per_target,
            "over_targets": over, "mean_difference": over["mean_difference"], "p_value": over["p_value"],
            "n_targets": over["n_targets"]}



def comparison(dataset: str, model: str, summaries: dict[str, dict], correct: dict | None = None,
               protocol: str = DEFAULT_PROTOCOL) -> dict:
    """One row per method: accuracy, per-target accuracies, cost; and paired differences to the reference
    method (the one registered with ``reference=True``)."""
    reference = reference_method()
    targets = target_order(dataset, {t for s in summaries.values() for t, r in s["targets"].items()
                                     if r["num_trials"]})
    ref = summaries.get(reference)
    correct = correct or {}
    paired = {m: (paired_vs_reference(m, s, ref, correct.get(m, {}), correct.get(reference, {})) if ref else
                  {"reference": reference, "n_targets": 0, "p_value": None, "mean_difference": None,
                   "per_target": {}, "reason": f"no {reference} results"})
              for m, s in summaries.items() if m != reference}
    for m, p_holm in holm({m: p.get("p_value") for m, p in paired.items()}).items():
        paired[m]["p_value_holm"] = p_holm
    intervals = accuracy_intervals(correct)
    rows = [comparison_row(MethodRow(m, s, targets, paired.get(m), intervals.get(m))) for m, s in summaries.items()]
    answer = newest_bin_answer(targets, summaries, correct, intervals)
    return {"schema_version": SUMMARY_SCHEMA_VERSION, "kind": "comparison", "dataset": dataset, "model": model,
            "protocol": protocol, "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "targets": targets,
            "newest_bin": answer, "methods": rows, "reference": reference, "paired_vs_reference": paired,
            "settings_differ": {m: {t: r["settings_differ"] for t, r in s["targets"].items() if r.get("settings_differ")}
                                for m, s in summaries.items()
                                if any(r.get("settings_differ") for r in s["targets"].values())},
            "notes": {"accuracy_mean": NOTES["overall.mean_over_targets"],
                      "accuracy_pooled_mean": NOTES["overall.pooled"],
                      "cost": "flops_total_macs, peak_memory_bytes and time_s are means over all experiments; "
                              "max_models_resident and resident_model_bytes (parameters + buffers of the models "
                              "held at once) are maxima. " + NOTES["flops"] + " " + NOTES["memory"],
                      "budget": "target_epochs and target_train_images: epochs over the target's train split and "
                                "images trained on, means over experiments (alignment and selection passes are not "
                                "training); information_used: what the method read, as observed by the runner.",
                      "paired_vs_reference": f"per target: method - {reference} test accuracy, each averaged "
                                             "over its trials, with a paired bootstrap 95% interval over the same "
                                             "test examples, renderings of one example resampled together "
                                             "(distinguishable when it excludes 0); over targets: "
                                             "the mean of those differences and a paired t-test over targets, "
                                             "Holm-corrected across methods (p_value_holm); trials are seeds of "
                                             f"one target, never independent samples; no p-value below "
                                             f"{MIN_TARGETS} targets."}}


def write_summaries(results_dir: str | Path, dataset: str, model: str, plots: bool = True,
                    protocol: str = DEFAULT_PROTOCOL, fraction: float = 1.0) -> dict[str, Path]:
    """Rebuild every summary of (dataset, model) under one protocol and label budget from the metrics.json
    files; returns {name: path}. ``dataset`` is a registered name or an imported dataset's folder (or its bare
    name)."""
    key, model, protocol = dataset, resolve_model(model).name, canonical_protocol(protocol)
    dataset = _dataset_name(key)
    results_dir = Path(results_dir)
    found = collect(results_dir, dataset, model, protocol, fraction)
    if not found:
        budget = "" if fraction == 1 else f" --target_fractions {fraction:g}"
        raise FileNotFoundError(f"No {protocol} experiment results under "
                                f"{model_results_dir(results_dir, dataset, model, protocol, fraction)}; run a sweep "
                                f"first (python experiments/run_all.py --dataset {key} --model {model} --protocol "
                                f"{protocol}{budget}).")
    key = screened_key(key, found)
    out = summary_dir(results_dir, dataset, model, protocol, fraction)
    paths: dict[str, Path] = {}
    summaries, correct, comp = compare_collected(key, model, found, protocol, fraction)
    for method, summary in summaries.items():
        paths[method] = write_json(out / f"{variant_folder(*_label_parts(method))}.json", summary)
    if plots and any(r["num_experiments"] for r in comp["methods"]):
        figures = {"accuracy_per_target": plot_accuracy_per_target, "accuracy_over_time": plot_accuracy_over_time,
                   "accuracy_vs_cost": plot_accuracy_vs_cost}
        comp["plots"] = {name: f"{name}.png" for name in figures}  # each with its PDF beside it
        paths.update({name: plot(comp, out / f"{name}.png") for name, plot in figures.items()})
    paths["comparison_json"] = write_json(out / "comparison.json", comp)
    frame = comparison_frame(comp)
    paths["comparison_csv"] = atomic_write(out / "comparison.csv", lambda p: frame.to_csv(p, index=False))
    paths["comparison_md"] = write_text(out / "comparison.md", comparison_markdown(comp))
    paths["comparison_tex"] = write_text(out / "comparison.tex", latex_table(comp))
    return paths


def screened_key(key: str, found: dict[str, dict[str, list]]) -> str:
    """The dataset key whose bin order the summaries follow (a bare imported name: the folder its records name),
    after moving results for bins the dataset does not have to the failed lists (:func:`screen_results`)."""
    records = [r for runs in found.values() for r in runs["finished"]]
    root = next((r.extra.get("options", {}).get("data_root") for r in records
                 if r.extra.get("options", {}).get("data_root")), None)  # the build the results were made on
    if not dataset_bins(key, root):
        key = next((k for k in (r.config.dataset for r in records) if isinstance(k, str) and k and dataset_bins(k)),
                   key)
    screen_results(found, dataset_bins(key, root))
    return key


def compare_collected(key: str, model: str, found: dict[str, dict[str, list]], protocol: str,
                      fraction: float = 1.0) -> tuple[dict[str, dict], dict[str, dict], dict]:
    """(per-method summaries, per-example correctness, comparison) of what :func:`collect` found."""
    summaries = {}
    for method, runs in found.items():
        summaries[method] = method_summary(key, model, method, runs["finished"], runs["failed"])
        summaries[method].update(dataset=_dataset_name(key), protocol=protocol)
    correct = {m: correctness(runs["finished"]) for m, runs in found.items()}
    comp = comparison(key, model, summaries, correct, protocol)
    comp["dataset"], comp["target_fraction"] = _dataset_name(key), fraction
    matrices = [r.test.confusion_matrix for runs in found.values() for r in runs["finished"]]
    comp["num_classes"] = next((len(m) for m in matrices if m), None)  # for the chance line
    return summaries, correct, comp


def _dataset_name(key: str) -> str:
    """A registered or card dataset's name; a bare name of an imported dataset stands for itself."""
    try:
        return get_dataset(key).name
    except KeyError:
        if "/" in key:
            raise
        return key


def paired_table(comp: dict) -> list[str]:
    """Every method's difference to the reference, one row per method and one column per target (with its paired
    95% interval on the same test examples; * when it excludes 0), and over targets (the Holm-corrected p, or why
    there is none)."""
    paired = comp["paired_vs_reference"]
    if not paired:
        return []
    head = ["method", *comp["targets"], "over targets"]
    lines = [f"Paired differences to {comp['reference']} (test accuracy; 95% interval on the same test examples, "
             "* where it excludes 0):", "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    reasons = []
    for method, p in paired.items():
        cells = []
        for target in comp["targets"]:
            e = (p.get("per_target") or {}).get(target)
            if e is None:
                cells.append("-")
            elif e.get("ci95") is None:
                cells.append(f"{e['mean_difference']:+.4f} (no interval)")
            else:
                lo, hi = e["ci95"]
                cells.append(f"{e['mean_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]{'*' if e['distinguishable'] else ''}")
        over = p.get("over_targets") or {}
        if p.get("mean_difference") is None:
            cells.append("-")
        else:
            cells.append(f"{p['mean_difference']:+.4f} (p {_fmt(p.get('p_value_holm'), '.3g')})")
            if over.get("p_value") is None and over.get("reason"):
                reasons.append(over["reason"])
        lines.append("| " + " | ".join([method, *cells]) + " |")
    if reasons:
        lines += ["", f"No p-value over targets: {reasons[0]}."]
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def comparison_markdown(comp: dict) -> str:
    """The comparison table as Markdown (printed at the end of a sweep and written to comparison.md)."""
    merged = any(r.get("accuracy_before_finetune_mean") is not None for r in comp["methods"])  # merges ran
    fraction = comp.get("target_fraction") or 1
    budget = "" if fraction == 1 else f"; label budget: {fraction:g} of each target's train and val images"
    lines = [f"# {comp['dataset']} / {comp['model']}: method comparison (protocol: "
             f"{comp.get('protocol', DEFAULT_PROTOCOL)}{budget})", "", *answer_markdown(comp.get("newest_bin")),
             f"## Every method over {len(comp['targets'])} target(s)", "", *markdown_table(comp)]
    notes = comp["notes"]
    before = (" Before fine-tuning: the merging methods' test accuracy of the merged model before target "
              "fine-tuning (the same as the final one when they fine-tune 0 epochs; '-' for methods that do not "
              "merge).") if merged else ""
    lines += ["", f"- accuracy: {notes['accuracy_mean']} Per-target columns: mean test accuracy over trials.{before}",
              f"- cost: {notes['cost']}", f"- budget: {notes['budget']}",
              f"- Δ vs {comp['reference']}: {notes['paired_vs_reference']} The table's p is the Holm-corrected "
              f"p-value over targets ('-' below {MIN_TARGETS} targets or when the differences do not vary).",
              "", *paired_table(comp), ""]
    mixed = [f"{m} on {t} ({', '.join(k)})" for m, s in (comp.get("settings_differ") or {}).items()
             for t, k in s.items()]
    if mixed:
        lines.append("- trials that are not seeds of one setting (they differ in what is named): " + "; ".join(mixed)
                     + ". Their mean mixes settings; re-run those trials with one setting (--overwrite), or move "
                       "the odd ones out of the results folder.")
    partial = [r for r in comp["methods"] if r.get("missing_targets") and r["accuracy_mean"] is not None]
    if partial:
        lines.append("- not comparable by their means: " + "; ".join(
            f"{r['method']} has no result on {', '.join(r['missing_targets'])}" for r in partial) +
            ". A mean over fewer targets is not a mean over the same targets; compare on the per-target columns "
            "and the Δ column (paired over the targets both have).")
    failed = [r for r in comp["methods"] if r["num_failed"]]
    if failed:
        lines.append("- failed experiments (not scored): " + ", ".join(f"{r['method']} {r['num_failed']}"
                                                                        for r in failed))
    return "\n".join(lines) + "\n"

"""Summary reports: statistics, numbers equal to the metrics.json files, failures counted not scored, paired test."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import stats

from multisource.experiment.summary import METRICS, collect, describe, write_summaries
from multisource.utils.io import read_json, write_json, write_text

from conftest import METRIC_PATHS, file_value

def test_every_summary_metric_has_an_oracle_path():
    assert set(METRIC_PATHS) == set(METRICS)

DATASET, MODEL = "drift_digits", "tiny-resnet"
TARGETS = ("era_2", "era_4")  # written in reverse below: summaries must follow the bin order


def fake_report(method: str, target: str, trial: int, acc: float) -> dict:
    """A metrics.json as the runner writes it (only the fields the summary reads)."""
    return {
        "schema_version": 1, "status": "complete", "dataset": DATASET, "model": MODEL, "method": method,
        "target": target, "sources": [b for b in ("era_1", "era_2", "era_3", "era_4", "era_5") if b != target],
        "trial": trial, "seed": 42 + trial,
        "config": {"method_config": {"learning_rate": 5e-5}, "base_seed": 42, "batch_size": 32, "image_size": 32,
                   "precision": "32"},
        "environment": {"multisource": "0.1.0", "git_commit": "abc", "python": "3.11", "packages": {}, "device": "cpu"},
        "val": {"accuracy": acc - 0.01},
        "test": {"accuracy": acc, "precision_macro": acc - 0.02, "recall_macro": acc - 0.03, "f1_macro": acc - 0.04},
        "time": {"total_s": 10.0 + trial},
        "memory": {"peak_bytes": 1_000_000 * (3 if method == "ensemble" else 1) + trial,
                   "resident_model_bytes": 4000 if method == "ensemble" else 2000,
                   "max_models_resident": 4 if method == "ensemble" else 2},
        "flops": {"total": 10**9 * (1 if method == "ensemble" else 5), "forward_per_image": 10**6,
                  "convention": "MACs"},
        "budget": {"target_epochs": 0 if method == "ensemble" else 3 + trial,
                   "target_train_images": 0 if method == "ensemble" else 100 * (3 + trial)},
        "information_used": {"num_source_models": 4, "source_models": ["era_1", "era_3", "era_4", "era_5"],
                             "pretrained_start": None, "source_data": [],
                             "target_data": [] if method == "ensemble" else ["train", "val"]},
    }


ACC = {  # (method, target) -> accuracy per trial
    ("grasp", "era_2"): [0.80, 0.84, 0.82], ("grasp", "era_4"): [0.90, 0.88, 0.91],
    ("ensemble", "era_2"): [0.70, 0.71, 0.69], ("ensemble", "era_4"): [0.75, 0.80, 0.72],
    ("fusion", "era_2"): [0.60], ("fusion", "era_4"): [0.65, 0.66],
}


@pytest.fixture()
def results(tmp_path):
    for (method, target), accs in ACC.items():
        for trial, acc in enumerate(accs, 1):
            write_json(tmp_path / DATASET / MODEL / method / target / f"trial_{trial}" / "metrics.json",
                       fake_report(method, target, trial, acc))
    fusion4 = tmp_path / DATASET / MODEL / "fusion" / "era_4"
    # trial 3 failed (no folder, a failure record); a stale record beside a finished trial is ignored
    write_json(fusion4 / "trial_3.failed.json", {"status": "failed", "error_type": "RuntimeError",
                                                 "message": "boom", "traceback_file": "trial_3.traceback.txt",
                                                 "config": {"trial": 3}})
    write_text(fusion4 / "trial_3.traceback.txt", "Traceback ...")
    write_json(fusion4 / "trial_1.failed.json", {"status": "failed", "error_type": "OldError", "config": {"trial": 1}})
    # half-written leftovers of a killed run are not results
    (fusion4 / ".trial_9.partial-123").mkdir()
    write_text(fusion4 / ".trial_9.partial-123" / "metrics.json", '{"status": "comp')
    return tmp_path


def test_describe_matches_scipy():
    xs = [0.8, 0.84, 0.82, None]
    d = describe(xs)
    vals = np.array([0.8, 0.84, 0.82])
    half = stats.t.ppf(0.975, 2) * vals.std(ddof=1) / math.sqrt(3)
    assert d["n"] == 3 and d["mean"] == pytest.approx(vals.mean()) and d["std"] == pytest.approx(vals.std(ddof=1))
    assert (d["ci95_low"], d["ci95_high"]) == (pytest.approx(vals.mean() - half), pytest.approx(vals.mean() + half))
    one = describe([0.5])
    assert one["mean"] == 0.5 and one["std"] is None and one["ci95_low"] is None
    assert describe([None])["mean"] is None and describe([])["n"] == 0


def test_summary_numbers_equal_the_metrics_files(results):
    paths = write_summaries(results, DATASET, MODEL)
    found = collect(results, DATASET, MODEL)
    assert "before fine-tuning" not in paths["comparison_md"].read_text()  # no merge ran: no such column
    for method, runs in found.items():
        summary = read_json(paths[method])
        assert list(summary["targets"]) == ["era_2", "era_4"]  # bin order
        assert summary["num_experiments"] == len(runs["finished"])
        for target, rec in summary["targets"].items():
            records = sorted((r for r in runs["finished"] if r.target == target), key=lambda r: r.trial)
            assert rec["trials"] == [r.trial for r in records]
            reports = [read_json(r.folder / "metrics.json") for r in records]
            for key in METRICS:
                values = [file_value(r, key) for r in reports]
                assert rec["metrics"][key]["values"] == values
                if None in values:  # e.g. accuracy before fine-tuning: only the merges have one
                    assert set(values) == {None} and rec["metrics"][key]["mean"] is None
                else:
                    assert rec["metrics"][key]["mean"] == pytest.approx(np.mean(values))
        target_means = [np.mean(ACC[(method, t)]) for t in TARGETS]
        overall = summary["overall"]
        assert overall["mean_over_targets"]["test_accuracy"]["mean"] == pytest.approx(np.mean(target_means))
        pooled = [a for t in TARGETS for a in ACC[(method, t)]]
        assert overall["pooled"]["test_accuracy"]["mean"] == pytest.approx(np.mean(pooled))
        assert overall["pooled"]["test_accuracy"]["std"] == pytest.approx(np.std(pooled, ddof=1))
        assert summary["configs"][0]["method_config"] == {"learning_rate": 5e-5}
        assert summary["versions"][0]["git_commit"] == "abc"
        assert summary["information_used"] == (["4 source models"] if method == "ensemble" else
                                               ["4 source models + target train/val"])


def test_failures_are_counted_never_scored(results):
    paths = write_summaries(results, DATASET, MODEL)
    fusion = read_json(paths["fusion"])
    assert fusion["num_failed"] == 1 and fusion["num_experiments"] == 3
    assert fusion["targets"]["era_4"]["failed_trials"] == [3]
    assert fusion["targets"]["era_4"]["metrics"]["test_accuracy"]["values"] == [0.65, 0.66]
    assert fusion["failed"][0]["error_type"] == "RuntimeError"
    assert fusion["targets"]["era_2"]["metrics"]["test_accuracy"]["std"] is None  # one trial: no std, no CI
    comp = read_json(paths["comparison_json"])
    assert {r["method"]: r["num_failed"] for r in comp["methods"]} == {"ensemble": 0, "fusion": 1, "grasp": 0}


def test_comparison_paired_test_and_tables(results):
    paths = write_summaries(results, DATASET, MODEL)
    comp = read_json(paths["comparison_json"])
    ens = comp["paired_vs_reference"]["ensemble"]
    per_target = [np.mean(ACC[("ensemble", t)]) - np.mean(ACC[("grasp", t)]) for t in TARGETS]
    assert ens["n_targets"] == 2  # targets, not (target, trial) pairs: trials are seeds
    assert ens["mean_difference"] == pytest.approx(np.mean(per_target))
    assert ens["p_value"] is None and "at least 3 targets" in ens["over_targets"]["reason"]
    for t, d in zip(TARGETS, per_target):
        assert ens["per_target"][t]["mean_difference"] == pytest.approx(d)
    rows = {r["method"]: r for r in comp["methods"]}
    assert rows["ensemble"]["max_models_resident"] == 4 and rows["grasp"]["max_models_resident"] == 2
    assert rows["grasp"]["per_target_accuracy"]["era_4"] == pytest.approx(np.mean(ACC[("grasp", "era_4")]))
    assert rows["grasp"]["flops_total_macs"] == 5e9
    assert rows["grasp"]["target_epochs"] == pytest.approx(np.mean([4, 5, 6, 4, 5, 6]))  # 3 + trial, both targets
    assert rows["ensemble"]["target_epochs"] == 0 and rows["ensemble"]["information_used"] == "4 source models"
    with open(paths["comparison_csv"], newline="") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert set(table) == {"ensemble", "fusion", "grasp"}
    assert float(table["grasp"]["accuracy_era_2"]) == pytest.approx(0.82)
    md = paths["comparison_md"].read_text()
    assert "| grasp |" in md and "reference" in md and "era_4" in md
    assert "target epochs" in md and "| 4 source models + target train/val |" in md
    assert table["grasp"]["information_used"] == "4 source models + target train/val"
    assert comp["reference"] == "grasp" and "Δ acc vs grasp (p)" in md  # the registry's reference method
    for name in ("accuracy_per_target", "accuracy_vs_cost"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"


def test_a_method_missing_a_target_is_marked_not_ranked_by_its_mean(tmp_path):
    # fusion failed on the hard target: its mean over the two easy ones is higher than grasp's over all three
    accs = {"grasp": {"era_2": 0.6, "era_3": 0.9, "era_4": 0.9}, "fusion": {"era_3": 0.85, "era_4": 0.85}}
    for method, per_target in accs.items():
        for target, acc in per_target.items():
            write_json(tmp_path / DATASET / MODEL / method / target / "trial_1" / "metrics.json",
                       fake_report(method, target, 1, acc))
    write_json(tmp_path / DATASET / MODEL / "fusion" / "era_2" / "trial_1.failed.json",
               {"status": "failed", "error_type": "RuntimeError", "message": "boom", "failed_at": "2026-01-01T00:00:00"})
    paths = write_summaries(tmp_path, DATASET, MODEL, plots=False)
    rows = {r["method"]: r for r in read_json(paths["comparison_json"])["methods"]}
    assert rows["fusion"]["missing_targets"] == ["era_2"] and rows["grasp"]["missing_targets"] == []
    assert rows["fusion"]["accuracy_mean"] == pytest.approx(0.85)  # the number itself stays what it is
    md = paths["comparison_md"].read_text()
    fusion_row = next(line for line in md.splitlines() if line.startswith("| fusion |"))
    assert "| 0.8500 ± 0.0000 (2/3 targets) |" in fusion_row and "fusion has no result on era_2" in md
    assert "| 0.8000 ± " in md and "(3/3" not in md
    with open(paths["comparison_csv"], newline="") as f:
        assert {r["method"]: r["missing_targets"] for r in csv.DictReader(f)} == {"fusion": "era_2", "grasp": ""}


def test_too_few_pairs_give_a_reason_not_a_p_value(tmp_path):
    for method, acc in (("grasp", 0.8), ("ensemble", 0.7)):
        write_json(tmp_path / DATASET / MODEL / method / "era_2" / "trial_1" / "metrics.json",
                   fake_report(method, "era_2", 1, acc))
    comp = read_json(write_summaries(tmp_path, DATASET, MODEL, plots=False)["comparison_json"])
    paired = comp["paired_vs_reference"]["ensemble"]
    assert paired["p_value"] is None and "at least 3" in paired["over_targets"]["reason"]
    assert paired["mean_difference"] == pytest.approx(-0.1)


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run a sweep first"):
        write_summaries(tmp_path, DATASET, MODEL)


def _write_with_predictions(root, method, target, trial, labels, preds):
    import pandas as pd

    acc = float(np.mean(np.asarray(labels) == np.asarray(preds)))
    run = root / DATASET / MODEL / method / target / f"trial_{trial}"
    write_json(run / "metrics.json", fake_report(method, target, trial, acc))
    pd.DataFrame({"index": range(len(labels)), "label": labels, "prediction": preds}).to_csv(
        run / "test_predictions.csv", index=False)


@pytest.mark.parametrize("trials", [2, 6])
def test_identical_trials_do_not_shrink_the_p_value(tmp_path, trials):
    """Trials are seeds: repeating the same result in more trials must not make a difference 'more significant'."""
    rng = np.random.default_rng(0)
    targets = ["era_1", "era_2", "era_3", "era_4"]
    for i, t in enumerate(targets):
        labels = rng.integers(0, 10, 60)
        ref = np.where(rng.random(60) < 0.8, labels, (labels + 1) % 10)
        other = np.where(rng.random(60) < 0.7 + 0.05 * i, labels, (labels + 2) % 10)
        for k in range(1, trials + 1):
            _write_with_predictions(tmp_path, "grasp", t, k, labels.tolist(), ref.tolist())
            _write_with_predictions(tmp_path, "ensemble", t, k, labels.tolist(), other.tolist())
    comp = read_json(write_summaries(tmp_path, DATASET, MODEL, plots=False)["comparison_json"])
    ens = comp["paired_vs_reference"]["ensemble"]
    assert ens["n_targets"] == 4 and ens["p_value"] is not None
    diffs = [ens["per_target"][t]["mean_difference"] for t in targets]
    assert ens["p_value"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)  # over targets only
    ci = ens["per_target"]["era_1"]["ci95"]
    assert ci[0] <= ens["per_target"]["era_1"]["mean_difference"] <= ci[1]


def test_p_value_and_intervals_are_the_same_for_2_and_6_identical_trials(tmp_path):
    results = []
    for trials in (2, 6):
        root = tmp_path / str(trials)
        rng = np.random.default_rng(0)
        for t in ("era_1", "era_2", "era_3"):
            labels = rng.integers(0, 10, 50)
            ref = np.where(rng.random(50) < 0.8, labels, (labels + 1) % 10)
            other = np.where(rng.random(50) < 0.75, labels, (labels + 2) % 10)
            for k in range(1, trials + 1):
                _write_with_predictions(root, "grasp", t, k, labels.tolist(), ref.tolist())
                _write_with_predictions(root, "ensemble", t, k, labels.tolist(), other.tolist())
        comp = read_json(write_summaries(root, DATASET, MODEL, plots=False)["comparison_json"])
        ens = comp["paired_vs_reference"]["ensemble"]
        results.append((ens["p_value"], ens["p_value_holm"], {t: e["ci95"] for t, e in ens["per_target"].items()}))
        md = (root / DATASET / MODEL / "summaries" / "comparison.md").read_text()
        lo, hi = ens["per_target"]["era_1"]["ci95"]  # the paired table's cell: difference [interval]
        assert f"| ensemble | {ens['per_target']['era_1']['mean_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]" in md
    (p2, h2, ci2), (p6, h6, ci6) = results
    assert p2 is not None and p6 == pytest.approx(p2, rel=1e-9) and h6 == pytest.approx(h2, rel=1e-9)
    assert {t: pytest.approx(v) for t, v in ci2.items()} == ci6


def test_two_targets_print_no_p_value(tmp_path):
    for t in ("era_1", "era_2"):
        for m, preds in (("grasp", [0, 1, 2, 3]), ("ensemble", [0, 1, 0, 0])):
            _write_with_predictions(tmp_path, m, t, 1, [0, 1, 2, 3], preds)
    paths = write_summaries(tmp_path, DATASET, MODEL, plots=False)
    comp = read_json(paths["comparison_json"])
    assert comp["paired_vs_reference"]["ensemble"]["p_value"] is None
    row = [line for line in paths["comparison_md"].read_text().splitlines() if line.startswith("| ensemble |")][0]
    assert row.rstrip(" |").endswith("(-)")  # the difference is shown, no p-value
    assert "No p-value over targets: 2 target(s)" in paths["comparison_md"].read_text()


def test_information_labels_merge_varying_counts_into_ranges_and_keep_kinds_apart():
    from multisource.experiment.record import ExperimentRecord
    from multisource.experiment.summary import information_labels

    def record(used: dict | None):
        return ExperimentRecord.from_json({"target": "era_2", "trial": 1, "test": {"accuracy": 0.5},
                                           **({"information_used": used} if used is not None else {})})

    def report(models: int, bins: int = 0, start: str | None = None, target=("train", "val")):
        return record({"num_source_models": models, "pretrained_start": start,
                       "source_data": [f"b{i}" for i in range(bins)], "target_data": list(target)})

    # a past-only protocol: the second bin reads one source, the last four
    assert information_labels([report(k) for k in (3, 1, 4, 2)]) == ["1-4 source models + target train/val"]
    assert information_labels([report(1)]) == ["1 source model + target train/val"]
    assert information_labels([report(2, bins=1), report(4, bins=3)]) == [
        "2-4 source models + source data (1-3 bins) + target train/val"]
    # different kinds of reading stay separate labels; experiments without a record are said to be so
    assert information_labels([report(4, target=()), report(4), record(None), report(0, start="w.ckpt")]) == [
        "4 source models", "4 source models + target train/val", "not recorded",
        "shared start + target train/val"]


def test_trials_with_other_settings_are_named_not_silently_pooled_as_seeds(results):
    odd = fake_report("grasp", "era_4", 4, 0.5)
    odd["sources"] = ["era_2", "era_3"]  # a single experiment run with --sources, then counted as a trial
    odd["config"]["method_config"] = {"learning_rate": 1e-3}
    write_json(results / DATASET / MODEL / "grasp" / "era_4" / "trial_4" / "metrics.json", odd)
    paths = write_summaries(results, DATASET, MODEL, plots=False)
    grasp = read_json(paths["grasp"])
    assert grasp["targets"]["era_4"]["settings_differ"] == ["method_config", "sources"]
    assert grasp["targets"]["era_2"]["settings_differ"] == []
    comp = read_json(paths["comparison_json"])
    assert comp["settings_differ"] == {"grasp": {"era_4": ["method_config", "sources"]}}
    assert "grasp on era_4 (method_config, sources)" in paths["comparison_md"].read_text()


def test_the_comparison_opens_with_the_newest_bin_answer(tmp_path):
    """Ranked by test accuracy on the newest target, with 95% intervals, cost, and which methods the paired
    intervals cannot tell apart from the best."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)

    def predictions(share_right: float, seed: int) -> np.ndarray:
        right = np.zeros(400, bool)  # exactly that share right, on examples drawn with the seed
        right[np.random.default_rng(seed).permutation(400)[:round(share_right * 400)]] = True
        return np.where(right, labels, (labels + 1) % 10)

    shares = {"grasp": 0.90, "fusion": 0.89, "ensemble": 0.60}
    for method, share in shares.items():
        for target in TARGETS:  # era_4 is the newest of the two
            for trial in (1, 2):
                _write_with_predictions(tmp_path, method, target, trial, labels.tolist(),
                                        predictions(share, 100 * list(shares).index(method) + 10 * TARGETS.index(target) + trial).tolist())
    paths = write_summaries(tmp_path, DATASET, MODEL, plots=False)
    comp = read_json(paths["comparison_json"])
    answer = comp["newest_bin"]
    assert answer["target"] == "era_4" and answer["best"] == "grasp"
    ranked = [r["method"] for r in answer["methods"]]
    assert ranked == ["grasp", "fusion", "ensemble"]
    rows = {r["method"]: r for r in answer["methods"]}
    for method, r in rows.items():
        acc = r["accuracy"]
        half = 1.96 * math.sqrt(acc * (1 - acc) / 400)  # the normal approximation, as an independent check
        lo, hi = r["ci95"]
        assert lo < acc < hi and abs((hi - lo) / 2 - half) < 0.35 * half, (method, r["ci95"], half)
    assert rows["fusion"]["tied_with_best"] is True and rows["ensemble"]["tied_with_best"] is False
    table = {r["method"]: r for r in comp["methods"]}  # one interval per (method, target) everywhere
    assert all(table[m]["per_target_accuracy_ci95"]["era_4"] == rows[m]["ci95"] for m in rows)
    lo, hi = table["grasp"]["per_target_accuracy_ci95"]["era_2"]
    assert lo < table["grasp"]["per_target_accuracy"]["era_2"] < hi
    assert answer["tied_with_best"] == ["grasp", "fusion"]
    assert rows["ensemble"]["difference_ci95"][1] < 0 < rows["fusion"]["difference_ci95"][1]
    md = paths["comparison_md"].read_text()
    assert md.index("## Which method for the newest bin (era_4)?") < md.index("| method | n |")
    first = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "| grasp |" in first and "| best |" in first
    assert "grasp and fusion cannot be told apart" in md


def test_a_tagged_variant_is_its_own_row_paired_with_the_others(results):
    from multisource.config import ConfigError
    from multisource.experiment.config import ExperimentConfig
    from multisource.paths import experiment_dir

    for target, accs in (("era_2", [0.70, 0.72]), ("era_4", [0.95, 0.93])):
        for trial, acc in enumerate(accs, 1):
            report = fake_report("grasp", target, trial, acc)
            report["config"]["tag"] = "nearest"
            write_json(experiment_dir(results, DATASET, MODEL, "grasp", target, trial, tag="nearest") / "metrics.json",
                       report)
    assert (results / DATASET / MODEL / "grasp@nearest" / "era_2" / "trial_1" / "metrics.json").is_file()
    paths = write_summaries(results, DATASET, MODEL, plots=False)
    comp = read_json(paths["comparison_json"])
    rows = {r["method"]: r for r in comp["methods"]}
    assert rows["grasp[nearest]"]["per_target_accuracy"]["era_4"] == pytest.approx(0.94)
    paired = comp["paired_vs_reference"]["grasp[nearest]"]  # against the untagged reference, per target
    assert paired["per_target"]["era_2"]["mean_difference"] == pytest.approx(0.71 - np.mean(ACC[("grasp", "era_2")]))
    assert paths["grasp[nearest]"].name == "grasp@nearest.json" and "| grasp[nearest] |" in paths[
        "comparison_md"].read_text()
    with pytest.raises(ConfigError, match="a tag is 1-40 letters"):
        ExperimentConfig(target="era_2", tag="../x")

"""Own data end to end through ``--dataset PATH``: import a dated table and a folder tree, train sources, sweep
forward in time (``--protocol past``), and the drift report; protocols choose the sources they say and their
results never mix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from multisource.cli.own_data import drift_main, import_main
from multisource.cli.sweep import summarize_main, sweep_main
from multisource.cli.train import train_all_main, train_baseline_main
from multisource.config import ConfigError
from multisource.experiment.config import ExperimentConfig
from multisource.experiment.drift import clear_summary
from multisource.experiment.plan import plan_experiment
from multisource.experiment.protocols import canonical_protocol, check_sources, protocol_sources
from multisource.experiment.sweep import SweepConfig, plan_sweep
from multisource.options import RunOptions
from multisource.utils.io import read_json

from test_import import digits_table

MODEL = "tiny-resnet"
FAST = ["--device", "cpu", "--no-save-model"]


@pytest.fixture(scope="module")
def own(digits_root, tmp_path_factory) -> dict:
    """Three years of dated digits imported from a table, sources trained on them through --dataset PATH."""
    root = tmp_path_factory.mktemp("own")
    table = digits_table(digits_root, eras=("era_1", "era_2", "era_3")).drop(columns="era")
    table.to_csv(root / "images.csv", index=False)
    data = root / "MyDigits"
    assert import_main(["--table", str(root / "images.csv"), "--image_root", str(digits_root), "--output_dir",
                        str(data), "--bin_by", "year", "--image_size", "32", "--no_hflip", "--no_progress"]) == 0
    results = root / "results"
    assert train_all_main(["--dataset", str(data), "--model_name", MODEL, "--no-pretrained", "--max_epochs", "2",
                           "--batch_size", "16", "--learning_rate", "1e-3", "--results_dir", str(results),
                           "--device", "cpu"]) == 0
    return {"data": data, "results": results, "bins": ["2019", "2020", "2021"]}


def test_sources_train_under_the_cards_name(own):
    base = own["results"] / "MyDigits" / "baselines" / MODEL
    for b in own["bins"]:
        report = read_json(base / f"{b}.json")
        assert report["dataset"] == "MyDigits" and report["config"]["image_size"] == 32
        assert (base / f"{b}.ckpt").is_file()


def test_past_protocol_sweep_skips_the_first_bin_and_uses_only_earlier_sources(own, capsys):
    results = own["results"]
    code = sweep_main(["--dataset", str(own["data"]), "--methods", "ensemble", "grasp", "--protocol", "past",
                       "--num_trials", "1", "--initial_epochs", "1", "--finetune_epochs", "1", "--results_dir",
                       str(results), *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "target 2019 not run: no bins before 2019 (the first bin) under --protocol past" in out
    where = results / "MyDigits" / MODEL / "protocols" / "past"
    for method in ("ensemble", "grasp"):
        assert sorted(p.name for p in (where / method).iterdir()) == ["2020", "2021"]
        for target, sources in (("2020", ["2019"]), ("2021", ["2019", "2020"])):
            m = read_json(where / method / target / "trial_1" / "metrics.json")
            assert m["protocol"] == m["config"]["protocol"] == "past"
            assert m["sources"] == sources and sorted(m["information_used"]["source_models"]) == sources
    comp = read_json(where / "summaries" / "comparison.json")
    assert comp["protocol"] == "past" and comp["dataset"] == "MyDigits" and comp["targets"] == ["2020", "2021"]
    assert (where / "summaries" / "comparison.md").read_text().startswith(
        "# MyDigits / tiny-resnet: method comparison (protocol: past)")
    assert not (results / "MyDigits" / MODEL / "ensemble").exists()  # nothing under leave-one-out


def test_two_protocols_never_mix_in_one_summary(own, capsys):
    results = own["results"]
    sweep_main(["--dataset", str(own["data"]), "--methods", "ensemble", "--protocol", "past", "--num_trials", "1",
                "--results_dir", str(results), *FAST])
    assert sweep_main(["--dataset", str(own["data"]), "--methods", "ensemble", "--num_trials", "1",
                       "--results_dir", str(results), *FAST]) == 0
    capsys.readouterr()
    loo = read_json(results / "MyDigits" / MODEL / "summaries" / "ensemble.json")
    past = read_json(results / "MyDigits" / MODEL / "protocols" / "past" / "summaries" / "ensemble.json")
    assert loo["protocol"] == "leave-one-out" and past["protocol"] == "past"
    assert loo["num_experiments"] == 3 and past["num_experiments"] == 2
    assert loo["targets"]["2020"]["sources"] == ["2019", "2021"] and past["targets"]["2020"]["sources"] == ["2019"]
    # summarize rebuilds each protocol's summary from its own folder, by the dataset's folder or its bare name
    assert summarize_main(["--dataset", "MyDigits", "--model", MODEL, "--results_dir", str(results), "--protocol",
                           "past", "--no_plots"]) == 0
    assert "(protocol: past)" in capsys.readouterr().out
    assert read_json(results / "MyDigits" / MODEL / "protocols" / "past" / "summaries" /
                     "ensemble.json")["num_experiments"] == 2
    # a result moved into the other protocol's folder is counted as failed, never scored
    moved = results / "MyDigits" / MODEL / "protocols" / "past" / "ensemble" / "2019"
    shutil.copytree(results / "MyDigits" / MODEL / "ensemble" / "2019", moved)
    assert summarize_main(["--dataset", str(own["data"]), "--model", MODEL, "--results_dir", str(results),
                           "--protocol", "past", "--no_plots"]) == 0
    summary = read_json(results / "MyDigits" / MODEL / "protocols" / "past" / "summaries" / "ensemble.json")
    assert summary["num_experiments"] == 2 and summary["num_failed"] == 1
    assert summary["failed"][0]["error_type"] == "ProtocolMismatch"
    shutil.rmtree(moved)

    # side by side: the targets both protocols have, each protocol's mean from the files, the paired difference
    assert summarize_main(["--dataset", str(own["data"]), "--model", MODEL, "--results_dir", str(results),
                           "--protocols", "leave-one-out", "past", "--no_plots"]) == 0
    assert "protocols side by side" in capsys.readouterr().out
    sbs = read_json(results / "MyDigits" / MODEL / "summaries" / "protocols_leave-one-out_vs_past.json")
    assert sbs["shared_targets"] == ["2020", "2021"]
    accuracy = {p: np.mean([read_json(d / "ensemble" / t / "trial_1" / "metrics.json")["test"]["accuracy"]
                            for t in ("2020", "2021")])
                for p, d in (("leave-one-out", results / "MyDigits" / MODEL),
                             ("past", results / "MyDigits" / MODEL / "protocols" / "past"))}
    row = next(r for r in sbs["rows"] if r["method"] == "ensemble")
    for p in ("leave-one-out", "past"):
        assert row[p]["accuracy"] == pytest.approx(accuracy[p])
        assert row[p]["ci95"][0] <= row[p]["accuracy"] <= row[p]["ci95"][1]
    diff = row["vs_leave-one-out"]["past"]
    assert diff["mean_difference"] == pytest.approx(accuracy["past"] - accuracy["leave-one-out"])
    assert set(diff["per_target"]) == {"2020", "2021"} and all(e["ci95"] for e in diff["per_target"].values())


def test_drift_report_matches_the_sources_own_accuracies_and_clears_numbers(own, capsys):
    assert drift_main(["--dataset", str(own["data"]), "--model", MODEL, "--results_dir", str(own["results"]),
                       "--device", "cpu", "--no_progress"]) == 0
    out = own["results"] / "MyDigits" / MODEL / "drift"
    report = read_json(out / "drift_report.json")
    assert report["bins"] == own["bins"]
    m = np.array(report["matrix"])
    for i, b in enumerate(own["bins"]):  # the diagonal is each source's own test accuracy, as its training saw it
        recorded = read_json(own["results"] / "MyDigits" / "baselines" / MODEL / f"{b}.json")["test_accuracy"]
        assert m[i, i] == pytest.approx(recorded, abs=1e-9)
    assert report["summary"] == clear_summary(m)
    assert report["time_ranges"]["2020"]["first"].startswith("2020")
    csv = (out / "drift_report.csv").read_text().splitlines()
    assert csv[0] == "source,2019,2020,2021" and len(csv) == 4
    assert (out / "drift_report.png").stat().st_size > 1000
    md = (out / "drift_report.md").read_text()
    assert f"**{m[1, 1]:.4f}**" in md and "forward transfer" in md
    assert "2019-01" in capsys.readouterr().out


def test_a_drift_report_missing_a_source_fails_before_evaluating_any(own, tmp_path, monkeypatch, capsys):
    from multisource.experiment import drift

    calls = []
    monkeypatch.setattr(drift, "evaluate_split", lambda *a, **k: calls.append(a) or {"accuracy": 0.5})
    empty = tmp_path / "checkpoints"
    shutil.copytree(own["results"] / "MyDigits" / "baselines" / MODEL, empty)
    sorted(empty.glob("*.ckpt"))[-1].unlink()  # the newest bin's source
    assert drift_main(["--dataset", str(own["data"]), "--model", MODEL, "--results_dir", str(tmp_path / "r"),
                       "--checkpoint_dir", str(empty), "--device", "cpu", "--no_progress"]) != 0
    err = capsys.readouterr().err
    assert calls == [] and f"No {MODEL} source model for ['2021']" in err
    assert "or report the bins that have one: --bins 2019 2020." in err


def test_clear_numbers_equal_a_hand_computation():
    m = [[0.9, 0.6, 0.3],
         [0.7, 0.8, 0.5],
         [0.4, 0.65, 0.95]]
    s = clear_summary(m)
    assert s["in_domain"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert s["next_domain"] == pytest.approx((0.6 + 0.5) / 2)
    assert s["forward_transfer"] == pytest.approx((0.6 + 0.3 + 0.5) / 3)
    assert s["backward_transfer"] == pytest.approx((0.7 + 0.4 + 0.65) / 3)
    assert clear_summary([[0.5]]) == {"in_domain": 0.5, "next_domain": None, "forward_transfer": None,
                                      "backward_transfer": None}
    with pytest.raises(ValueError, match="square"):
        clear_summary([[0.1, 0.2]])


def test_folder_tree_import_trains_through_dataset_path(digits_root, tmp_path):
    tree = tmp_path / "tree"
    for era, name in (("era_1", "b_first"), ("era_2", "a_second")):
        for split in ("train", "val", "test"):
            for cls_dir in (digits_root / era / split).iterdir():
                shutil.copytree(cls_dir, tree / name / cls_dir.name, dirs_exist_ok=True)
    data = tmp_path / "Tree"
    assert import_main(["--folder", str(tree), "--bins", "b_first", "a_second", "--output_dir", str(data),
                        "--image_size", "32", "--no_progress"]) == 0
    results = tmp_path / "results"
    assert train_baseline_main(["--dataset", str(data), "--bin", "a_second", "--model_name", MODEL,
                                "--no-pretrained", "--max_epochs", "1", "--results_dir", str(results),
                                "--device", "cpu"]) == 0
    report = read_json(results / "Tree" / "baselines" / MODEL / "a_second.json")
    assert report["dataset"] == "Tree" and report["bin"] == "a_second"


# ---- protocols -------------------------------------------------------------------------------------------

BINS = ["b1", "b2", "b3", "b4", "b5"]


@pytest.mark.parametrize("protocol, target, sources", [
    ("leave-one-out", "b3", ["b1", "b2", "b4", "b5"]),
    ("past", "b3", ["b1", "b2"]),
    ("past", "b1", []),
    ("window:1", "b4", ["b3"]),
    ("window:2", "b5", ["b3", "b4"]),
    ("window:3", "b2", ["b1"]),  # fewer earlier bins than the window: all of them
])
def test_protocols_choose_the_sources_they_say(protocol, target, sources):
    assert protocol_sources(BINS, target, canonical_protocol(protocol)) == sources


def test_protocol_spellings_and_errors():
    assert canonical_protocol("LOO") == canonical_protocol("leave_one_out") == "leave-one-out"
    assert canonical_protocol(" Window:02 ") == "window:2"
    for bad in ("future", "window:0", "window:x", "window"):
        with pytest.raises(ConfigError, match="leave-one-out, past, window:N"):
            canonical_protocol(bad)
    with pytest.raises(ConfigError, match=r"--sources \['b4'\] are not allowed for target b3 under --protocol past"):
        check_sources(BINS, "b3", ["b1", "b4"], "past")


def test_sweep_and_experiment_plans_follow_the_protocol(digits_root, tmp_path):
    opts = RunOptions(data_root=str(digits_root), results_dir=str(tmp_path))
    plan = plan_sweep(SweepConfig(dataset="drift_digits", methods=("ensemble",), num_trials=1,
                                  protocol="window:2"), opts)
    assert {j.config.target: j.sources for j in plan.jobs} == {
        "era_2": ("era_1",), "era_3": ("era_1", "era_2"), "era_4": ("era_2", "era_3"), "era_5": ("era_3", "era_4")}
    assert list(plan.skipped_targets) == ["era_1"]
    assert plan.jobs[0].out_dir == tmp_path / "drift_digits" / MODEL / "protocols" / "window-2" / "ensemble" / \
        "era_2" / "trial_1"
    with pytest.raises(ConfigError, match="No experiments to run"):
        plan_sweep(SweepConfig(dataset="drift_digits", methods=("ensemble",), targets=("era_1",),
                               protocol="past"), opts)
    with pytest.raises(ConfigError, match="under --protocol past"):
        plan_experiment(ExperimentConfig(target="era_2", sources=("era_3",), protocol="past"), opts)
    with pytest.raises(ConfigError, match="first bin"):
        plan_experiment(ExperimentConfig(target="era_1", protocol="past"), opts)
    assert plan_experiment(ExperimentConfig(target="era_3", protocol="past"), opts).sources == ("era_1", "era_2")

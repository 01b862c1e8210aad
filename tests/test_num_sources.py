"""The number of sources K as a sweep axis: each K's sources are the target's K nearest earlier bins, results are
kept apart per K, a K the target's past cannot fill is skipped, and the num_sources summary (tables and figure)
holds accuracy and models resident against K."""

from __future__ import annotations

import pytest

from multisource.config import ConfigError
from multisource.experiment.num_sources import num_sources_markdown
from multisource.experiment.plots import figure_num_sources, overlapping_texts
from multisource.experiment.sweep import SweepConfig, plan_sweep, run_sweep
from multisource.options import SweepOptions
from multisource.utils.io import read_json

MODEL = "tiny-resnet"
CHEAP = {"fusion": {"finetune_epochs": 1}, "grasp": {"initial_epochs": 1, "finetune_epochs": 1}}


def test_bad_counts_and_a_window_protocol_beside_them_are_refused():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="num_sources"):
            SweepConfig(num_sources=(1, bad))
    with pytest.raises(ConfigError, match="lists a value twice"):
        SweepConfig(num_sources=(2, 2))
    with pytest.raises(ConfigError, match=r"drop --protocol window:2"):
        SweepConfig(num_sources=(1, 2), protocol="window:2")
    assert SweepConfig(num_sources=(4, 1, 2)).protocols() == ("window:1", "window:2", "window:4")
    assert SweepConfig().protocols() == ("leave-one-out",)


def test_each_k_plans_the_k_nearest_earlier_bins_and_skips_what_the_past_cannot_fill(digits_root, tmp_path):
    opts = SweepOptions(data_root=str(digits_root), results_dir=str(tmp_path))
    plan = plan_sweep(SweepConfig(methods=("grasp",), targets=("era_2", "era_4"), num_trials=1,
                                  num_sources=(1, 3)), opts)
    got = {(j.config.protocol, j.config.target): list(j.sources) for j in plan.jobs}
    assert got == {("window:1", "era_2"): ["era_1"], ("window:1", "era_4"): ["era_3"],
                   ("window:3", "era_4"): ["era_1", "era_2", "era_3"]}
    assert plan.skipped_targets == {"era_2 (K=3)": "only 1 bin(s) before era_2, fewer than --num_sources K=3"}
    folders = {j.out_dir.relative_to(tmp_path).parts[:5] for j in plan.jobs}
    assert folders == {("drift_digits", MODEL, "protocols", f"window-{k}", "grasp") for k in (1, 3)}
    assert {j.label for j in plan.jobs} >= {f"{MODEL} grasp era_4 K=3 trial 1", f"{MODEL} grasp era_4 K=1 trial 1"}


@pytest.mark.xdist_group("trained_sources")
def test_a_k_sweep_writes_accuracy_and_models_resident_against_k(trained_sources, tmp_path):
    opts = SweepOptions(data_root=str(trained_sources["data_root"]), results_dir=str(tmp_path),
                      checkpoint_dir=str(trained_sources["checkpoint_dir"]), save_model=False, device="cpu")
    config = SweepConfig(dataset="drift_digits", models=(MODEL,), methods=("ensemble", "fusion", "grasp"),
                         targets=("era_3", "era_4"), num_trials=1, seed=3, method_configs=CHEAP,
                         num_sources=(1, 3, 4))
    result = run_sweep(config, opts)
    assert result.ok and len(result.finished) == 9 and result.skipped_targets == {
        "era_3 (K=3)": "only 2 bin(s) before era_3, fewer than --num_sources K=3",
        "era_3 (K=4)": "only 2 bin(s) before era_3, fewer than --num_sources K=4",
        "era_4 (K=4)": "only 3 bin(s) before era_4, fewer than --num_sources K=4"}
    paths = result.summaries[MODEL]
    protocols = tmp_path / "drift_digits" / MODEL / "protocols"
    assert paths["num_sources_json"] == protocols / "num_sources.json"
    for name in ("num_sources.csv", "num_sources.md", "num_sources.png", "num_sources.pdf",
                 "window-1/summaries/comparison.md", "window-3/summaries/comparison.md"):
        assert (protocols / name).is_file(), name
    summary = read_json(paths["num_sources_json"])
    assert summary["num_sources"] == [1, 3] and summary["targets"] == ["era_3", "era_4"]
    assert summary["common_targets"] == ["era_4"] and summary["reference"] == "grasp"
    rows = {(r["method"], r["num_sources"], r["target"]): r for r in summary["rows"]}
    for method in ("ensemble", "fusion", "grasp"):
        for k in (1, 3):
            record = read_json(protocols / f"window-{k}" / method / "era_4" / "trial_1" / "metrics.json")
            assert sorted(record["config"]["sources"]) == [f"era_{i}" for i in range(4 - k, 4)]
            row, over = rows[method, k, "era_4"], rows[method, k, "over targets"]
            # over the targets every K has (era_4 alone: K=3 skips era_3), not over each K's own targets
            assert row["accuracy"] == over["accuracy"] == record["test"]["accuracy"]
            assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
            assert row["max_models_resident"] == record["memory"]["max_models_resident"]
    # the ensemble holds its K sources at once; GRASP's and FUSION's residency does not grow with K
    assert [rows["ensemble", k, "era_4"]["max_models_resident"] for k in (1, 3)] == [1, 3]
    assert rows["grasp", 3, "era_4"]["max_models_resident"] <= 2
    assert rows["fusion", 3, "era_4"]["max_models_resident"] <= 2
    assert ("ensemble", 1, "era_3") in rows  # K=1 ran era_3 too; the mean over targets above left it out
    diff = rows["ensemble", 3, "era_4"]
    assert diff["diff_vs_reference"] == pytest.approx(diff["accuracy"] - rows["grasp", 3, "era_4"]["accuracy"])
    text = (protocols / "num_sources.md").read_text()
    assert "| method | K=1 | K=3 |" in text and "| ensemble | 1 model, " in text and "| 3 models, " in text
    assert text == num_sources_markdown(summary)
    assert overlapping_texts(figure_num_sources(summary)) == []

    from multisource.cli.sweep import summarize_main

    (protocols / "num_sources.md").unlink()
    assert summarize_main(["--dataset", "drift_digits", "--model", MODEL, "--results_dir", str(tmp_path),
                           "--num_sources", "1", "3", "4", "--no_plots"]) == 0
    assert (protocols / "num_sources.md").read_text() == text  # rebuilt from the results alone

"""Label budgets (--target_fraction): a stratified, seeded subsample of the target's train and val splits, the
same for every method of a trial, kept apart on disk, and summarized against the budget."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from multisource.config import ConfigError
from multisource.data.loaders import open_dataset
from multisource.data.splits import label_budget_indices
from multisource.experiment.config import ExperimentConfig
from multisource.experiment.sweep import SweepConfig, run_sweep
from multisource.measure.statistics import mean_over_targets_interval
from multisource.methods.inputs import target_data
from multisource.options import SweepOptions
from multisource.utils.io import read_json

MODEL = "tiny-resnet"
CHEAP = {"fusion": {"finetune_epochs": 1}, "target_only": {"finetune_epochs": 1}}


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 5), min_size=1, max_size=200),
       fraction=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1))
def test_budget_keeps_the_rounded_share_of_every_class_and_at_least_one(labels, fraction, seed):
    kept = label_budget_indices(labels, fraction, seed)
    assert kept == sorted(set(kept)) and all(0 <= i < len(labels) for i in kept)
    have, got = Counter(labels), Counter(labels[i] for i in kept)
    for label, n in have.items():
        assert got[label] == (n if fraction == 1 else max(1, round(fraction * n)))
    assert kept == label_budget_indices(labels, fraction, seed)  # seeded: the same draw every time


def test_budget_depends_on_its_seed_and_each_class_draws_alone():
    labels = [0] * 50 + [1] * 50
    a, b = label_budget_indices(labels, 0.2, 1), label_budget_indices(labels, 0.2, 2)
    assert a != b
    only_zeros = label_budget_indices([0] * 50, 0.2, 1)
    assert [i for i in a if i < 50] == only_zeros  # class 0's draw does not depend on class 1 being there


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "half", True])
def test_a_budget_outside_zero_to_one_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match="target_fraction"):
        ExperimentConfig(target="era_2", target_fraction=bad)
    with pytest.raises(ConfigError, match="target_fractions"):
        SweepConfig(targets=("era_2",), target_fractions=(0.5, bad))


def test_over_targets_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    parts = [(rng.random((2, 4000)) < p, None) for p in (0.6, 0.8, 0.9)]
    lo, hi = mean_over_targets_interval(parts, seed=3)
    means = [a.mean(0) for a, _ in parts]
    centre = np.mean([m.mean() for m in means])
    se = np.sqrt(sum(m.var() / len(m) for m in means)) / len(means)  # independent targets, each its own variance
    assert lo < centre < hi
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.15 * 2 * 1.96 * se
    assert mean_over_targets_interval([(np.ones((1, 10)), None)], seed=0) == [1.0, 1.0]
    groups = [f"g{i // 3}" for i in range(30)]  # renderings of one example move together
    assert mean_over_targets_interval([(np.ones((1, 30)), groups)], seed=0) == [1.0, 1.0]


def test_target_data_subsamples_train_and_val_only_the_same_for_every_call(digits_root):
    handle = open_dataset("drift_digits", digits_root)
    whole = target_data(handle, "era_2", model=MODEL, seed=11)
    part = target_data(handle, "era_2", model=MODEL, seed=11, target_fraction=0.25)
    again = target_data(handle, "era_2", model=MODEL, seed=11, target_fraction=0.25)
    assert part.fraction == 0.25 and whole.fraction == 1.0
    for split in ("train", "val"):
        on_disk = Counter(p.parent.name for p in (digits_root / "era_2" / split).glob("*/*.png"))  # independent
        got = Counter(handle.classes[label] for label in getattr(part, split).dataset.targets)
        assert got == {c: max(1, round(0.25 * n)) for c, n in on_disk.items()}
        assert getattr(part, split).dataset.samples == getattr(again, split).dataset.samples
        assert set(getattr(part, split).dataset.samples) <= set(getattr(whole, split).dataset.samples)
        assert len(getattr(whole, split).dataset) == sum(on_disk.values())
    assert part.test.dataset.samples == whole.test.dataset.samples  # never subsampled
    assert part.budget_sample == again.budget_sample and whole.budget_sample is None
    assert target_data(handle, "era_2", model=MODEL, seed=12, target_fraction=0.25).budget_sample != part.budget_sample
    image, label = part.train.dataset[0]
    assert image.shape[-1] == whole.image_size and label == part.train.dataset.targets[0]


@pytest.mark.xdist_group("trained_sources")
def test_a_budget_sweep_keeps_budgets_apart_and_writes_the_data_efficiency_summary(trained_sources, tmp_path):
    opts = SweepOptions(data_root=str(trained_sources["data_root"]), results_dir=str(tmp_path / "budgets"),
                      checkpoint_dir=str(trained_sources["checkpoint_dir"]), save_model=False, device="cpu")
    base = dict(dataset="drift_digits", models=(MODEL,), methods=("fusion", "target_only"), targets=("era_2",),
                num_trials=1, seed=7, method_configs=CHEAP)
    result = run_sweep(SweepConfig(**base, target_fractions=(1, 0.25)), opts)
    assert result.ok and len(result.finished) == 4
    model_dir = tmp_path / "budgets" / "drift_digits" / MODEL
    small = model_dir / "budgets" / "fraction-0.25"
    records = {f: {m: read_json(d / m / "era_2" / "trial_1" / "metrics.json") for m in ("fusion", "target_only")}
               for f, d in ((1.0, model_dir), (0.25, small))}
    on_disk = sum(1 for _ in (trained_sources["data_root"] / "era_2" / "train").glob("*/*.png"))
    for f, by_method in records.items():
        sizes = {m: r["budget"]["target_train_split"] for m, r in by_method.items()}
        samples = {m: r["budget"].get("target_sample") for m, r in by_method.items()}
        assert len(set(sizes.values())) == 1 and len(set(samples.values())) == 1  # the same images for every method
        assert (samples["fusion"] is None) == (f == 1)
        assert all(r["config"]["target_fraction"] == f and r["budget"]["target_fraction"] == f
                   and r["information_used"]["target_fraction"] == f for r in by_method.values())
        assert (sizes["fusion"] == on_disk) == (f == 1)
    for m in ("fusion", "target_only"):  # the test split is whole at every budget
        assert records[0.25][m]["test"]["num_samples"] == records[1.0][m]["test"]["num_samples"]
        assert records[0.25][m]["val"]["num_samples"] < records[1.0][m]["val"]["num_samples"]

    # at 1 the results equal a sweep that never heard of budgets, prediction by prediction
    plain = SweepOptions(**{**opts.__dict__, "results_dir": str(tmp_path / "plain")})
    run_sweep(SweepConfig(**base), plain)
    for m in ("fusion", "target_only"):
        a = pd.read_csv(model_dir / m / "era_2" / "trial_1" / "test_predictions.csv")
        b = pd.read_csv(tmp_path / "plain" / "drift_digits" / MODEL / m / "era_2" / "trial_1" /
                        "test_predictions.csv")
        assert a.equals(b)

    paths = result.summaries[MODEL]
    eff = read_json(paths["data_efficiency_json"])
    assert eff["target_fractions"] == [0.25, 1.0] and eff["baseline"] == "target_only"
    over = {(r["method"], r["target_fraction"]): r for r in eff["rows"] if r["target"] == "over targets"}
    assert set(over) == {(m, f) for m in ("fusion", "target_only") for f in (0.25, 1.0)}
    for (m, f), row in over.items():
        assert row["accuracy"] == records[f][m]["test"]["accuracy"]  # one target: its accuracy is the mean
        lo, hi = row["ci95"]
        assert lo <= row["accuracy"] <= hi
        assert row["target_train_images"] == records[f][m]["budget"]["target_train_split"]
    per = [r for r in eff["rows"] if r["target"] == "era_2" and r["method"] == "fusion"]
    assert all(r["diff_ci95"] is not None for r in per)
    md = paths["data_efficiency_md"].read_text()
    assert "| fusion |" in md and "0.25 (" in md and "Where each transfer method" in md
    for name in ("data_efficiency_csv", "data_efficiency_png", "data_efficiency_pdf"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0
    assert paths["fraction-0.25/comparison_md"].read_text().startswith(
        "# drift_digits / tiny-resnet: method comparison (protocol: leave-one-out; label budget: 0.25")


def test_a_settings_files_target_fraction_is_a_sweeps_one_budget(tmp_path):
    from multisource.experiment.settings import Layer, read_settings, resolve_sweep

    cfg = tmp_path / "budget.yaml"
    cfg.write_text("target_fraction: 0.25\n")
    sweep, _ = resolve_sweep(read_settings(cfg), Layer())
    assert sweep.target_fractions == (0.25,)
    cfg.write_text("target_fractions: [1, 0.05]\n")
    assert resolve_sweep(read_settings(cfg), Layer())[0].target_fractions == (0.05, 1.0)
    with pytest.raises(ConfigError, match="6 significant digits"):
        SweepConfig(targets=("era_2",), target_fractions=(0.3333333,))

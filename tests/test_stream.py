"""--protocol stream: each bin's model is built from the model deployed for the bin before and that bin's source
only (O(1) models, O(1) target training per bin), scored on its own and the next bin, resumable after a kill, and
summarised in stream.{md,csv,json,png,pdf}."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from multisource.config import ConfigError
from multisource.experiment import runner
from multisource.experiment.config import ExperimentConfig
from multisource.experiment.plots import figure_stream, overlapping_texts
from multisource.experiment.protocols import canonical_protocol, protocol_sources
from multisource.experiment.record import read_record
from multisource.experiment.stream import OVER_BINS, stream_markdown
from multisource.experiment.sweep import SweepConfig, plan_sweep, run_sweep
from multisource.methods import get_method
from multisource.methods.merge import is_averageable
from multisource.models.checkpoint import CheckpointError, read_checkpoint
from multisource.options import SweepOptions
from multisource.utils.io import read_json

MODEL = "tiny-resnet"
BINS = ["era_1", "era_2", "era_3", "era_4", "era_5"]
GRASP = {"initial_epochs": 1, "finetune_epochs": 1}
# FUSION without fine-tuning: its deployed models are then the running means themselves (the oracle below)
FUSION = {"finetune_epochs": 0}


def test_the_stream_protocol_has_one_new_source_per_bin():
    assert canonical_protocol(" Stream ") == "stream"
    assert protocol_sources(BINS, "era_1", "stream") == []
    assert protocol_sources(BINS, "era_4", "stream") == ["era_3"]
    with pytest.raises(ConfigError, match=r"--num_sources .* drop --protocol stream"):
        SweepConfig(num_sources=(1, 2), protocol="stream")


def test_a_stream_plan_carries_the_previous_bins_model_and_refuses_methods_without_a_running_form(digits_root,
                                                                                                tmp_path):
    opts = SweepOptions(data_root=str(digits_root), results_dir=str(tmp_path))
    plan = plan_sweep(SweepConfig(methods=("grasp", "source_finetune", "target_only"), targets=("era_4",),
                                  num_trials=1, protocol="stream"), opts)
    # era_4 continues era_3, which continues era_2: the stream runs from its start; era_1 has no source
    assert plan.skipped_targets == {"era_1": "no bins before era_1 (the first bin) under --protocol stream"}
    jobs = {(j.config.method, j.config.target): j for j in plan.jobs}
    assert sorted(jobs) == [(m, t) for m in ("grasp", "source_finetune", "target_only")
                            for t in ("era_2", "era_3", "era_4")]
    stream = tmp_path / "drift_digits" / MODEL / "protocols" / "stream"
    second, fourth = jobs["grasp", "era_2"], jobs["grasp", "era_4"]
    assert second.carried is None and second.pool_order == ("era_1",)
    assert fourth.sources == ("era_3",) and fourth.carried.path == stream / "grasp" / "era_3" / "trial_1" / "model.ckpt"
    assert fourth.carried.bins == ("era_1", "era_2") and fourth.carried.name == "deployed:era_3"
    # the deployed model sits in time just before the new source: first chronologically, second nearest-first
    assert fourth.pool_order == ("deployed:era_3", "era_3")
    assert jobs["source_finetune", "era_4"].pool_order == ("era_3", "deployed:era_3")  # pick nearest: the new one
    assert jobs["target_only", "era_4"].carried is None  # it reads no source model
    with pytest.raises(ConfigError, match=r"ensemble has no running form .*Drop ensemble from --methods"):
        plan_sweep(SweepConfig(methods=("grasp", "ensemble"), protocol="stream"), opts)
    with pytest.raises(ConfigError, match=r"logits mode .* --mode params"):
        plan_sweep(SweepConfig(methods=("fusion",), protocol="stream", method_configs={"fusion": {"mode": "logits"}}),
                   opts)
    # a matched budget is the reference's for its pool in the stream: the deployed model and the new source
    matched = plan_sweep(SweepConfig(methods=("grasp", "fusion", "target_only"), protocol="stream", num_trials=1,
                                     method_configs={"grasp": {"initial_epochs": 2, "finetune_epochs": 1},
                                                     "fusion": {"finetune_epochs": "matched"},
                                                     "target_only": {"finetune_epochs": "matched"}}), opts)
    epochs = {(j.config.method, j.config.target): j.method_config.finetune_epochs for j in matched.jobs
              if j.config.method != "grasp"}
    assert epochs == {(m, t): 2 if t == "era_2" else 3 for m in ("fusion", "target_only") for t in BINS[1:]}
    defaulted = plan_sweep(SweepConfig(protocol="stream", num_trials=1), opts)  # no --methods: those that stream
    assert {j.config.method for j in defaulted.jobs} == {m for m in SweepConfig().methods if get_method(m).stream}
    assert {"ensemble", "pearl"} & {j.config.method for j in defaulted.jobs} == set()


def test_a_settings_file_that_configures_methods_streams_those_that_can(digits_root, tmp_path):
    """configs/own_data.yaml configures the default methods (a ``methods:`` mapping of settings): with --protocol
    stream those without a running form are left out, as without a file; methods named are refused."""
    from multisource.config import Layer
    from multisource.experiment.settings import read_settings, resolve_sweep

    own = read_settings(Path(__file__).resolve().parents[1] / "configs" / "own_data.yaml")
    sweep, _ = resolve_sweep(own, Layer({"protocol": "stream"}, flag=True))
    assert "ensemble" not in sweep.methods and "pearl" not in sweep.methods
    assert {"grasp", "fusion", "source_finetune", "target_only"} <= set(sweep.methods)
    named, _ = resolve_sweep(own, Layer({"protocol": "stream", "methods": ["grasp", "ensemble"]}, flag=True))
    with pytest.raises(ConfigError, match="Drop ensemble from --methods"):
        plan_sweep(named, SweepOptions(data_root=str(digits_root), results_dir=str(tmp_path)))


def _options(trained_sources, results) -> SweepOptions:
    return SweepOptions(data_root=str(trained_sources["data_root"]), results_dir=str(results),
                      checkpoint_dir=str(trained_sources["checkpoint_dir"]), save_model=False, device="cpu",
                      progress=False)


@pytest.fixture(scope="module")
def streamed(trained_sources, tmp_path_factory):
    """GRASP and FUSION streamed over the five eras, uninterrupted."""
    results = tmp_path_factory.mktemp("stream")
    config = SweepConfig(dataset="drift_digits", models=(MODEL,), methods=("grasp", "fusion"), num_trials=1, seed=5,
                         protocol="stream", method_configs={"grasp": GRASP, "fusion": FUSION})
    result = run_sweep(config, _options(trained_sources, results))
    return results, result


@pytest.mark.xdist_group("trained_sources")
def test_a_stream_holds_two_models_and_trains_linearly_in_the_bins(streamed, trained_sources):
    results, result = streamed
    assert result.ok and len(result.finished) == 8
    base = results / "drift_digits" / MODEL / "protocols" / "stream"
    records = {(m, t): read_record(base / m / t / "trial_1") for m in ("grasp", "fusion") for t in BINS[1:]}
    for (method, target), r in records.items():
        i = BINS.index(target)
        assert r.protocol == "stream" and r.sources == [BINS[i - 1]]
        carried = f"deployed:{BINS[i - 1]}" if i >= 2 else None
        assert r.information_used.extra["source_models"] == ([carried] if carried else []) + [BINS[i - 1]]
        assert r.stream.carried_from == (BINS[i - 1] if i >= 2 else None)
        assert r.stream.stands_for == BINS[:i - 1] * (i >= 2)
        # measured, not declared: the deployed model and one source at a time, whatever the bin
        assert r.memory.max_models_resident == (2 if i >= 2 else 1)
        assert (base / method / target / "trial_1" / "model.ckpt").is_file()  # the next bin continues it
    # GRASP's target training per bin is constant after the second bin (the deployed model's fine-tuning and one
    # transfer's), so the stream's total is linear in the bins; under past each bin replays every earlier source
    epochs = [records["grasp", t].budget.target_epochs for t in BINS[1:]]
    assert epochs == [1, 2, 2, 2]
    grasp = get_method("grasp")
    config = grasp.config_cls(**GRASP)
    past = [grasp.target_epochs(config, i) for i in range(1, len(BINS))]
    assert sum(epochs) == 1 + 2 * (len(BINS) - 2) < sum(past) == 1 + 2 + 3 + 4


@pytest.mark.xdist_group("trained_sources")
def test_a_streamed_running_mean_is_the_mean_of_every_source_so_far(streamed, trained_sources):
    results, _ = streamed
    ckpt = results / "drift_digits" / MODEL / "protocols" / "stream" / "fusion" / "era_5" / "trial_1" / "model.ckpt"
    deployed = read_checkpoint(ckpt)["state_dict"]
    sources = [read_checkpoint(trained_sources["checkpoint_dir"] / f"{b}.ckpt")["state_dict"] for b in BINS[:4]]
    compared = 0
    for name, value in deployed.items():
        if is_averageable(value):  # the oracle: the plain mean over era_1..era_4's sources, in float64
            mean = torch.stack([s[name].double() for s in sources]).mean(0)
            torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)
            compared += 1
    assert compared > 10


@pytest.mark.xdist_group("trained_sources")
def test_each_deployed_model_is_scored_on_the_next_bin_and_the_stream_summary_says_so(streamed):
    results, result = streamed
    base = results / "drift_digits" / MODEL / "protocols" / "stream"
    r = read_record(base / "grasp" / "era_3" / "trial_1")
    assert r.stream.next_bin == "era_4"
    frame = pd.read_csv(base / "grasp" / "era_3" / "trial_1" / "next_bin_test_predictions.csv")
    era_4 = pd.read_csv(base / "grasp" / "era_4" / "trial_1" / "test_predictions.csv")
    assert frame["label"].equals(era_4["label"])  # the next bin's test split, in its fixed order
    assert r.stream.next_bin_test.accuracy == pytest.approx((frame["label"] == frame["prediction"]).mean())
    last = read_record(base / "grasp" / "era_5" / "trial_1")
    assert last.stream.next_bin is None and last.stream.next_bin_test is None
    paths = result.summaries[MODEL]
    for name in ("stream_json", "stream_csv", "stream_md", "stream_png", "stream_pdf"):
        assert paths[name].is_file() and paths[name].parent == base, name
    summary = read_json(paths["stream_json"])
    assert summary["bins"] == BINS[1:] and summary["reference"] == "grasp"
    rows = {(row["method"], row["target"]): row for row in summary["rows"]}
    assert rows["grasp", "era_3"]["next_accuracy"] == r.stream.next_bin_test.accuracy
    low, high = rows["grasp", "era_3"]["next_ci95"]
    assert low <= r.stream.next_bin_test.accuracy <= high
    assert rows["grasp", "era_5"]["cumulative_target_epochs"] == 7 and rows["grasp", OVER_BINS]["max_models_resident"] == 2
    assert rows["grasp", "era_3"]["past_cumulative_target_epochs"] is None  # past did not run here
    over = rows["fusion", OVER_BINS]
    assert over["accuracy"] == pytest.approx(sum(rows["fusion", t]["accuracy"] for t in BINS[1:]) / 4)
    markdown = stream_markdown(summary)
    assert "a stream over 4 bins (era_2 .. era_5)" in markdown and "| era_3 -> era_4 |" in markdown
    assert overlapping_texts(figure_stream(summary)) == []


@pytest.mark.xdist_group("trained_sources")
def test_a_stream_killed_at_any_bin_continues_from_the_model_deployed_before_it(streamed, trained_sources, tmp_path,
                                                                                monkeypatch):
    reference, _ = streamed
    real_run, real_write = runner.run_plan, runner._write_outputs

    def failing_at_era_3(plan, opts):
        if plan.config.target == "era_3":
            raise RuntimeError("forced failure for the test")
        return real_run(plan, opts)

    config = SweepConfig(dataset="drift_digits", models=(MODEL,), methods=("grasp",), num_trials=1, seed=5,
                         protocol="stream", method_configs={"grasp": GRASP})
    opts = _options(trained_sources, tmp_path)
    base = tmp_path / "drift_digits" / MODEL / "protocols" / "stream" / "grasp"
    # a failed bin stops its stream: the later bins are not run on a missing (or stale) deployed model
    monkeypatch.setattr(runner, "run_plan", failing_at_era_3)
    failed = run_sweep(config, opts)
    assert [(o.target, o.status, o.error_type) for o in failed.outcomes] == [
        ("era_2", "finished", None), ("era_3", "failed", "RuntimeError"), ("era_4", "failed", "StreamStopped"),
        ("era_5", "failed", "StreamStopped")]
    assert "the stream stopped at era_3" in failed.outcomes[3].message
    monkeypatch.undo()
    # then the process is killed in the middle of each bin in turn (its model computed, its folder not yet in
    # place); each re-run finishes the bins before the kill and continues from the model deployed before it
    for kill_at in BINS[2:]:
        def killed(staging, record, *args, _at=kill_at):
            if record.target == _at:
                raise KeyboardInterrupt
            return real_write(staging, record, *args)

        monkeypatch.setattr(runner, "_write_outputs", killed)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(config, opts)
        monkeypatch.undo()
        done = [t for t in BINS[1:] if runner.is_finished(base / t / "trial_1")]
        assert done == BINS[1:BINS.index(kill_at)], kill_at
        assert not list(base.glob(f"{kill_at}/.trial_1.partial-*"))  # nothing half-written is left
        if kill_at == "era_4":  # a single experiment of the stream cannot skip the bins before it
            with pytest.raises(CheckpointError, match="run the stream up to era_4 first"):
                runner.run_experiment(ExperimentConfig(dataset="drift_digits", model=MODEL, method="grasp",
                                                       target="era_5", protocol="stream", seed=5, method_config=GRASP),
                                      opts)
    result = run_sweep(config, opts)
    assert [o.status for o in result.outcomes] == ["skipped", "skipped", "skipped", "finished"]
    assert not any(p.name.endswith(".failed.json") for p in base.rglob("*"))  # the failure records went
    for t in BINS[1:]:  # the same results as the uninterrupted stream, to the prediction
        mine = pd.read_csv(base / t / "trial_1" / "test_predictions.csv")
        theirs = pd.read_csv(reference / "drift_digits" / MODEL / "protocols" / "stream" / "grasp" / t / "trial_1"
                             / "test_predictions.csv")
        assert mine.equals(theirs), t

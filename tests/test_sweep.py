"""Sweeps: job order and seeds, resume after an interruption, failures recorded, missing checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from multisource.experiment import runner
from multisource.options import SweepOptions
from multisource.experiment.summary import METRICS, TIMING_KEYS
from conftest import file_value
from multisource.failures import failure_paths
from multisource.experiment.sweep import SweepConfig, plan_sweep, run_sweep
from multisource.utils.io import read_json, write_text
from multisource.utils.seed import trial_seed

pytestmark = pytest.mark.xdist_group("trained_sources")  # one worker builds the shared sources

MODEL = "tiny-resnet"
# Cheap experiments: the ensemble needs no training; fusion fine-tunes one epoch.
CHEAP = {"fusion": {"finetune_epochs": 1}}


def options(trained_sources, results_dir) -> SweepOptions:
    return SweepOptions(data_root=str(trained_sources["data_root"]), results_dir=str(results_dir),
                      checkpoint_dir=str(trained_sources["checkpoint_dir"]), save_model=False, device="cpu")


def sweep_config(**kw) -> SweepConfig:
    base = dict(dataset="drift_digits", models=(MODEL,), methods=("ensemble", "fusion"), targets=("era_2",),
                num_trials=1, seed=7, method_configs=CHEAP)
    return SweepConfig(**{**base, **kw})


def comparable(summary: dict) -> dict:
    """A summary without what legitimately changes between runs (timings, memory peaks, dates)."""
    out = {k: v for k, v in summary.items() if k != "generated_at"}
    out["targets"] = {t: {**rec, "metrics": {k: v for k, v in rec["metrics"].items() if k not in TIMING_KEYS}}
                      for t, rec in summary["targets"].items()}
    out["overall"] = {kind: {k: v for k, v in stats.items() if k not in TIMING_KEYS}
                      for kind, stats in summary["overall"].items()}
    return out


def test_plan_order_sources_and_seeds(digits_root, tmp_path):
    cfg = SweepConfig(dataset="drift_digits", models=(MODEL,), methods=("grasp", "ensemble"),
                      targets=("era_4", "era_2"), num_trials=2, seed=5)
    jobs = plan_sweep(cfg, SweepOptions(data_root=str(digits_root), results_dir=str(tmp_path))).jobs
    assert [(j.config.method, j.config.target, j.config.trial) for j in jobs] == [
        ("grasp", "era_2", 1), ("grasp", "era_2", 2), ("grasp", "era_4", 1), ("grasp", "era_4", 2),
        ("ensemble", "era_2", 1), ("ensemble", "era_4", 1)]  # deterministic: one run per target
    assert jobs[0].sources == ("era_1", "era_3", "era_4", "era_5")
    assert {j.config.seed for j in jobs} == {5}  # the base seed; the plan derives trial k's own seed
    assert [j.seed for j in jobs[:2]] == [trial_seed(5, 1), trial_seed(5, 2)] and trial_seed(5, 1) != trial_seed(5, 2)
    # resolved once: one dataset handle and one method config object shared by every job of a method
    assert len({id(j.handle) for j in jobs}) == 1
    assert len({id(j.method_config) for j in jobs if j.config.method == "grasp"}) == 1
    assert jobs[1].out_dir == tmp_path / "drift_digits" / MODEL / "grasp" / "era_2" / "trial_2"


def test_interrupted_sweep_resumes_to_the_same_summary(trained_sources, tmp_path, monkeypatch):
    full = run_sweep(sweep_config(), options(trained_sources, tmp_path / "a"))
    assert len(full.finished) == 2 and full.ok

    # Interrupt the second experiment (fusion) while it writes its outputs (Ctrl-C); then a killed run's leftovers.
    real_write, calls = runner._write_outputs, []

    def interrupting_write(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(*args, **kw)

    monkeypatch.setattr(runner, "_write_outputs", interrupting_write)
    opts_b = options(trained_sources, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_config(), opts_b)
    monkeypatch.undo()
    second = plan_sweep(sweep_config(), opts_b).jobs[1].out_dir
    assert not second.exists() and not list(second.parent.glob(".trial_1.partial-*"))  # nothing half-written
    logs = list((tmp_path / "b" / "drift_digits" / MODEL / "sweeps").glob("sweep-*.json"))
    assert [e["status"] for e in read_json(logs[0])["experiments"]] == ["finished", "not run"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = second.parent / f".trial_1.partial-{runner.HOST}-{dead.pid}"  # what a killed run leaves behind
    write_text(stale / "metrics.json", '{"status": "compl')

    resumed = run_sweep(sweep_config(), opts_b)
    assert (len(resumed.skipped), len(resumed.finished)) == (1, 1) and not stale.exists()
    for method in ("ensemble", "fusion"):
        a, b = (read_json(r.summaries[MODEL][method]) for r in (full, resumed))
        assert comparable(a) == comparable(b)
        check_summary_matches_files(b, tmp_path / "b", method)


def check_summary_matches_files(summary: dict, results, method: str) -> None:
    for target, rec in summary["targets"].items():
        for trial, i in zip(rec["trials"], range(len(rec["trials"]))):
            report = read_json(results / "drift_digits" / MODEL / method / target / f"trial_{trial}" / "metrics.json")
            for key in METRICS:
                assert rec["metrics"][key]["values"][i] == file_value(report, key)


def test_failure_is_recorded_and_the_sweep_continues(trained_sources, tmp_path, monkeypatch, capsys):
    from multisource.cli.sweep import sweep_main

    real_run = runner.run_plan

    def failing_run(plan, opts):
        if plan.config.target == "era_4":
            raise RuntimeError("forced failure for the test")
        return real_run(plan, opts)

    monkeypatch.setattr(runner, "run_plan", failing_run)
    argv = ["--dataset", "drift_digits", "--model", MODEL, "--methods", "ensemble", "--targets", "era_2", "era_4",
            "--num_trials", "1", "--data_root", str(trained_sources["data_root"]),
            "--checkpoint_dir", str(trained_sources["checkpoint_dir"]), "--results_dir", str(tmp_path),
            "--no-save-model", "--device", "cpu"]
    assert sweep_main(argv) == 1
    assert "forced failure for the test" in capsys.readouterr().err
    base = tmp_path / "drift_digits" / MODEL / "ensemble"
    assert runner.is_finished(base / "era_2" / "trial_1")
    record, tb = failure_paths(base / "era_4" / "trial_1")
    assert read_json(record)["error_type"] == "RuntimeError" and "forced failure" in tb.read_text()
    summary = read_json(tmp_path / "drift_digits" / MODEL / "summaries" / "ensemble.json")
    assert summary["num_failed"] == 1 and summary["targets"]["era_4"]["failed_trials"] == [1]
    assert summary["targets"]["era_4"]["metrics"]["test_accuracy"]["mean"] is None  # never a 0.0

    monkeypatch.undo()  # the cause is fixed: the re-run does only the failed experiment and clears its record
    assert sweep_main(argv) == 0
    assert "1 already finished (skipped)" in capsys.readouterr().out
    assert not record.exists() and not tb.exists()
    assert read_json(tmp_path / "drift_digits" / MODEL / "summaries" / "ensemble.json")["num_failed"] == 0


def test_missing_checkpoints_are_reported_before_anything_runs(trained_sources, tmp_path, capsys):
    from multisource.cli.sweep import sweep_main

    empty = tmp_path / "ckpts"
    empty.mkdir()
    rc = sweep_main(["--dataset", "drift_digits", "--model", MODEL, "--methods", "ensemble", "--targets", "era_1",
                     "--data_root", str(trained_sources["data_root"]), "--checkpoint_dir", str(empty),
                     "--results_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "train_all_subsets.py --dataset drift_digits --model_name tiny-resnet" in err
    assert all(b in err for b in ("era_2", "era_5")) and "--train_missing" in err
    assert not (tmp_path / "r").exists()


def test_train_missing_trains_then_runs(trained_sources, tmp_path):
    ckpts = tmp_path / "ckpts"
    shutil.copytree(trained_sources["checkpoint_dir"], ckpts, ignore=shutil.ignore_patterns("logs", "era_1.*"))
    cfg = sweep_config(methods=("ensemble",), targets=("era_3",),
                       source_training={"max_epochs": 1, "pretrained": False, "batch_size": 64})
    opts = options(trained_sources, tmp_path / "r")
    opts.checkpoint_dir, opts.train_missing, opts.summarize = str(ckpts), True, False
    result = run_sweep(cfg, opts)
    assert (ckpts / "era_1.ckpt").is_file() and len(result.finished) == 1 and not result.summaries


def test_changed_hyper_parameters_are_not_silently_skipped(trained_sources, tmp_path):
    from multisource.config import ConfigError

    opts = options(trained_sources, tmp_path)
    opts.summarize = False
    cfg = sweep_config(methods=("ensemble",), targets=("era_2",))
    run_sweep(cfg, opts)
    with pytest.raises(ConfigError, match="voting"):
        run_sweep(sweep_config(methods=("ensemble",), targets=("era_2",),
                               method_configs={"ensemble": {"voting": "hard"}}), opts)


def test_finished_experiments_run_otherwise_are_refused_but_a_field_added_since_is_its_default(trained_sources,
                                                                                                  tmp_path):
    opts = options(trained_sources, tmp_path)
    assert run_sweep(sweep_config(methods=("fusion",)), opts).ok
    metrics = tmp_path / "drift_digits" / MODEL / "fusion" / "era_2" / "trial_1" / "metrics.json"
    report = read_json(metrics)
    del report["config"]["method_config"]["source_weights"]  # as written before FUSION had the option
    metrics.write_text(json.dumps(report))
    again = run_sweep(sweep_config(methods=("fusion",)), opts)
    assert [o.status for o in again.outcomes] == ["skipped"]  # the new field at its default: the same settings
    from multisource.config import ConfigError

    with pytest.raises(ConfigError, match=r"(?s)method_config.finetune_epochs: found 1, asked for 2.*--overwrite"):
        run_sweep(sweep_config(methods=("fusion",), method_configs={"fusion": {"finetune_epochs": 2}}), opts)
    with pytest.raises(ConfigError, match=r"method_config.source_weights: found 'uniform', asked for 'recency:0.5'"):
        run_sweep(sweep_config(methods=("fusion",), method_configs={"fusion": {"finetune_epochs": 1,
                                                                                "source_weights": "recency:0.5"}}),
                  opts)



def test_a_field_that_does_not_change_the_results_does_not_refuse_a_finished_experiment(trained_sources, tmp_path):
    """GRASP's alignment_passes changes how the alignment is computed, not its scores (metadata same_results):
    a result from another number of passes, or from before the field, is reused; a real change is refused."""
    opts = options(trained_sources, tmp_path)
    cheap = {"grasp": {"initial_epochs": 1, "finetune_epochs": 1}}
    assert run_sweep(sweep_config(methods=("grasp",), method_configs=cheap), opts).ok
    metrics = tmp_path / "drift_digits" / MODEL / "grasp" / "era_2" / "trial_1" / "metrics.json"
    report = read_json(metrics)
    assert report["config"]["method_config"]["alignment_passes"] == 4
    assert {s["alignment_passes"] for s in report["record"]["steps"]} == {4}  # tiny-resnet has more than 4 tensors
    for passes in (1, 2):
        asked = {"grasp": {**cheap["grasp"], "alignment_passes": passes}}
        assert [o.status for o in run_sweep(sweep_config(methods=("grasp",), method_configs=asked),
                                            opts).outcomes] == ["skipped"]
    del report["config"]["method_config"]["alignment_passes"]  # as written before the option existed
    metrics.write_text(json.dumps(report))
    assert [o.status for o in run_sweep(sweep_config(methods=("grasp",), method_configs=cheap),
                                        opts).outcomes] == ["skipped"]
    from multisource.config import ConfigError

    with pytest.raises(ConfigError, match=r"method_config.alignment_threshold: found 0.3, asked for 0.5"):
        run_sweep(sweep_config(methods=("grasp",), method_configs={"grasp": {**cheap["grasp"],
                                                                              "alignment_threshold": 0.5}}), opts)


def test_a_result_from_before_a_changed_default_is_not_taken_for_the_new_default(trained_sources, tmp_path):
    """PEARL's outside_adapters came with a new behaviour as its default: a result recorded before the field
    existed ran the old way ("base"), so a sweep asking for the default must refuse to skip it."""
    opts = options(trained_sources, tmp_path)
    cheap = {"pearl": {"adapter_dim": 2, "composition_epochs": 1}}
    assert run_sweep(sweep_config(methods=("pearl",), method_configs=cheap), opts).ok
    metrics = tmp_path / "drift_digits" / MODEL / "pearl" / "era_2" / "trial_1" / "metrics.json"
    report = read_json(metrics)
    del report["config"]["method_config"]["outside_adapters"]  # as written before the option existed
    metrics.write_text(json.dumps(report))
    from multisource.config import ConfigError

    with pytest.raises(ConfigError, match=r"method_config.outside_adapters: found 'base', asked for 'composed'"):
        run_sweep(sweep_config(methods=("pearl",), method_configs=cheap), opts)
    asked_base = {"pearl": {**cheap["pearl"], "outside_adapters": "base"}}
    assert [o.status for o in run_sweep(sweep_config(methods=("pearl",), method_configs=asked_base),
                                        opts).outcomes] == ["skipped"]

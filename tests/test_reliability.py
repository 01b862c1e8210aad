"""Nothing false is ever recorded: diverged runs and NaN weights fail with a reason, options outside their
meaning are refused, environment faults (full disk, read-only folder) are one line, damaged files get clear
messages, unreadable results are counted, and two sweeps at once share the work."""

from __future__ import annotations

import functools
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from multisource.cli.experiment import experiment_main
from multisource.cli.preprocess import build_main
from multisource.cli.sweep import summarize_main, sweep_main
from multisource.cli.train import train_all_main, train_baseline_main
from multisource.experiment import record as record_module, runner
from multisource.experiment.config import ExperimentConfig
from multisource.experiment.sweep import SweepConfig, run_sweep
from multisource.experiment.summary import write_summaries
from multisource.models import CheckpointError, load_checkpoint, save_checkpoint
from multisource.options import SweepOptions
from multisource.training.loop import FinetuneConfig, TrainingDiverged, finetune
from multisource.training.module import ClassifierModule
from multisource.utils.io import read_json, write_json

drift_digits_main = functools.partial(build_main, dataset="drift_digits")  # preprocessing/drift_digits_preprocessing.py

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-resnet"


def _opts(trained_sources, results, **kw) -> SweepOptions:
    return SweepOptions(**{"data_root": str(trained_sources["data_root"]), "results_dir": str(results),
                         "checkpoint_dir": str(trained_sources["checkpoint_dir"]), "device": "cpu",
                         "save_model": False, **kw})


def _nan_checkpoints(trained_sources, tmp_path, bad: str = "era_3") -> Path:
    ckpts = tmp_path / "ckpts"
    shutil.copytree(trained_sources["checkpoint_dir"], ckpts, ignore=shutil.ignore_patterns("logs"))
    model, meta = load_checkpoint(ckpts / f"{bad}.ckpt")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_checkpoint(ckpts / f"{bad}.ckpt", model, model_name=meta["model_name"], classes=meta["classes"],
                    dataset=meta["dataset"], bin_name=bad, config=meta["config"], metrics=meta["metrics"])
    return ckpts


# --- 1. non-finite numbers never become results -----------------------------------------------------------

def test_finetune_stops_when_the_loss_is_not_finite():
    x = torch.randn(8, 4)
    x[0, 0] = float("nan")  # a NaN input: the loss is NaN from the first step
    batches = [(x, torch.zeros(8, dtype=torch.long))]
    with pytest.raises(TrainingDiverged, match=r"Training diverged at epoch 1 .*lower --learning_rate"):
        finetune(nn.Linear(4, 3), batches, batches, FinetuneConfig(epochs=2, learning_rate=1e-3),
                 torch.device("cpu"))


def test_source_training_stops_when_the_epoch_loss_is_not_finite():
    module = ClassifierModule(nn.Linear(4, 3), learning_rate=1e-3)
    module.training_step((torch.full((2, 4), float("inf")), torch.zeros(2, dtype=torch.long)), 0)
    with pytest.raises(TrainingDiverged, match="Training diverged at epoch 1"):
        module.on_train_epoch_end()
    module.training_step((torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)), 0)
    module.on_train_epoch_end()  # finite: nothing raised, the sum restarts each epoch


def test_a_checkpoint_with_nan_weights_is_refused(trained_sources, tmp_path):
    ckpts = _nan_checkpoints(trained_sources, tmp_path)
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN or inf\).*re-train it"):
        load_checkpoint(ckpts / "era_3.ckpt")


def test_non_finite_outputs_fail_the_experiment_and_write_nothing(trained_sources, tmp_path, monkeypatch):
    real = runner.predict

    def nan_predict(*args, **kw):
        logits, y = real(*args, **kw)
        return logits * float("nan"), y

    monkeypatch.setattr(runner, "predict", nan_predict)
    cfg = ExperimentConfig(method="ensemble", target="era_2", sources=("era_1", "era_3"))
    with pytest.raises(runner.NonFiniteResult, match="non-finite outputs"):
        runner.run_experiment(cfg, _opts(trained_sources, tmp_path))
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob(".trial_*"))


def test_a_nan_source_is_a_failed_experiment_in_the_summaries(trained_sources, tmp_path):
    ckpts = _nan_checkpoints(trained_sources, tmp_path)
    cfg = SweepConfig(dataset="drift_digits", models=(MODEL,), methods=("ensemble",), targets=("era_2", "era_4"),
                      num_trials=1)
    result = run_sweep(cfg, _opts(trained_sources, tmp_path / "r", checkpoint_dir=str(ckpts)))
    assert len(result.failed) == 2 and all("non-finite weights" in o.message for o in result.failed)
    summary = read_json(result.summaries[MODEL]["ensemble"])
    assert summary["num_failed"] == 2 and summary["num_experiments"] == 0
    assert summary["targets"]["era_2"]["metrics"]["test_accuracy"]["mean"] is None  # never a number
    assert "non-finite weights" in summary["failed"][0]["message"]


# --- 2 and 7. options outside their meaning, bad inputs per command: one line, exit 2, nothing written ----

BAD_INPUTS = [  # (command, argv, what the one line must say)
    ("train", ["--max_epochs", "0"], "SourceTrainConfig.max_epochs=0 is out of range"),
    ("train", ["--image_size", "0"], "SourceTrainConfig.image_size=0 is out of range"),
    ("train", ["--image_size", "-5"], "SourceTrainConfig.image_size=-5 is out of range"),
    ("train", ["--weight_decay", "-1"], "SourceTrainConfig.weight_decay=-1.0 is out of range"),
    ("train", ["--learning_rate", "fast"], "--learning_rate: 'fast' is not"),
    ("train", ["--precision", "fp8"], "TrainOptions.precision='fp8' is not valid"),
    ("train", ["--model_name", "no-such-model"], "Unknown model 'no-such-model'"),
    ("train", ["--bin", "era_9"], "Unknown bin(s) ['era_9']"),
    ("train_all", ["--executor", "dask"], "Unknown executor 'dask'. Available: local, ray"),
    ("train_all", ["--workers", "0"], "TrainOptions.workers=0 is out of range"),
    ("grasp", ["--alignment_threshold", "5"], "GraspConfig.alignment_threshold=5.0 is out of range; use a value "
                                              "in [-1, 1]"),
    ("grasp", ["--weight_decay", "-1"], "GraspConfig.weight_decay=-1.0 is out of range"),
    ("grasp", ["--image_size", "0"], "ExperimentConfig.image_size=0 is out of range"),
    ("grasp", ["--batch_size", "0"], "ExperimentConfig.batch_size=0 is out of range"),
    ("grasp", ["--precision", "fp8"], "ExperimentOptions.precision='fp8' is not valid"),
    ("grasp", ["--target", "era_9"], "Unknown bin(s) ['era_9']"),
    ("grasp", ["--sources", "era_2", "era_2"], "--sources lists a bin twice"),
    ("grasp", ["--sources", "era_1"], "Target bin era_1 is also listed as a source"),
    ("fusion", ["--mode", "average"], "FusionConfig.mode='average' is not valid"),
    ("pearl", ["--adapter_dim", "0"], "PearlConfig.adapter_dim=0 is out of range"),
    ("sweep", ["--num_trials", "0"], "SweepConfig.num_trials=0 is out of range"),
    ("sweep", ["--targets", "era_9"], "--targets: targets ['era_9'] are not bins of drift_digits"),
    ("sweep", ["--image_size", "-5"], "SweepConfig.image_size=-5 is out of range"),
    ("sweep", ["--alignment_threshold", "1.5"], "GraspConfig.alignment_threshold=1.5 is out of range"),
    ("sweep", ["--workers", "two"], "--workers: 'two' is not an integer"),
    ("preprocess", ["--image_size", "abc"], "--image_size: 'abc' is not an integer"),
    # NaN passes every comparison, so it passed every range check: refused where values are converted
    ("grasp", ["--alignment_threshold", "nan"], "--alignment_threshold: 'nan' is not a finite number"),
    ("grasp", ["--learning_rate", "inf"], "--learning_rate: 'inf' is not a finite number"),
    ("grasp", ["--learning_rate", "0"], "GraspConfig.learning_rate=0.0 is out of range; use a value in (0, inf]"),
    ("pearl", ["--composition_lr=-inf"], "--composition_lr: '-inf' is not a finite number"),
    ("ties", ["--density", "0"], "TiesConfig.density=0.0 is out of range; use a value in (0.0, 1.0]"),
    ("ties", ["--density", "nan"], "--density: 'nan' is not a finite number"),
    ("dare", ["--drop_rate", "NaN"], "--drop_rate: 'NaN' is not a finite number"),
    ("task_arithmetic", ["--lambdas", "0.5", "nan"], "--lambdas: ['0.5', 'nan'] is not a finite number"),
    ("grasp", ["--seed", "1e40"], "--seed: '1e40' is not an integer"),
    ("grasp", ["--seed", "-1"], "ExperimentConfig.seed=-1 is out of range; use a value in [0, 4294967295]"),
    ("train", ["--seed", "4294967296"], "SourceTrainConfig.seed=4294967296 is out of range"),
    ("sweep", ["--seed", "nan"], "--seed: 'nan' is not a finite number"),
    ("train", ["--learning_rate", "nan"], "--learning_rate: 'nan' is not a finite number"),
    ("train", ["--learning_rate", "0"], "SourceTrainConfig.learning_rate=0.0 is out of range"),
]


def _run_command(command: str, argv: list[str], digits_root: Path, results: Path) -> int:
    common = ["--data_root", str(digits_root), "--results_dir", str(results)]
    if command == "train":
        argv = argv if "--bin" in argv else ["--bin", "era_1", *argv]
        return train_baseline_main(["--dataset", "drift_digits", *common, *argv])
    if command == "train_all":
        return train_all_main(["--dataset", "drift_digits", *common, *argv])
    if command in ("grasp", "fusion", "pearl", "ties", "dare", "task_arithmetic"):
        argv = argv if "--target" in argv else ["--target", "era_1", *argv]
        return experiment_main(["--dataset", "drift_digits", *common, *argv], method=command)
    if command == "sweep":
        return sweep_main(["--dataset", "drift_digits", *common, *argv])
    return drift_digits_main(["--output_dir", str(results / "data"), *argv])


@pytest.mark.parametrize("command, argv, message", BAD_INPUTS, ids=[f"{c}{' '.join(a)}" for c, a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(command, argv, message, digits_root, tmp_path, capsys):
    results = tmp_path / "results"
    assert _run_command(command, argv, digits_root, results) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    assert not results.exists()


def test_mixed_precision_on_cpu_records_what_really_ran(trained_sources, tmp_path):
    report = runner.run_experiment(ExperimentConfig(method="ensemble", target="era_2", sources=("era_1",)),
                                   _opts(trained_sources, tmp_path, precision="16-mixed"))
    assert report.config.precision == "32" and report.config.precision_requested == "16-mixed"


# --- 3. environment faults: one line naming the path and the fix, finished results kept -------------------

@pytest.mark.parametrize("err_no, words", [(errno.ENOSPC, "free disk space"), (errno.EROFS, "not writable"),
                                           (errno.EACCES, "not writable")])
def test_a_full_disk_or_read_only_folder_is_one_line_and_keeps_finished_results(trained_sources, tmp_path,
                                                                                monkeypatch, capsys, err_no, words):
    argv = ["--dataset", "drift_digits", "--model", MODEL, "--voting", "soft", "--sources", "era_1", "era_3",
            "--data_root", str(trained_sources["data_root"]), "--checkpoint_dir",
            str(trained_sources["checkpoint_dir"]), "--results_dir", str(tmp_path), "--no-save-model"]
    assert experiment_main([*argv, "--target", "era_2"], method="ensemble") == 0
    finished = tmp_path / "drift_digits" / MODEL / "ensemble" / "era_2" / "trial_1" / "metrics.json"
    before = finished.read_bytes()
    capsys.readouterr()

    def failing_write(path, data):
        raise OSError(err_no, os.strerror(err_no), str(path))

    monkeypatch.setattr(record_module, "write_json", failing_write)
    assert experiment_main([*argv, "--target", "era_4"], method="ensemble") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err and words in err, err
    assert "metrics.json" in err  # the path is named
    assert finished.read_bytes() == before
    assert not (tmp_path / "drift_digits" / MODEL / "ensemble" / "era_4" / "trial_1").exists()
    assert not list((tmp_path / "drift_digits" / MODEL / "ensemble").glob("era_4/.trial_*"))


def test_summaries_on_a_full_disk_are_one_line(tmp_path, monkeypatch, capsys):
    from multisource.experiment import summary

    write_json(tmp_path / "drift_digits" / MODEL / "grasp" / "era_2" / "trial_1" / "metrics.json",
               _fake_report("grasp", "era_2", 0.8))
    monkeypatch.setattr(summary, "write_json", lambda p, d: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device", str(p))))
    assert summarize_main(["--dataset", "drift_digits", "--model", MODEL, "--results_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "free disk space" in err and "\n" not in err


def test_a_failure_record_on_a_read_only_file_system_does_not_stop_the_sweep(tmp_path, monkeypatch):
    from multisource.experiment import sweep as sweep_module
    from multisource.experiment.jobs import Outcome
    from multisource.failures import failure_paths

    out = tmp_path / "trial_1"
    record, _ = failure_paths(out)
    record.write_text("{}")
    real_unlink = Path.unlink

    def read_only_unlink(self, missing_ok=False):
        if self == record:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only_unlink)
    job = type("Job", (), {"out_dir": out})()
    sweep_module.record_outcome(job, Outcome(status="finished", out_dir=str(out)))  # warns, does not raise
    assert record.exists()


# --- 4. clear messages for damaged files -------------------------------------------------------------------

def test_a_corrupt_dataset_card_names_the_file_and_the_fix(digits_root, tmp_path):
    from multisource.data.loaders import open_dataset

    copy = tmp_path / "DriftDigits"
    shutil.copytree(digits_root, copy)
    (copy / "dataset_card.json").write_text('{"bins": {"era_1": ')
    with pytest.raises(ValueError, match=r"dataset_card.json is not a valid dataset card .*rebuild the dataset"):
        open_dataset("drift_digits", copy)


@pytest.mark.parametrize("content, message", [(os.urandom(256), "not a readable PyTorch checkpoint"),
                                              (b"", "is empty (0 bytes")])
def test_a_damaged_checkpoint_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "era_1.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert message in text and "\n" not in text and "weights_only" not in text and "()" not in text


def test_class_order_mismatch_names_both_orders(trained_sources, tmp_path):
    from multisource.data.loaders import open_dataset
    from multisource.experiment.plan import check_source_checkpoint

    model, meta = load_checkpoint(trained_sources["checkpoint_dir"] / "era_1.ckpt")
    path = tmp_path / "era_1.ckpt"
    save_checkpoint(path, model, model_name=MODEL, classes=list(reversed(meta["classes"])), dataset="drift_digits")
    with pytest.raises(CheckpointError, match=r"has 10 classes \['9', .*same classes in the same order"):
        check_source_checkpoint(path, "era_1", open_dataset("drift_digits", trained_sources["data_root"]), MODEL)


def test_yearbook_names_the_missing_gender_folder_and_skips_impossible_years(tmp_path):
    from multisource.data.build.raw import RawDataError
    from multisource.data.build.yearbook import RAW_FOLDER, YEAR_RANGE, locate_yearbook_root, scan

    root = tmp_path / RAW_FOLDER
    (root / "M").mkdir(parents=True)
    with pytest.raises(RawDataError, match=r"has M/ but no F/ folder"):
        locate_yearbook_root(tmp_path)
    (root / "F").mkdir()
    for name in ("1850_Old_0.png", "2150_Future_0.png", "1950_Ok_0.png"):
        (root / "F" / name).write_bytes(b"x")
    dated, skipped = scan(root)
    assert [year for _, _, year in dated] == [1950]
    assert {s["path"]: s["reason"] for s in skipped} == {
        "F/1850_Old_0.png": f"year 1850 is outside {YEAR_RANGE[0]}-{YEAR_RANGE[1]}",
        "F/2150_Future_0.png": f"year 2150 is outside {YEAR_RANGE[0]}-{YEAR_RANGE[1]}"}


# --- 5. summaries never hide a result ----------------------------------------------------------------------

def _fake_report(method: str, target: str, acc: float) -> dict:
    return {"schema_version": 1, "status": "complete", "dataset": "drift_digits", "model": MODEL, "method": method,
            "target": target, "sources": ["era_1"], "trial": 1, "seed": 42,
            "config": {"method_config": {}, "base_seed": 42, "batch_size": 32, "image_size": 32, "precision": "32"},
            "environment": {}, "val": {"accuracy": acc}, "test": {"accuracy": acc, "f1_macro": acc},
            "time": {"total_s": 1.0}, "memory": {"peak_bytes": 1, "resident_model_bytes": 1,
                                                 "max_models_resident": 2},
            "flops": {"total": 1, "forward_per_image": 1, "convention": "MACs"}}


def test_an_unreadable_metrics_file_is_listed_and_counted(tmp_path):
    base = tmp_path / "drift_digits" / MODEL / "grasp"
    write_json(base / "era_2" / "trial_1" / "metrics.json", _fake_report("grasp", "era_2", 0.8))
    broken = base / "era_2" / "trial_2" / "metrics.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"status": "compl')
    summary = read_json(write_summaries(tmp_path, "drift_digits", MODEL, plots=False)["grasp"])
    assert summary["num_experiments"] == 1 and summary["num_failed"] == 1
    assert summary["failed"][0]["error_type"] == "UnreadableResult" and summary["failed"][0]["trial"] == 2
    assert str(broken) in summary["failed"][0]["message"]


def test_summarize_says_which_results_it_could_not_read(tmp_path, capsys):
    base = tmp_path / "drift_digits" / MODEL / "grasp"
    write_json(base / "era_2" / "trial_1" / "metrics.json", _fake_report("grasp", "era_2", 0.8))
    broken = base / "era_2" / "trial_2" / "metrics.json"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x00garbage")
    assert summarize_main(["--dataset", "drift_digits", "--model", MODEL, "--results_dir", str(tmp_path),
                           "--no_plots"]) == 0
    captured = capsys.readouterr()
    assert f"unreadable result (counted as failed): {broken}" in captured.err
    assert "| grasp | 1 | 1 |" in captured.out  # one scored, one failed


# --- 6. concurrency and interruption -----------------------------------------------------------------------

def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(trained_sources, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "drift_digits" / MODEL / "ensemble" / "era_2" / "trial_1"
    stale = out.with_name(f".trial_1.partial-{runner.HOST}-{dead.pid}")
    (stale / "half").mkdir(parents=True)
    alive = out.with_name(f".trial_1.partial-{runner.HOST}-{os.getpid()}x")  # not a pid: left alone
    alive.mkdir()
    runner.run_experiment(ExperimentConfig(method="ensemble", target="era_2", sources=("era_1",)),
                          _opts(trained_sources, tmp_path))
    assert not stale.exists() and alive.exists() and (out / "metrics.json").is_file()


def test_claims_are_exclusive_and_a_dead_owners_claim_is_taken_over(tmp_path):
    from multisource.claims import claim_path, claimed_elsewhere, release_claim, try_claim

    out = tmp_path / "trial_1"
    assert try_claim(out) and not try_claim(out)  # held by this (live) process
    release_claim(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim_path(out).write_text(f"{runner.HOST}-{dead.pid}")
    assert not claimed_elsewhere(out) and try_claim(out)
    assert claim_path(out).read_text() == runner.process_tag()
    claim_path(out).write_text(f"{runner.HOST}-1")  # pid 1 lives: another sweep's claim
    assert claimed_elsewhere(out) and not try_claim(out)
    release_claim(out)  # not ours: left in place
    assert claim_path(out).read_text() == f"{runner.HOST}-1"


def test_a_claim_from_another_host_counts_until_its_heartbeat_stops(tmp_path, monkeypatch):
    import threading

    from multisource import claims
    from multisource.claims import STALE_AFTER_S, claim_path, claimed_elsewhere, try_claim

    out = tmp_path / "trial_1"
    for owner in ("other_host-123", ""):  # a lost node's claim; an empty one (never written by this version)
        claim_path(out).write_text(owner)
        assert claimed_elsewhere(out) and not try_claim(out)  # touched recently: running elsewhere
        old = time.time() - STALE_AFTER_S - 5
        os.utime(claim_path(out), (old, old))
        assert not claimed_elsewhere(out) and try_claim(out)  # no heartbeat for STALE_AFTER_S: taken over
        assert claim_path(out).read_text() == runner.process_tag()
        claim_path(out).unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left aside
    # the owner's heartbeat keeps its claim fresh while it runs
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    assert try_claim(out)
    os.utime(claim_path(out), (1.0, 1.0))
    with claims.Heartbeat(claim_path(out)):
        time.sleep(0.3)
    assert time.time() - claim_path(out).stat().st_mtime < 5
    assert not any(t.name.startswith("claim-heartbeat") for t in threading.enumerate())  # stopped with the run


@pytest.mark.timeout(400)
def test_two_sweeps_started_together_run_each_experiment_once(trained_sources, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, str(PROJECT_ROOT / "experiments" / "run_all.py"), "--dataset", "drift_digits", "--model",
           MODEL, "--methods", "ensemble", "--targets", "era_1", "era_2", "era_3", "era_4", "era_5",
           "--data_root", str(trained_sources["data_root"]), "--checkpoint_dir", str(trained_sources["checkpoint_dir"]),
           "--results_dir", str(results), "--no-save-model", "--device", "cpu"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=360) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    logs = [read_json(p) for p in sorted((results / "drift_digits" / MODEL / "sweeps").glob("sweep-*.json"))]
    assert len(logs) == 2
    ran = [e["out_dir"] for log in logs for e in log["experiments"] if e["status"] == "finished"]
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 5  # every experiment (ensemble: one per target) once, in one sweep or the other
    assert all(e["status"] in ("finished", "skipped") for log in logs for e in log["experiments"])
    assert not list(results.rglob(".trial_*"))  # no claim or staging folder left
    summary = read_json(results / "drift_digits" / MODEL / "summaries" / "ensemble.json")
    assert summary["num_experiments"] == 5 and summary["num_failed"] == 0
    single = tmp_path / "single"
    run_sweep(SweepConfig(dataset="drift_digits", models=(MODEL,), methods=("ensemble",),
                          targets=("era_1", "era_2", "era_3", "era_4", "era_5"), num_trials=2),
              _opts(trained_sources, single))
    again = read_json(single / "drift_digits" / MODEL / "summaries" / "ensemble.json")
    for target in ("era_1", "era_2", "era_3", "era_4", "era_5"):
        assert summary["targets"][target]["metrics"]["test_accuracy"] == again["targets"][target]["metrics"][
            "test_accuracy"]



def test_ctrl_c_with_worker_processes_stops_promptly():
    """An interrupt while workers run: queued tasks never start and running ones are stopped, not awaited."""
    code = (
        "import signal, sys, time\n"
        "from multisource.executors import ProcessExecutor\n"
        "from multisource.options import SweepOptions\n"
        "signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))\n"
        "signal.alarm(8)\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    for _ in ProcessExecutor(SweepOptions(workers=2)).run(time.sleep, [(60,)] * 6):\n"
        "        pass\n"
        "except KeyboardInterrupt:\n"
        "    print(f'interrupted after {time.perf_counter() - t0:.1f}s')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert "interrupted after" in proc.stdout, proc.stderr[-2000:]
    assert float(proc.stdout.split("after ")[1].rstrip("s\n")) < 20  # not the 60 s a running task takes

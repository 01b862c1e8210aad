"""Source training is a job like an experiment: claimed while it trains, its failure recorded beside the
checkpoint, and a killed run resumes (complete bins kept, the rest trained) when run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from multisource import claims
from multisource.failures import failure_paths
from multisource.options import TrainOptions
from multisource.training import all_bins
from multisource.training.fit import SourceTrainConfig
from multisource.utils.io import read_json

from conftest import PROJECT_ROOT, TINY_MODEL


def _job(tmp_path: Path) -> tuple[SourceTrainConfig, TrainOptions, Path]:
    cfg = SourceTrainConfig(dataset="drift_digits", model_name=TINY_MODEL, bin="era_2")
    opts = TrainOptions(results_dir=str(tmp_path))
    return cfg, opts, all_bins.source_checkpoint_path(cfg, opts)


def test_a_failed_bin_is_recorded_beside_its_checkpoint_and_cleared_once_it_trains(tmp_path, monkeypatch):
    cfg, opts, ckpt = _job(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("out of disk")

    monkeypatch.setattr(all_bins, "train_source", boom)
    outcome = all_bins.run_source_job(cfg, opts, handle=None, start=None)
    record, tb = failure_paths(ckpt.with_suffix(""))
    assert outcome.status == "failed" and outcome.error_type == "RuntimeError" and "out of disk" in outcome.detail
    assert record.name == "era_2.failed.json" and record.parent == ckpt.parent
    failure = read_json(record)
    assert failure["error_type"] == "RuntimeError" and failure["message"] == "out of disk"
    assert failure["config"]["bin"] == "era_2" and "RuntimeError: out of disk" in tb.read_text()
    assert not claims.claim_path(ckpt).exists()  # released after the failure
    with pytest.raises(RuntimeError, match="out of disk"):  # the single-bin command: recorded, then raised
        all_bins.run_source_job(cfg, opts, None, None, raise_errors=True)
    assert record.exists()

    monkeypatch.setattr(all_bins, "train_source", lambda *a, **k: {"val_accuracy": 0.6, "test_accuracy": 0.5})
    assert all_bins.run_source_job(cfg, opts, None, None).status == "trained"
    assert not record.exists() and not tb.exists()


@contextmanager
def claimed_by_another_process(ckpt: Path):
    """The bin of ``ckpt`` claimed by a live process on this machine (yielded; killed afterwards)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        claims.claim_path(ckpt).write_text(f"{claims.HOST}-{other.pid}")
        yield other
    finally:
        other.kill()
        other.wait()


def test_a_bin_another_live_process_trains_is_not_trained_twice(tmp_path, monkeypatch):
    cfg, opts, ckpt = _job(tmp_path)
    with claimed_by_another_process(ckpt) as other:
        calls = []
        monkeypatch.setattr(all_bins, "train_source", lambda *a, **k: calls.append(1) or {"test_accuracy": 0.5})
        outcome = all_bins.run_source_job(cfg, opts, None, None)
        assert outcome.status == "claimed" and str(other.pid) in outcome.detail and not calls
        # the other process dies without a checkpoint: the waiting run trains the bin itself
        threading.Timer(1.0, lambda: (other.kill(), other.wait())).start()  # reaped: its pid is gone
        monkeypatch.setattr(all_bins, "is_complete", lambda *a, **k: False)
        handle = type("Handle", (), {"fingerprint": None})()
        waited = all_bins.wait_for_other_training(cfg, opts, handle, None, poll_s=0.1)
        assert waited.status == "trained" and calls == [1]


@pytest.mark.slow
def test_killing_source_training_and_running_it_again_resumes(digits_root, tmp_path):
    args = ["train-all", "--dataset", "drift_digits", "--data_root", str(digits_root), "--results_dir",
            str(tmp_path), "--model", TINY_MODEL, "--no-pretrained", "--epochs", "2", "--batch_size", "32",
            "--bins", "era_1", "era_2", "era_3"]
    ckpts = tmp_path / "drift_digits" / "baselines" / TINY_MODEL
    proc = subprocess.Popen([sys.executable, "-m", "multisource", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (ckpts / "era_1.json").is_file():  # era_1 finished: era_2 is training now
        assert proc.poll() is None and time.monotonic() < deadline, "source training ended before it was killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = (ckpts / "era_1.ckpt").read_bytes()
    assert not (ckpts / "era_3.json").exists()

    from multisource.training.source import is_complete
    run = subprocess.run([sys.executable, "-m", "multisource", *args], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = {line.split()[0]: line.split()[1] for line in run.stdout.splitlines() if line.startswith("  era_")}
    assert lines == {"era_1": "skipped", "era_2": "trained", "era_3": "trained"}  # resumed where it stopped
    assert (ckpts / "era_1.ckpt").read_bytes() == first  # the finished bin is kept, byte for byte
    assert all(is_complete(ckpts / f"era_{i}.ckpt") for i in (1, 2, 3))
    assert not list(ckpts.glob(".*.claim")) and not list(ckpts.glob("*.failed.json"))


def test_a_bin_completed_by_another_process_meanwhile_is_taken_not_trained_again(tmp_path, monkeypatch):
    cfg, opts, ckpt = _job(tmp_path)
    monkeypatch.setattr(all_bins, "is_complete", lambda *a, **k: True)  # finished after train-all listed it

    def must_not_train(*a, **k):
        raise AssertionError("a complete bin was trained again")

    monkeypatch.setattr(all_bins, "train_source", must_not_train)
    outcome = all_bins.run_source_job(cfg, opts, None, None, force=False)
    assert outcome.status == "skipped" and "another process" in outcome.detail
    assert not claims.claim_path(ckpt).exists()


def test_a_distributed_run_refuses_a_bin_another_command_holds(tmp_path, monkeypatch):
    from dataclasses import replace

    cfg, opts, ckpt = _job(tmp_path)
    with claimed_by_another_process(ckpt):
        with pytest.raises(RuntimeError, match="a distributed run cannot wait for it"):
            all_bins.run_source_job(cfg, replace(opts, num_nodes=2), None, None)
    assert all_bins.is_distributed(replace(opts, devices="0,1")) and not all_bins.is_distributed(opts)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")  # a secondary rank under MPI
    assert all_bins.is_secondary_rank()


def test_a_dead_runs_claim_on_a_finished_result_is_removed_and_a_live_one_kept(tmp_path):
    """A run killed between writing a bin's checkpoint and letting go of its claim leaves a dead claim; the next
    run that finds the bin complete removes it (train_all_bins and sweeps call this), a live claim stays."""
    ckpt = tmp_path / "era_1.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claims.claim_path(ckpt).write_text(f"{claims.HOST}-{dead.pid}")
    claims.remove_if_stale(ckpt)
    assert not claims.claim_path(ckpt).exists()
    with claimed_by_another_process(ckpt):
        claims.remove_if_stale(ckpt)
        assert claims.claim_path(ckpt).exists()


def test_parallel_workers_get_ready_while_the_shared_start_is_resolved(tmp_path, monkeypatch, digits_root):
    """The pool is entered (its fork server starts importing) before the upstream pretraining runs, so the two
    overlap; training the bins themselves uses the pool's options, the start the caller's."""
    from multisource.data.loaders import open_dataset
    from multisource.training.start import SharedStart

    events = []

    class Pool:
        def __init__(self, options):
            self.options = options

        def __enter__(self):
            events.append(("enter", self.options.workers, self.options.progress))
            return self

        def __exit__(self, *exc):
            events.append(("exit",))

        def run(self, fn, tasks):
            for i, args in enumerate(tasks):
                events.append(("task", args[0].bin, args[1].progress))
                yield i, all_bins.SourceOutcome(args[0].bin, "trained", "-", "")

    def start(cfg, opts, handle):
        events.append(("start", opts.progress))
        return SharedStart("upstream", "stands/for/the/upstream.ckpt", "0" * 16)

    monkeypatch.setattr(all_bins, "make_executor", Pool)
    monkeypatch.setattr(all_bins, "resolve_start", start)
    cfg = SourceTrainConfig(dataset="drift_digits", model_name=TINY_MODEL)
    handle = open_dataset("drift_digits", digits_root)
    all_bins.train_all_bins(cfg, TrainOptions(results_dir=str(tmp_path), workers=2), handle, ["era_1", "era_2"])
    assert events == [("enter", 2, False), ("start", True), ("task", "era_1", False), ("task", "era_2", False),
                      ("exit",)]


def test_entering_a_process_pool_starts_its_fork_server(tmp_path):
    """In a fresh interpreter (this one may have started it already): none before, one once a pool is entered."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform (spawn is used)")
    code = ("import multiprocessing.forkserver as f\n"
            "from multisource.executors import ProcessExecutor\n"
            "from multisource.options import RunOptions\n"
            "assert f._forkserver._forkserver_pid is None\n"
            "with ProcessExecutor(RunOptions(workers=2)):\n"
            "    assert f._forkserver._forkserver_pid is not None\n")
    err = tmp_path / "stderr"
    with err.open("w") as stderr:  # a file, not a pipe: the fork server inherits it and outlives the interpreter
        done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=stderr, timeout=120)
    assert done.returncode == 0, err.read_text()

"""Executors give the same results: in-process, a local process pool, and Ray tasks on a local Ray instance."""

from __future__ import annotations

import pytest

from multisource.options import RunOptions
from multisource.experiment.sweep import SweepConfig, run_sweep
from multisource.utils.io import read_json

pytestmark = pytest.mark.xdist_group("trained_sources")  # one worker builds the shared sources

MODEL = "tiny-resnet"
CONFIG = dict(dataset="drift_digits", models=(MODEL,), methods=("ensemble",), targets=("era_2", "era_4"),
              num_trials=1, seed=3)


def run(trained_sources, results_dir, targets=CONFIG["targets"], **sweep_opts):
    opts = RunOptions(data_root=str(trained_sources["data_root"]), results_dir=str(results_dir),
                      checkpoint_dir=str(trained_sources["checkpoint_dir"]), save_model=False, device="cpu",
                      summarize=False, **sweep_opts)
    return run_sweep(SweepConfig(**{**CONFIG, "targets": targets}), opts)


def metrics_by_experiment(result) -> dict:
    return {(o.method, o.target, o.trial): read_json(f"{o.out_dir}/metrics.json")["test"] for o in result.outcomes}


@pytest.fixture(scope="module")
def local(trained_sources, tmp_path_factory):
    result = run(trained_sources, tmp_path_factory.mktemp("local"))
    assert len(result.finished) == 2
    return metrics_by_experiment(result)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_executor_matches_local(trained_sources, tmp_path, local):
    pytest.importorskip("ray")
    result = run(trained_sources, tmp_path, executor="ray", workers=2)
    assert result.ok and len(result.finished) == 2
    assert metrics_by_experiment(result) == local  # accuracy, F1, confusion matrices: identical


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_process_pool_matches_local(trained_sources, tmp_path, local):
    # one experiment keeps this cheap (each spawned worker imports torch); the pool path is the same
    result = run(trained_sources, tmp_path, targets=("era_4",), workers=2)
    assert result.ok and len(result.finished) == 1
    mine = metrics_by_experiment(result)
    assert mine == {k: v for k, v in local.items() if k in mine}

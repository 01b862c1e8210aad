"""Executors give the same results: in-process, a local process pool, and Ray tasks on a local Ray instance."""

from __future__ import annotations

import pytest

from multisource.options import SweepOptions
from multisource.experiment.sweep import SweepConfig, run_sweep
from multisource.utils.io import read_json

pytestmark = pytest.mark.xdist_group("trained_sources")  # one worker builds the shared sources

MODEL = "tiny-resnet"
CONFIG = dict(dataset="drift_digits", models=(MODEL,), methods=("ensemble",), targets=("era_2", "era_4"),
              num_trials=1, seed=3)


def run(trained_sources, results_dir, targets=CONFIG["targets"], **sweep_opts):
    opts = SweepOptions(data_root=str(trained_sources["data_root"]), results_dir=str(results_dir),
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


@pytest.fixture(scope="module")
def two_node_cluster():
    """A Ray cluster of two nodes on this machine (a head and a worker node, one CPU each), as
    ``ray start --head`` plus ``ray start --address`` on two machines would make."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sweep_on_a_two_node_ray_cluster_uses_both_nodes_and_matches_local(trained_sources, tmp_path, local,
                                                                             two_node_cluster):
    result = run(trained_sources, tmp_path, executor="ray", ray_address=two_node_cluster.address)
    assert result.ok and len(result.finished) == 2
    assert metrics_by_experiment(result) == local  # accuracy, F1, confusion matrices: identical
    nodes = {read_json(f"{o.out_dir}/metrics.json")["environment"]["ray_node_id"] for o in result.outcomes}
    assert len(nodes) == 2 and None not in nodes  # one CPU per node: the two experiments ran on both


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_source_training_on_a_two_node_ray_cluster(trained_sources, tmp_path, two_node_cluster):
    """train_all_subsets.py --executor ray --ray_address ADDR: bins train as Ray tasks on the cluster's nodes."""
    from multisource.cli.train import train_all_main

    assert train_all_main(["--dataset", "drift_digits", "--model_name", MODEL, "--bins", "era_1", "era_2",
                           "--max_epochs", "1", "--weights", str(trained_sources["results_dir"] / "drift_digits" /
                                                                 "upstream" / f"{MODEL}.ckpt"),
                           "--data_root", str(trained_sources["data_root"]), "--results_dir", str(tmp_path),
                           "--device", "cpu", "--executor", "ray", "--ray_address", two_node_cluster.address]) == 0
    reports = [read_json(tmp_path / "drift_digits" / "baselines" / MODEL / f"{b}.json") for b in ("era_1", "era_2")]
    assert all(r["status"] == "complete" for r in reports)
    assert len({r["environment"]["ray_node_id"] for r in reports} - {None}) == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_process_pool_matches_local(trained_sources, tmp_path, local):
    # one experiment keeps this cheap (each spawned worker imports torch); the pool path is the same
    result = run(trained_sources, tmp_path, targets=("era_4",), workers=2)
    assert result.ok and len(result.finished) == 1
    mine = metrics_by_experiment(result)
    assert mine == {k: v for k, v in local.items() if k in mine}

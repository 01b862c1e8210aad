"""Lightning DDP on CPU: two processes (gloo) train one source model as one: one checkpoint, loadable like any
other, with the validation accuracy reduced over both ranks' shares of the val split. The same command under
the three launchers the README's recipes use: Lightning's own (``--devices 2``), torchrun, and SLURM's ``srun``
(its environment set per task as ``srun --ntasks-per-node 2`` sets it; Lightning reads it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from multisource.data.loaders import open_dataset
from multisource.models import load_checkpoint
from multisource.models.factory import data_config
from multisource.training.fit import evaluate_split
from multisource.utils.io import read_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# launcher -> the cluster environment Lightning must detect under it
LAUNCHERS = {"lightning": "LightningEnvironment", "torchrun": "TorchElasticEnvironment",
             "slurm": "SLURMEnvironment"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(launcher: str, digits_root: Path, results: Path) -> str:
    """Run the README's DDP command for one source under ``launcher``; return its whole output."""
    script = ["baseline_training/train_baseline.py", "--dataset", "drift_digits", "--bin", "era_1",
              "--model_name", "tiny-resnet", "--no-pretrained", "--max_epochs", "1", "--batch_size", "32",
              "--learning_rate", "1e-3", "--accelerator", "cpu", "--devices", "2", "--num_nodes", "1",
              "--strategy", "ddp", "--data_root", str(digits_root), "--results_dir", str(results)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "LOCAL_RANK", "RANK"))}
    env |= {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if launcher == "lightning":
        cmds = [([sys.executable, *script], env)]
    elif launcher == "torchrun":
        cmds = [([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                  "--nproc_per_node", "2", *script], env)]
    else:  # what `srun --nodes 1 --ntasks-per-node 2 python ...` gives each of its two tasks
        slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "multisource-test", "SLURM_NTASKS": "2",
                 "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
                 "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        cmds = [([sys.executable, *script], env | slurm | {"SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)})
                for r in range(2)]
    procs = [subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd, e in cmds]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=280)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    output = "\n".join(outputs)
    assert all(p.returncode == 0 for p in procs), output[-6000:]
    return output


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ddp_on_cpu_with_two_processes_writes_one_checkpoint_with_reduced_val_metrics(launcher, digits_root,
                                                                                        tmp_path):
    output = _train(launcher, digits_root, tmp_path)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output  # two processes really trained as one group
    ckpts = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.ckpt"))
    assert ckpts == [Path("drift_digits/baselines/tiny-resnet/era_1.ckpt"),  # rank 1 wrote nothing
                     Path("drift_digits/starts/tiny-resnet-random-seed42.ckpt")]  # the shared start (--no-pretrained)
    ckpt = tmp_path / ckpts[0]
    report = read_json(ckpt.with_suffix(".json"))
    assert (report["options"]["strategy"], report["options"]["devices"]) == ("ddp", 2)
    assert (report["world_size"], report["cluster_environment"]) == (2, LAUNCHERS[launcher])
    model, meta = load_checkpoint(ckpt, expected_model="tiny-resnet")
    handle = open_dataset("drift_digits", digits_root)
    val = evaluate_split(model, handle, "era_1", "val", data_config(model, 32, hflip=False), 64)
    # The reduced accuracy covers every val image once, but for the distributed sampler's padding (one image
    # repeated when the split is odd), so it is the whole split's accuracy within one image.
    assert abs(report["val_accuracy"] - val["accuracy"]) <= 1 / val["num_samples"] + 1e-9
    assert meta["metrics"]["val_accuracy"] == report["val_accuracy"]

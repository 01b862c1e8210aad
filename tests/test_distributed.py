"""Lightning DDP on CPU: two processes (gloo) train one source model as one: one checkpoint, loadable like any
other, with the validation accuracy reduced over both ranks' shares of the val split."""

from __future__ import annotations

import os
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_on_cpu_with_two_processes_writes_one_checkpoint_with_reduced_val_metrics(digits_root, tmp_path):
    cmd = [sys.executable, "baseline_training/train_baseline.py", "--dataset", "drift_digits", "--bin", "era_1",
           "--model_name", "tiny-resnet", "--no-pretrained", "--max_epochs", "1", "--batch_size", "32",
           "--learning_rate", "1e-3", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
           "--data_root", str(digits_root), "--results_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr  # two processes really trained
    ckpts = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.ckpt"))
    assert ckpts == [Path("drift_digits/baselines/tiny-resnet/era_1.ckpt")]  # rank 1 wrote nothing
    ckpt = tmp_path / ckpts[0]
    report = read_json(ckpt.with_suffix(".json"))
    assert (report["options"]["strategy"], report["options"]["devices"]) == ("ddp", 2)
    model, meta = load_checkpoint(ckpt, expected_model="tiny-resnet")
    handle = open_dataset("drift_digits", digits_root)
    val = evaluate_split(model, handle, "era_1", "val", data_config(model, 32, hflip=False), 64)
    # The reduced accuracy covers every val image once, but for the distributed sampler's padding (one image
    # repeated when the split is odd), so it is the whole split's accuracy within one image.
    assert abs(report["val_accuracy"] - val["accuracy"]) <= 1 / val["num_samples"] + 1e-9
    assert meta["metrics"]["val_accuracy"] == report["val_accuracy"]

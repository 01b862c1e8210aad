"""The experiment runner and the per-method scripts: files written, keys present, errors before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from multisource.config import ConfigError
from multisource.data.folder import DataError
from multisource.experiment.config import ExperimentConfig
from multisource.options import ExperimentOptions
from multisource.experiment.runner import ExperimentExists, run_experiment
from multisource.models import CheckpointError, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.xdist_group("trained_sources")  # one worker builds the shared sources

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FAST_FLAGS = {
    "ensemble": ["--voting", "hard"],
    "fusion": ["--finetune_epochs", "1", "--learning_rate", "1e-3"],
    "grasp": ["--initial_epochs", "1", "--finetune_epochs", "1", "--learning_rate", "1e-3"],
    "pearl": ["--adapter_epochs", "1", "--composition_epochs", "1", "--adapter_dim", "4", "--learning_rate", "1e-3"],
    "target_only": [],  # matched: GRASP's default 3 + 3 x (K - 1) = 6 epochs for K = 2
    "source_finetune": ["--finetune_epochs", "1", "--learning_rate", "1e-3", "--pick", "best-val"],
    "task_arithmetic": ["--finetune_epochs", "1", "--learning_rate", "1e-3", "--lambdas", "0.5", "1.0"],
    "ties": ["--finetune_epochs", "0", "--density", "0.5"],
    "dare": ["--finetune_epochs", "1", "--drop_rate", "0.3", "--merge", "ties"],
    "soup": ["--finetune_epochs", "1", "--mode", "greedy"],
}
# Per method, what its experiment must show with FAST_FLAGS on two sources: models held at once, target epochs.
RESIDENT = {"ensemble": 2, "fusion": 2, "grasp": 2, "pearl": 2, "target_only": 1, "source_finetune": 1,
            "task_arithmetic": 2, "ties": 2, "dare": 2, "soup": 3}
TARGET_EPOCHS = {"ensemble": 0, "fusion": 1, "grasp": 2, "pearl": 1, "target_only": 6, "source_finetune": 1,
                 "task_arithmetic": 1, "ties": 0, "dare": 1, "soup": 1}
REQUIRED = {"dataset", "model", "method", "target", "sources", "trial", "seed", "config", "environment", "val", "test",
            "flops", "memory", "time", "params", "record", "budget", "information_used"}


def _opts(trained_sources, results: Path, **kw) -> ExperimentOptions:
    base = {"data_root": str(trained_sources["data_root"]), "checkpoint_dir": str(trained_sources["checkpoint_dir"]),
            "results_dir": str(results), "device": "cpu"}
    return ExperimentOptions(**{**base, **kw})


def test_every_registered_method_has_its_fast_flags_and_contract_rows():
    """A new method is run end to end by the test below only if it has its rows here: missing ones fail."""
    from multisource.methods import list_methods

    for table in ("FAST_FLAGS", "RESIDENT", "TARGET_EPOCHS"):
        assert sorted(globals()[table]) == list_methods(), f"{table} needs a row for every registered method"


@pytest.mark.slow
@pytest.mark.parametrize("method", list(FAST_FLAGS))
def test_method_script_writes_its_files(trained_sources, tmp_path, method, capsys, monkeypatch):
    """Each method's script; GRASP's as a user runs it (a subprocess from its folder), the others through the
    same entry point in-process (one interpreter start-up with torch is enough to cover the script)."""
    argv = ["--dataset", "drift_digits", "--target", "era_3", "--sources", "era_2", "era_4", "--model", "tiny-resnet",
            "--batch_size", "64", "--trial", "2", "--data_root", str(trained_sources["data_root"]),
            "--checkpoint_dir", str(trained_sources["checkpoint_dir"]), "--results_dir", str(tmp_path),
            *FAST_FLAGS[method]]
    if method == "grasp":
        proc = subprocess.run([sys.executable, f"run_{method}_experiment.py", *argv],
                              cwd=PROJECT_ROOT / "experiments" / method, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        stdout = proc.stdout
    else:
        from multisource.cli.experiment import experiment_main

        monkeypatch.setenv("TQDM_DISABLE", "1")
        assert experiment_main(argv, method=method) == 0
        stdout = capsys.readouterr().out
    out = tmp_path / "drift_digits" / "tiny-resnet" / method / "era_3" / "trial_2"
    files = {p.name for p in out.iterdir()}
    assert {"metrics.json", "confusion_val.png", "confusion_test.png", "training_curves.png",
            "experiment.log"} <= files
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    m = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(m)
    assert m["method"] == method and m["sources"] == ["era_2", "era_4"] and m["trial"] == 2
    assert m["seed"] != m["config"]["base_seed"]  # trial 2 has its own seed
    assert m["environment"]["torch"] == torch.__version__.split("+")[0]
    assert m["environment"]["git_commit"] and m["environment"]["python"] == sys.version.split()[0]
    for split in ("val", "test"):
        assert 0.0 <= m[split]["accuracy"] <= 1.0
        assert len(m[split]["confusion_matrix"]) == 10 and sum(map(sum, m[split]["confusion_matrix"])) == \
            m[split]["num_samples"]
        assert {"precision_macro", "recall_macro", "f1_macro", "f1_weighted", "auroc", "per_class_accuracy"} <= \
            set(m[split])
    assert m["test"]["accuracy"] > 0.2  # well above chance (0.1) even with one epoch
    predictions = pd.read_csv(out / "test_predictions.csv")
    assert len(predictions) == m["test"]["num_samples"] and predictions["group"].str.match(r"^\d/d\d{4}$").all()
    assert "underlying test examples" in m["test"]["ci95_method"]
    assert m["flops"]["total"] > 0 and m["flops"]["forward_per_image"] > 0 and "MAC" in m["flops"]["convention"]
    assert m["memory"]["peak_bytes"] > 0 and m["time"]["total_s"] > 0
    assert m["memory"]["max_models_resident"] == RESIDENT[method]
    used = m["information_used"]
    read = {"target_only": [], "source_finetune": ["era_2", "era_4", m["record"].get("source")]}.get(method, ["era_2", "era_4"])
    assert used["source_models"] == list(dict.fromkeys(read)) and len(used["loaded_checkpoints"]) == len(set(read))
    target_read = {"ensemble": [], "ties": ["val"]}.get(method, ["train", "val"])  # ties: merged, not fine-tuned
    assert used["target_data"] == target_read and used["source_data"] == []
    assert m["budget"]["target_epochs"] == TARGET_EPOCHS[method] and m["config"]["method_config"].get("finetune_epochs") != "matched"
    assert f"test acc {m['test']['accuracy']:.4f}" in stdout
    if method == "grasp":
        assert [s["source"] for s in m["record"]["steps"]] == ["era_4"]
        assert m["params"]["transferred"] == m["record"]["steps"][0]["transferred_elements"]
    if method == "pearl":  # the base is the source nearest to era_3 (era_2 on the tie), each adapter from SVD
        assert set(m["record"]["composition_weights"]) == {"era_2", "era_4"} and m["record"]["base"] == "era_2"
        assert 0 < m["record"]["approximation"]["era_4"]["relative_error"] < 1
        assert (out / "model.pt").is_file()
    if method in ("task_arithmetic", "ties", "dare", "soup"):  # merged weights scored before fine-tuning too
        before = m["stages"]["before_finetune"]
        assert 0 <= before["test_accuracy"] <= 1 and before["same_as_final"] == (method == "ties")
        if method == "ties":
            assert before["test_accuracy"] == m["test"]["accuracy"]
        assert used["pretrained_start"] or method == "soup"  # task vectors are taken from the shared start
    else:
        assert "before_finetune" not in m and m["stages"] == {}
    if method in ("fusion", "grasp", "target_only", "source_finetune", "task_arithmetic", "ties", "dare", "soup"):
        model, meta = load_checkpoint(out / "model.ckpt")
        assert meta["classes"] == [str(d) for d in range(10)]


def test_errors_before_any_work(trained_sources, tmp_path):
    opts = _opts(trained_sources, tmp_path)
    with pytest.raises(ConfigError, match="also listed as a source"):
        run_experiment(ExperimentConfig(target="era_1", sources=("era_1", "era_2")), opts)
    with pytest.raises(DataError, match="Unknown bin"):
        run_experiment(ExperimentConfig(target="era_9", sources=("era_1",)), opts)
    with pytest.raises(ConfigError, match="alignment_threshold|Unknown GraspConfig field"):
        run_experiment(ExperimentConfig(target="era_1", method="grasp", method_config={"alignment_treshold": 0.1}),
                       opts)
    missing = _opts(trained_sources, tmp_path, checkpoint_dir=str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="Missing source checkpoint .*train_baseline.py"):
        run_experiment(ExperimentConfig(target="era_1", sources=("era_2",)), missing)
    assert not (tmp_path / "drift_digits").exists()  # nothing was written


def test_checkpoint_for_another_class_count_is_rejected(trained_sources, tmp_path):
    ckdir = tmp_path / "ckpts"
    ckdir.mkdir()
    shutil.copy(trained_sources["checkpoint_dir"] / "era_2.ckpt", ckdir / "era_2.ckpt")
    model, _ = load_checkpoint(trained_sources["checkpoint_dir"] / "era_3.ckpt")
    model.reset_classifier(3)
    save_checkpoint(ckdir / "era_3.ckpt", model, model_name="tiny-resnet", classes=["a", "b", "c"],
                    dataset="drift_digits")
    opts = _opts(trained_sources, tmp_path / "res", checkpoint_dir=str(ckdir))
    with pytest.raises(CheckpointError, match=r"has 3 classes \[.*\], but drift_digits has 10 classes"):
        run_experiment(ExperimentConfig(target="era_1", sources=("era_2", "era_3")), opts)


def test_finished_experiment_is_kept_and_failed_rerun_leaves_it(trained_sources, tmp_path, monkeypatch):
    cfg = ExperimentConfig(target="era_5", sources=("era_3", "era_4"), method="ensemble", batch_size=64)
    first = run_experiment(cfg, _opts(trained_sources, tmp_path))
    out = tmp_path / "drift_digits" / "tiny-resnet" / "ensemble" / "era_5" / "trial_1"
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(ExperimentExists, match="--overwrite"):
        run_experiment(cfg, _opts(trained_sources, tmp_path))

    def boom(*a, **k):
        raise RuntimeError("simulated crash in the middle of an experiment")

    monkeypatch.setattr("multisource.experiment.runner.classification_metrics", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(cfg, _opts(trained_sources, tmp_path, overwrite=True))
    assert (out / "metrics.json").read_bytes() == before  # the finished result survived the failed re-run
    assert [p.name for p in out.parent.iterdir()] == ["trial_1"]  # and no staging folder is left
    assert first.test.accuracy == json.loads(before)["test"]["accuracy"]


def test_a_variant_runs_beside_the_method_and_both_are_rows_of_one_comparison(trained_sources, tmp_path, capsys):
    """--tag names a variant: its own folder (<method>@<tag>), never a conflict with the method's finished
    results, and its own row <method>[<tag>] in the comparison, paired with the others."""
    from multisource.cli.experiment import experiment_main
    from multisource.cli.sweep import summarize_main

    base = ["--dataset", "drift_digits", "--model", "tiny-resnet", "--target", "era_3", "--sources", "era_2", "era_4",
            "--data_root", str(trained_sources["data_root"]), "--checkpoint_dir",
            str(trained_sources["checkpoint_dir"]), "--results_dir", str(tmp_path), "--no-save-model"]
    for extra in ([], ["--voting", "hard", "--tag", "hard-vote"]):
        assert experiment_main([*base, "--method", "ensemble", *extra]) == 0
    assert experiment_main([*base, "--method", "grasp", "--initial_epochs", "1", "--finetune_epochs", "1"]) == 0
    root = tmp_path / "drift_digits" / "tiny-resnet"
    tagged = json.loads((root / "ensemble@hard-vote" / "era_3" / "trial_1" / "metrics.json").read_text())
    assert tagged["config"]["tag"] == "hard-vote" and tagged["config"]["method_config"]["voting"] == "hard"
    assert (root / "ensemble" / "era_3" / "trial_1" / "metrics.json").is_file()
    capsys.readouterr()
    assert summarize_main(["--dataset", "drift_digits", "--model", "tiny-resnet", "--results_dir", str(tmp_path),
                           "--no_plots"]) == 0
    md = capsys.readouterr().out
    assert "| ensemble[hard-vote] |" in md and "| ensemble |" in md and "| grasp |" in md
    assert experiment_main([*base, "--method", "ensemble", "--tag", "no/slash"]) == 2


def test_a_sweep_runs_the_variants_its_settings_file_declares(trained_sources, tmp_path, capsys):
    from multisource.cli.sweep import sweep_main

    cfg = tmp_path / "variants.yaml"
    cfg.write_text("methods:\n  ensemble: {voting: soft}\n  ensemble[hard]: {voting: hard}\n")
    assert sweep_main(["--config", str(cfg), "--dataset", "drift_digits", "--model", "tiny-resnet", "--targets",
                       "era_3", "era_5", "--data_root", str(trained_sources["data_root"]), "--checkpoint_dir",
                       str(trained_sources["checkpoint_dir"]), "--results_dir", str(tmp_path / "r")]) == 0
    root = tmp_path / "r" / "drift_digits" / "tiny-resnet"
    hard = json.loads((root / "ensemble@hard" / "era_5" / "trial_1" / "metrics.json").read_text())
    soft = json.loads((root / "ensemble" / "era_5" / "trial_1" / "metrics.json").read_text())
    assert hard["config"]["method_config"]["voting"] == "hard" and hard["config"]["tag"] == "hard"
    assert soft["config"]["method_config"]["voting"] == "soft"
    rows = {r["method"] for r in json.loads((root / "summaries" / "comparison.json").read_text())["methods"]}
    assert rows == {"ensemble", "ensemble[hard]"}
    assert "| ensemble[hard] |" in (root / "summaries" / "comparison.md").read_text()

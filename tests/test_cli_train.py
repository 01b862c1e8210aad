"""The user-facing scripts, run as users run them (subprocesses, other working directories):
preprocessing, train_all_subsets (skip complete bins, continue past a failing one), the per-dataset
single-bin entry point, and default paths that resolve against the project root."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multisource.data.card import read_card
from multisource.models import read_checkpoint_meta

ROOT = Path(__file__).resolve().parents[1]
BINS = ["era_1", "era_2", "era_3", "era_4", "era_5"]


def run(args: list, cwd: Path, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def summary(stdout: str) -> dict[str, tuple[str, str]]:
    """The `bin status detail` lines train_all_subsets prints at the end."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^\s+(era_\d)\s+(trained|skipped|failed)\s*(.*)$", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


@pytest.fixture(scope="module")
def cli_dataset(tmp_path_factory) -> Path:
    """Built by the preprocessing script, from another working directory, with a relative --output_dir."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    proc = run([ROOT / "preprocessing" / "drift_digits_preprocessing.py", "--output_dir", "built/DriftDigits",
                "--train_renders", "1"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    root = cwd / "built" / "DriftDigits"
    assert f"Built drifting digits in {root}" in proc.stdout
    (root.parent / "stdout.txt").write_text(proc.stdout)
    return root


def test_preprocessing_script_builds_and_refuses_to_overwrite(cli_dataset, capsys):
    from multisource.cli.preprocess import build_main

    drift_digits_main = functools.partial(build_main, dataset="drift_digits")

    card = read_card(cli_dataset)
    assert card["config"]["train_renders"] == 1 and card["config"]["image_size"] == 32 and card["seed"] == 42
    assert sorted(p.name for p in cli_dataset.iterdir()) == ["dataset_card.json", *BINS, "upstream"]
    card_bytes = (cli_dataset / "dataset_card.json").read_bytes()
    assert drift_digits_main(["--output_dir", str(cli_dataset)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {cli_dataset} already exists and is not empty; pass --overwrite to rebuild it or choose "
        "another --output_dir.")
    assert (cli_dataset / "dataset_card.json").read_bytes() == card_bytes


def test_preprocessing_summary_matches_the_card(cli_dataset):
    card = read_card(cli_dataset)
    e1 = card["bins"]["era_1"]["splits"]
    assert e1["train"]["count"] == 241  # one render per training instance
    assert e1["val"]["count"] == 3 * 30  # evaluation splits keep three renders per instance
    printed = (cli_dataset.parent / "stdout.txt").read_text().splitlines()
    for b in BINS:
        c = {s: card["bins"][b]["splits"][s]["count"] for s in ("train", "val", "test")}
        assert f"  {b}: train {c['train']}, val {c['val']}, test {c['test']}" in printed


def test_train_all_subsets_skips_complete_bins_and_survives_a_failing_one(cli_dataset, tmp_path, capsys):
    """The script trains every bin, a broken bin fails alone (exit 1, listed in the summary); once repaired,
    a re-run trains only that bin, and the next one skips all five."""
    from multisource.cli.train import train_all_main

    data = tmp_path / "DriftDigits"
    shutil.copytree(cli_dataset, data)
    results = tmp_path / "results"
    ckpts = results / "drift_digits" / "baselines" / "tiny-resnet"
    broken = data / "era_3" / "train" / "4"
    good = {p: p.read_bytes() for p in broken.glob("*.png")}
    for p in good:  # every image of a class, so some are read whatever the shuffle and batch size
        p.write_bytes(b"corrupt")
    cmd = [ROOT / "baseline_training" / "train_all_subsets.py", "--dataset", "drift_digits", "--model_name",
           "tiny-resnet", "--max_epochs", "1", "--batch_size", "64", "--no-pretrained",
           "--data_root", data, "--results_dir", results]

    first = run(cmd, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    rows = summary(first.stdout)
    assert list(rows) == BINS
    assert {b: s for b, (s, _) in rows.items()} == {b: "failed" if b == "era_3" else "trained" for b in BINS}
    assert rows["era_3"][1].startswith(f"DataError: Cannot read image {broken}")
    assert "1 bin(s) failed: era_3" in first.stderr
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["era_1.ckpt", "era_2.ckpt", "era_4.ckpt", "era_5.ckpt"]
    assert not (ckpts / "era_3.json").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.ckpt")}

    for p, content in good.items():
        p.write_bytes(content)
    capsys.readouterr()
    assert train_all_main([str(a) for a in cmd[1:]]) == 0  # the same main, in-process (saves a start-up)
    rows = summary(capsys.readouterr().out)
    assert {b: s for b, (s, _) in rows.items()} == {b: "trained" if b == "era_3" else "skipped" for b in BINS}
    assert rows["era_1"][1] == f"complete: {ckpts / 'era_1.ckpt'}"
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.ckpt") if p.name != "era_3.ckpt"} == stamps

    assert train_all_main([str(a) for a in cmd[1:]]) == 0
    assert {b: s for b, (s, _) in summary(capsys.readouterr().out).items()} == {b: "skipped" for b in BINS}
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.ckpt") if p.name != "era_3.ckpt"} == stamps
    assert len(list(ckpts.glob("*.ckpt"))) == 5
    for b in BINS:
        report = json.loads((ckpts / f"{b}.json").read_text())
        assert report["status"] == "complete" and report["bin"] == b
        meta = read_checkpoint_meta(ckpts / f"{b}.ckpt")
        assert meta["config"]["max_epochs"] == 1 and meta["config"]["pretrained"] is False
        start = meta["config"]["start"]  # --no-pretrained: one random initialisation every bin shares
        assert start["kind"] == "random" and meta["config"]["pretrained_from"] == start["path"]
        assert meta["metrics"] == {
            k: report[k] for k in ("val_accuracy", "best_epoch", "test_accuracy")}


def test_single_bin_entry_point_from_its_own_folder(digits_root, tmp_path):
    folder = ROOT / "baseline_training" / "drift_digits"
    before = sorted(p.name for p in folder.iterdir())
    results = tmp_path / "res"
    proc = run(["train_drift_digits.py", "--era_name", "era_2", "--model_name", "test_resnet", "--max_epochs", "1",
                "--batch_size", "64", "--no-pretrained", "--seed", "3", "--data_root", digits_root,
                "--results_dir", results], cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = results / "drift_digits" / "baselines" / "tiny-resnet" / "era_2.ckpt"  # canonical name in the path
    m = re.search(r"tiny-resnet on drift_digits/era_2: val acc ([\d.]+), test acc ([\d.]+) -> (\S+)", proc.stdout)
    assert m, proc.stdout
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert m.group(3) == str(ckpt)
    assert float(m.group(2)) == pytest.approx(report["test_accuracy"], abs=5e-5)
    from multisource.utils.seed import derive_seed

    # the base seed as given, and the source stage's own seed derived from it and the bin
    assert report["config"]["seed"] == 3 and report["seed"] == derive_seed(3, "source", "era_2")
    assert report["config"]["bin"] == "era_2" and report["options"]["results_dir"] == str(results)
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == \
        [n for n in before if n != "__pycache__"]  # nothing written into the working directory


def test_default_paths_resolve_against_the_project_root(tmp_path, monkeypatch):
    from multisource.data.folder import DataError
    from multisource.data.loaders import open_dataset
    from multisource.paths import PROJECT_ROOT, resolve
    from multisource.options import RunOptions

    assert PROJECT_ROOT == ROOT
    monkeypatch.chdir(tmp_path)
    expected = ROOT / "datasets" / "DriftDigits"
    try:
        assert open_dataset("drift_digits").root == expected
    except DataError as exc:  # not built in this checkout: the message names the project-rooted default
        assert str(exc).startswith(f"Dataset folder {expected} for 'drift_digits' does not exist.")
    assert RunOptions().results_path() == ROOT / "results"
    assert resolve("rel/dir", ROOT / "x") == tmp_path / "rel" / "dir"  # user paths: against the cwd
    assert resolve(None, ROOT / "x") == ROOT / "x"


def test_user_errors_exit_2_with_one_line(digits_root, tmp_path, capsys):
    from multisource.cli.train import train_all_main, train_baseline_main

    common = ["--data_root", str(digits_root), "--results_dir", str(tmp_path), "--max_epochs", "1"]
    assert train_all_main(["--dataset", "drift_digits", "--model_name", "no-such-model", *common]) == 2
    assert capsys.readouterr().err.strip().startswith("error: Unknown model 'no-such-model'. Registered:")
    assert train_all_main(["--dataset", "drift_digits", "--bins", "era_1", "era_9", *common]) == 2
    assert "error: Unknown bin(s) ['era_9'] for dataset drift_digits" in capsys.readouterr().err
    assert train_baseline_main(["--era_name", "era_1", "--max_epochs", "0", *common[:4]],
                               dataset="drift_digits") == 2
    assert "SourceTrainConfig.max_epochs=0 is out of range" in capsys.readouterr().err
    assert train_all_main(["--dataset", "nope", *common]) == 2
    assert "error: Unknown dataset 'nope'. Available: clear10, clear100, drift_digits, drift_glyphs, yearbook, or the folder of " \
           "a dataset with a dataset_card.json" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: the bin flag is required
        train_baseline_main(common, dataset="drift_digits")
    assert info.value.code == 2
    assert "--era_name" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))

"""The road a researcher takes with their own images: one shared start for every source (recorded, checked before
merging), the images' own size, one small-data rule, settings that fit any dataset, runs that can be watched,
and no work paid for that changes no result."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multisource.cli.experiment import experiment_main
from multisource.cli.own_data import import_main
from multisource.cli.preprocess import build_main
from multisource.cli.sweep import SweepProgress, sweep_main
from multisource.cli.train import train_all_main
from multisource.config import ConfigError
from multisource.data.card import CARD_NAME
from multisource.experiment.config import ExperimentConfig
from multisource.experiment.plan import check_checkpoints, plan_experiment
from multisource.experiment.settings import read_settings, resolve_sweep
from multisource.experiment.sweep import SweepConfig, plan_sweep
from multisource.models.checkpoint import read_checkpoint_meta
from multisource.options import RunOptions
from multisource.training.start import StartMismatch
from multisource.utils.io import read_json

drift_digits_main = functools.partial(build_main, dataset="drift_digits")  # preprocessing/drift_digits_preprocessing.py

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-resnet"
YEARS = (2019, 2020, 2021, 2022)


def colour_table(root: Path, size: int = 40, per_stratum: int = 14, years=YEARS) -> Path:
    """Dated images of two classes that differ in colour (learnable in one epoch), ``size`` px, never generated
    by a project file."""
    rng = np.random.default_rng(0)
    rows = []
    for year in years:
        for cls, base in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
            for i in range(per_stratum):
                pixels = np.clip(np.array(base) + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                name = f"{year}-{cls}-{i}.png"
                Image.fromarray(pixels).save(root / name)
                rows.append({"path": name, "label": cls, "timestamp": f"{year}-{1 + i % 12:02d}-10T08:00:00"})
    table = root / "images.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def import_(tmp: Path, *extra: str, name: str = "Mine") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    table = colour_table(tmp) if not (tmp / "images.csv").exists() else tmp / "images.csv"
    out = tmp / name
    assert import_main(["--table", str(table), "--output_dir", str(out), "--bin_by", "year", "--no_progress",
                        *extra]) == 0
    return out


def train_all(data: Path, results: Path, *extra: str) -> int:
    return train_all_main(["--dataset", str(data), "--model_name", MODEL, "--max_epochs", "1", "--batch_size", "16",
                           "--learning_rate", "1e-3", "--results_dir", str(results), "--device", "cpu", *extra])


def starts(results: Path, dataset: str, bins) -> list[dict]:
    base = results / dataset / "baselines" / MODEL
    return [read_checkpoint_meta(base / f"{b}.ckpt")["config"]["start"] for b in bins]


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict:
    """Imported at the images' own size without an upstream pool; sources trained with no start flag at all."""
    tmp = tmp_path_factory.mktemp("road")
    data = import_(tmp)
    results = tmp / "results"
    assert train_all(data, results) == 0
    return {"tmp": tmp, "data": data, "results": results, "bins": [str(y) for y in YEARS]}


# --- 1. one shared start ---------------------------------------------------------------------------------

def test_without_a_start_flag_every_source_shares_one_recorded_random_start(own):
    recorded = starts(own["results"], "Mine", own["bins"])
    assert {s["kind"] for s in recorded} == {"random"}
    assert len({s["fingerprint"] for s in recorded}) == 1 and Path(recorded[0]["path"]).is_file()


def test_no_pretrained_means_one_shared_random_start_too(own, tmp_path):
    assert train_all(own["data"], tmp_path, "--no-pretrained", "--bins", "2019", "2020") == 0
    recorded = starts(tmp_path, "Mine", ["2019", "2020"])
    assert {s["kind"] for s in recorded} == {"random"} and len({s["fingerprint"] for s in recorded}) == 1


def test_upstream_earliest_makes_the_first_bin_the_pool_and_every_source_starts_from_it(own, tmp_path):
    data = import_(own["tmp"], "--upstream", "earliest", name="Pooled")
    card = read_json(data / CARD_NAME)
    assert card["bin_order"] == ["2020", "2021", "2022"] and card["upstream"]["rule"] == "earliest"
    assert card["upstream"]["splits"]["train"]["count"] == 2 * 11  # the 2019 bin, 80% of 14 per class
    assert (data / "upstream" / "train" / "red").is_dir()
    assert train_all(data, tmp_path, "--bins", "2020", "2021") == 0
    recorded = starts(tmp_path, "Pooled", ["2020", "2021"])
    assert {s["kind"] for s in recorded} == {"upstream"} and len({s["fingerprint"] for s in recorded}) == 1


def test_upstream_fraction_takes_a_stratified_share_of_every_bin(own):
    data = import_(own["tmp"], "--upstream", "fraction:0.3", name="Shared")
    card = read_json(data / CARD_NAME)
    assert card["bin_order"] == [str(y) for y in YEARS]
    per_stratum = round(0.3 * 14)  # 4 of each year's 14 per class go to the pool
    pool = sum(card["upstream"]["splits"][s]["count"] for s in ("train", "val", "test"))
    assert pool == per_stratum * 2 * len(YEARS)
    for b in card["bin_order"]:
        assert sum(card["bins"][b]["splits"][s]["count"] for s in ("train", "val", "test")) == 2 * (14 - per_stratum)


def test_merging_sources_with_different_starts_is_refused_in_one_line(own, tmp_path, capsys):
    # era 2022's source from another seed: another random start
    assert train_all(own["data"], tmp_path, "--bins", "2022", "--seed", "7") == 0
    ckpts = tmp_path / "mixed"
    ckpts.mkdir()
    for b in ("2019", "2020"):
        (ckpts / f"{b}.ckpt").symlink_to(own["results"] / "Mine" / "baselines" / MODEL / f"{b}.ckpt")
    (ckpts / "2022.ckpt").symlink_to(tmp_path / "Mine" / "baselines" / MODEL / "2022.ckpt")
    argv = ["--dataset", str(own["data"]), "--model", MODEL, "--target", "2021", "--checkpoint_dir", str(ckpts),
            "--results_dir", str(tmp_path / "r"), "--device", "cpu", "--no-save-model"]
    capsys.readouterr()
    assert experiment_main([*argv, "--finetune_epochs", "1"], method="fusion") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not fine-tuned from one shared start" in err and "2022: random start" in err
    assert "--allow_mixed_starts" in err and not (tmp_path / "r").exists()
    assert experiment_main(argv, method="ensemble") == 0  # an ensemble needs no shared start
    assert experiment_main([*argv, "--finetune_epochs", "1", "--allow_mixed_starts"], method="fusion") == 0
    report = read_json(tmp_path / "r" / "Mine" / MODEL / "fusion" / "2021" / "trial_1" / "metrics.json")
    assert report["config"]["allow_mixed_starts"] is True  # the opt-out is recorded


# --- 2. the images' own size ----------------------------------------------------------------------------

def test_the_card_records_the_images_sizes_and_tiny_models_train_at_them(own):
    card = read_json(own["data"] / CARD_NAME)
    assert card["image_size"] == 40 and card["image_sizes"]["shorter_side"] == {"min": 40, "median": 40, "max": 40}
    report = read_json(own["results"] / "Mine" / "baselines" / MODEL / "2019.json")
    assert report["config"]["image_size"] == 40


def test_upscaling_more_than_twice_is_warned_about(own, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert train_all(own["data"], tmp_path, "--bins", "2019", "--image_size", "96") == 0
    assert "trains at 96 px, 2.4x this dataset's 40 px images" in caplog.text


# --- 3. one small-data rule ------------------------------------------------------------------------------

def test_a_bin_whose_split_has_one_class_cannot_be_a_target(tmp_path, capsys):
    table = colour_table(tmp_path)
    frame = pd.read_csv(table)
    frame = frame[~((frame["label"] == "blue") & frame["timestamp"].str.startswith("2021"))]
    frame.to_csv(table, index=False)
    assert import_main(["--table", str(table), "--output_dir", str(tmp_path / "Out"), "--bin_by", "year",
                        "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "2021 (train has 1 class, val has 1 class, test has 1 class)" in err and "wider bins" in err


def test_drop_small_that_leaves_too_few_bins_says_wider_not_narrower(tmp_path, capsys):
    table = colour_table(tmp_path, per_stratum=6)
    assert import_main(["--table", str(table), "--output_dir", str(tmp_path / "Out"), "--bin_by", "month",
                        "--drop_small", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "wider bins" in err and "narrower" not in err


def test_a_bin_with_few_test_images_gets_a_warning_with_the_resolution_once(own, capsys):
    card = read_json(own["data"] / CARD_NAME)
    assert any("2019 has 4 test images: one image is 25.0 accuracy points" in w for w in card["warnings"])
    import_(own["tmp"], name="Again")
    out, err = capsys.readouterr()
    assert out.count("one image is 25.0 accuracy points") == 4 and "25.0 accuracy points" not in err  # once each


def test_every_problem_of_source_training_is_listed_before_any_bin_trains(own, tmp_path, capsys):
    data = tmp_path / "Broken"
    import shutil

    shutil.copytree(own["data"], data)
    for b in ("2020", "2022"):
        shutil.rmtree(data / b / "val")
        (data / b / "val").mkdir()
    card = read_json(data / CARD_NAME)
    for b in ("2020", "2022"):
        card["bins"][b]["splits"]["val"]["count"] = 0
    from multisource.utils.io import write_json

    write_json(data / CARD_NAME, card)
    assert train_all(data, tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert "Cannot train on 2 bin(s)" in err and "2020 (val empty)" in err and "2022 (val empty)" in err
    assert not (tmp_path / "r").exists()  # nothing trained, no start made


# --- 4. settings that fit own data -----------------------------------------------------------------------

def test_own_data_settings_and_targets_all_and_newest(own):
    file = read_settings(PROJECT_ROOT / "configs" / "own_data.yaml")
    from multisource.config import Layer

    cfg, opts = resolve_sweep(file, Layer({"dataset": str(own["data"]), "targets": ["newest"]}, flag=True))
    assert cfg.targets == ("2022",) and cfg.models == (MODEL,) and opts.save_model is False
    cfg, _ = resolve_sweep(file, Layer({"dataset": str(own["data"]), "targets": ["all"]}, flag=True))
    assert cfg.targets == ()


def test_a_flag_overrides_the_files_targets_and_a_refusal_names_the_files_line(own, tmp_path):
    from multisource.config import Layer

    demo = read_settings(PROJECT_ROOT / "configs" / "demo.yaml")  # pins era_5
    with pytest.raises(ConfigError, match=r"demo.yaml, line \d+, sweep.targets: targets \['era_5'\] are "
                                          r"not bins of Mine"):
        resolve_sweep(demo, Layer({"dataset": str(own["data"])}, flag=True))
    cfg, _ = resolve_sweep(demo, Layer({"dataset": str(own["data"]), "targets": ["2021"]}, flag=True))
    assert cfg.targets == ("2021",)


# --- 5. runs you can watch -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_two_worker_sweep_logs_every_experiment_and_prints_progress_with_an_eta(own, tmp_path, capfd):
    code = sweep_main(["--dataset", str(own["data"]), "--methods", "ensemble", "grasp", "--num_trials", "2",
                       "--initial_epochs", "1", "--finetune_epochs", "1", "--learning_rate", "1e-3",
                       "--targets", "2021", "2022", "--checkpoint_dir", str(own["results"] / "Mine" / "baselines" / MODEL),
                       "--results_dir", str(tmp_path), "--device", "cpu", "--workers", "2"])
    out = capfd.readouterr().out
    assert code == 0
    logs = sorted((tmp_path / "Mine" / MODEL).glob("*/*/trial_*/experiment.log"))
    assert len(logs) == 2 + 4  # ensemble once per target, grasp twice
    assert all("trial" in p.read_text() for p in logs), [p for p in logs if not p.read_text()]
    assert "remaining" in out and "ETA" in out and "6 done, 0 failed, 0 remaining" in out
    assert not list((tmp_path / "Mine" / MODEL).glob("*/*/trial_*/model.*"))  # sweeps save no model by default


def test_sweep_progress_prints_a_line_at_a_steady_interval(capsys):
    progress = SweepProgress(interval_s=0.2)
    try:
        time.sleep(5.6)  # the beat checks every 5 s
    finally:
        progress.close()
    assert "... still running: " in capsys.readouterr().out


def test_training_prints_plain_progress_lines_when_output_is_not_a_terminal(own, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="multisource.training.progress"):
        assert train_all(own["data"], tmp_path, "--bins", "2019") == 0
    assert "Mine/2019: epoch 1/1 done, val acc" in caplog.text


def test_python_dash_m_multisource_and_no_progress_on_every_builder(tmp_path):
    run = subprocess.run([sys.executable, "-m", "multisource", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert run.returncode == 0 and "preprocess NAME" in run.stdout
    assert drift_digits_main(["--output_dir", str(tmp_path / "d"), "--image_size", "8", "--train_renders", "1",
                              "--eval_renders", "1", "--no_progress"]) == 0


# --- 6. pay only for what changes a result ---------------------------------------------------------------

def test_a_deterministic_method_runs_once_per_target(own):
    plan = plan_sweep(SweepConfig(dataset=str(own["data"]), methods=("ensemble", "grasp"), num_trials=3,
                                  targets=("2021", "2022")),
                      RunOptions(results_dir=str(own["results"]), device="cpu"))
    counts = {m: sum(j.config.method == m for j in plan.jobs) for m in ("ensemble", "grasp")}
    assert counts == {"ensemble": 2, "grasp": 6}


def test_target_only_is_reused_across_protocols_when_its_inputs_are_the_same(own, tmp_path):
    """TARGET_ONLY reads no source: a fixed budget gives it the same inputs under leave-one-out and past, so the
    second protocol copies the first's result (and says so); a budget matched to K differs, so it runs again."""
    common = ["--dataset", str(own["data"]), "--methods", "target_only", "--targets", "2022", "--num_trials", "1",
              "--checkpoint_dir", str(own["results"] / "Mine" / "baselines" / MODEL), "--results_dir", str(tmp_path),
              "--device", "cpu", "--learning_rate", "1e-3"]
    assert sweep_main([*common, "--finetune_epochs", "1"]) == 0
    assert sweep_main([*common, "--finetune_epochs", "1", "--protocol", "past"]) == 0
    first = read_json(tmp_path / "Mine" / MODEL / "target_only" / "2022" / "trial_1" / "metrics.json")
    past = tmp_path / "Mine" / MODEL / "protocols" / "past" / "target_only" / "2022" / "trial_1" / "metrics.json"
    second = read_json(past)
    assert second["reused_from"] == str(tmp_path / "Mine" / MODEL / "target_only" / "2022" / "trial_1")
    assert second["protocol"] == "past" and "copied, not run again" in second["reuse_note"]
    assert second["test"] == first["test"] and second["sources"] == ["2019", "2020", "2021"]
    assert sweep_main([*common, "--protocol", "window:1", "--finetune_epochs", "2"]) == 0  # other inputs: run
    third = read_json(tmp_path / "Mine" / MODEL / "protocols" / "window-1" / "target_only" / "2022" / "trial_1"
                      / "metrics.json")
    assert "reused_from" not in third

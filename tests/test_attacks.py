"""The attack families of the adversarial reviews, so a regression fails CI: a user's files given to --overwrite,
hostile names in cards and flags, tampered results, a sweep's claim and a killed sweep, settings files that
expand without bound or repeat keys, Unicode and time-column traps in the importer, unusable weights files, and a
full disk under the writers. Each test failed before the fix it guards."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from multisource.cli.experiment import experiment_main
from multisource.cli.own_data import import_main
from multisource.cli.sweep import summarize_main
from multisource.cli.train import train_baseline_main
from multisource.config import ConfigError, load_yaml
from multisource.data.card import CARD_NAME
from multisource.data.build.timebins import TimeStampError, parse_timestamps
from multisource import claims
from multisource.experiment import runner
from multisource.experiment.config import ExperimentConfig
from multisource.models import save_checkpoint
from multisource.models.factory import ModelError, create_model
from multisource.options import RunOptions
from multisource.paths import UnsafeName, checkpoint_path, experiment_dir
from multisource.utils import io as io_module
from multisource.utils.io import read_json, write_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-resnet"


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def png(path: Path, value: int, size: int = 8) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value % 256, dtype=np.uint8)).save(path)
    return path.name


def image_table(tmp_path: Path, labels=("cat", "dog"), per_stratum: int = 12) -> pd.DataFrame:
    rows = []
    for year in (2020, 2021):
        for c, cls in enumerate(labels):
            for i in range(per_stratum):
                value = (year - 2020) * 100 + c * 37 + i
                name = f"{year}_{c}_{i}.png"
                png(tmp_path / "img" / name, value)
                rows.append({"path": name, "label": cls, "timestamp": f"{year}-0{1 + i % 9}-15"})
    return pd.DataFrame(rows)


def run_import(tmp_path: Path, table: pd.DataFrame, out: Path, *extra: str) -> int:
    csv = tmp_path / "t.csv"
    table.to_csv(csv, index=False)
    return import_main(["--table", str(csv), "--image_root", str(tmp_path / "img"), "--output_dir", str(out),
                        "--bin_by", "year", "--no_progress", *extra])


# --- 1. --overwrite replaces only what this project built ------------------------------------------------

def users_folder(path: Path) -> Path:
    (path / "thesis").mkdir(parents=True)
    (path / "thesis" / "chapter1.tex").write_text("\\section{Intro}\n")
    (path / "config.yaml").write_text("lr: 0.1\n")
    (path / "code.py").write_bytes(os.urandom(256))
    return path


def test_overwrite_never_deletes_a_folder_of_user_files(tmp_path, capsys):
    table = image_table(tmp_path)
    mine = users_folder(tmp_path / "MyStuff")
    before = tree_digest(mine)
    assert run_import(tmp_path, table, mine, "--overwrite") == 2
    err = one_line_error(capsys)
    assert "--overwrite replaces only a dataset this project built" in err and str(mine) in err
    assert tree_digest(mine) == before  # byte for byte
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".MyStuff")]  # no temporary folder left


def test_overwrite_refuses_a_built_dataset_that_also_holds_user_files(tmp_path, capsys):
    table = image_table(tmp_path)
    out = tmp_path / "Data"
    assert run_import(tmp_path, table, out) == 0
    assert run_import(tmp_path, table, out, "--overwrite") == 0  # a dataset we built is rebuilt
    (out / "notes.txt").write_text("my notes")
    before = tree_digest(out)
    capsys.readouterr()
    assert run_import(tmp_path, table, out, "--overwrite") == 2
    assert "notes.txt" in one_line_error(capsys)
    assert tree_digest(out) == before


def test_an_experiment_folder_the_runner_did_not_write_is_never_replaced(tmp_path):
    out = tmp_path / "trial_1"
    users_folder(out)
    before = tree_digest(out)
    with pytest.raises(FileExistsError, match="is not an experiment folder this project wrote"):
        runner.check_replaceable(out)
    assert tree_digest(out) == before
    write_json(out / "metrics.json", {"status": "complete"})
    runner.check_replaceable(out)  # a folder the runner wrote may be replaced


# --- 2. names that become paths: one check, from cards, tables and flags ---------------------------------

def hostile_card(tmp_path: Path, digits_root: Path, *, dataset: str = "Hostile", bin_name: str = "era_1") -> Path:
    """A copy of two digit eras whose card names ``dataset`` and one bin ``bin_name``."""
    root = tmp_path / "hostile"
    card = read_json(digits_root / CARD_NAME)
    for era in ("era_1", "era_2"):
        shutil.copytree(digits_root / era, root / era)
    bins = {bin_name: card["bins"]["era_1"], "era_2": card["bins"]["era_2"]}
    write_json(root / CARD_NAME, {**card, "dataset": dataset, "bins": bins, "bin_order": list(bins)})
    return root


@pytest.mark.parametrize("dataset, bin_name, words", [
    ("../../escaped", "era_1", "dataset name '../../escaped' cannot be a folder name"),
    ("ABSOLUTE", "era_1", "dataset name 'ABSOLUTE' cannot be a folder name"),  # an absolute path in tmp_path
    ("Hostile", "../../../evilbin", "bin '../../../evilbin' cannot be a folder name"),
    ("Hostile", "..", "bin '..' cannot be a folder name"),
])
def test_a_hostile_card_writes_and_reads_nothing_outside_its_folders(dataset, bin_name, words, digits_root,
                                                                     tmp_path, capsys):
    absolute = tmp_path / "elsewhere" / "absolute"
    dataset, words = dataset.replace("ABSOLUTE", str(absolute)), words.replace("ABSOLUTE", str(absolute))
    root = hostile_card(tmp_path, digits_root, dataset=dataset, bin_name=bin_name)
    results = tmp_path / "a" / "b" / "results"
    outside_before = tree_digest(tmp_path)
    code = train_baseline_main(["--dataset", str(root), "--bin", bin_name, "--model_name", MODEL, "--results_dir",
                                str(results), "--max_epochs", "1", "--no-pretrained"])
    assert code == 2
    assert words in one_line_error(capsys)
    assert tree_digest(tmp_path) == outside_before  # nothing written anywhere under the test's folder
    assert not absolute.exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("call", [
    lambda r: checkpoint_path(r, "../x", MODEL, "era_1"),
    lambda r: checkpoint_path(r, "drift_digits", MODEL, "../../x"),
    lambda r: checkpoint_path(r, "drift_digits", "..", "era_1"),
    lambda r: experiment_dir(r, "drift_digits", MODEL, "grasp", "../era_1", 1),
    lambda r: experiment_dir(r, "drift_digits", MODEL, "a/b", "era_1", 1),
    lambda r: experiment_dir(r, "drift_digits", MODEL, "grasp", "era_1", 1, protocol="../../p"),
])
def test_every_result_path_passes_the_one_name_check(call, tmp_path):
    with pytest.raises(UnsafeName, match="cannot be a folder name"):
        call(tmp_path)


# --- 3. values read back: summarize lists, never averages, a result out of range -------------------------

def finished_report(target: str, acc, trial: int = 1) -> dict:
    return {"status": "complete", "schema_version": 1, "dataset": "drift_digits", "model": MODEL, "method": "grasp",
            "target": target, "trial": trial, "seed": 42, "sources": ["era_1"],
            "config": {"dataset": "drift_digits", "protocol": "leave-one-out", "trial": trial},
            "test": {"accuracy": acc, "f1_macro": 0.5}, "val": {"accuracy": 0.5}, "time": {"total_s": 1.0},
            "memory": {"peak_bytes": 10}, "flops": {"total": 5}}


@pytest.mark.parametrize("change, words", [
    (lambda r: r["test"].update(accuracy=1.7), "'test.accuracy' is 1.7, outside [0, 1]"),
    (lambda r: r["test"].update(accuracy=-0.5), "'test.accuracy' is -0.5, outside [0, 1]"),
    (lambda r: r["test"].update(accuracy=True), "'test.accuracy' is True, not a finite number"),
    (lambda r: r["test"].update(accuracy="0.9"), "'test.accuracy' is '0.9', not a finite number"),
    (lambda r: r["time"].update(total_s=-3.0), "'time.total_s' is -3.0, outside [0, inf)"),
    (lambda r: r.update(memory=[1, 2]), "'memory' is a list, not a mapping"),
    (lambda r: r.update(target="era_9"), "target 'era_9' is not a bin of the dataset"),
    (lambda r: r.update(trial="one"), "trial 'one' is not a whole number >= 1"),
])
def test_summarize_lists_a_tampered_result_and_never_averages_it(change, words, tmp_path, capsys):
    base = tmp_path / "drift_digits" / MODEL / "grasp"
    write_json(base / "era_2" / "trial_1" / "metrics.json", finished_report("era_2", 0.5))
    bad = finished_report("era_3", 0.9)
    change(bad)
    text = json.dumps(bad)
    path = base / "era_3" / "trial_1" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert summarize_main(["--dataset", "drift_digits", "--model", MODEL, "--results_dir", str(tmp_path),
                           "--no_plots"]) == 0
    err = capsys.readouterr().err
    assert f"invalid result (counted as failed, not averaged): {path}: {words}" in err, err
    summary = read_json(base.parent / "summaries" / "grasp.json")
    assert summary["num_experiments"] == 1 and summary["num_failed"] == 1
    assert summary["overall"]["pooled"]["test_accuracy"]["mean"] == 0.5  # the tampered value is not in it


def test_nan_written_into_a_result_is_listed_not_averaged(tmp_path, capsys):
    base = tmp_path / "drift_digits" / MODEL / "grasp"
    write_json(base / "era_2" / "trial_1" / "metrics.json", finished_report("era_2", 0.5))
    path = base / "era_3" / "trial_1" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(finished_report("era_3", 0.25)).replace("0.25", "NaN"))
    assert summarize_main(["--dataset", "drift_digits", "--model", MODEL, "--results_dir", str(tmp_path),
                           "--no_plots"]) == 0
    assert "'test.accuracy' is nan, not a finite number" in capsys.readouterr().err


# --- 4. claims and kills ---------------------------------------------------------------------------------

def test_a_single_experiment_respects_a_live_sweeps_claim(trained_sources, tmp_path, capsys):
    argv = ["--dataset", "drift_digits", "--model", MODEL, "--target", "era_2", "--sources", "era_1", "--data_root",
            str(trained_sources["data_root"]), "--checkpoint_dir", str(trained_sources["checkpoint_dir"]),
            "--results_dir", str(tmp_path), "--no-save-model"]
    assert experiment_main(argv, method="ensemble") == 0
    out = tmp_path / "drift_digits" / MODEL / "ensemble" / "era_2" / "trial_1"
    before = tree_digest(out)
    claims.claim_path(out).write_text(f"{claims.HOST}-1")  # pid 1 lives: a sweep holds this experiment
    capsys.readouterr()
    assert experiment_main([*argv, "--overwrite"], method="ensemble") == 2
    err = one_line_error(capsys)
    assert "is being run right now by" in err and "wait for it to finish" in err
    assert tree_digest(out) == before  # the sweep's result is not replaced
    assert claims.claim_path(out).read_text() == f"{claims.HOST}-1"  # and its claim is left alone


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from multisource.executors import ProcessExecutor
    from multisource.options import RunOptions

    def task(folder, i):
        open(os.path.join(folder, f"worker-{os.getpid()}"), "w").close()
        time.sleep(120)  # far longer than the test waits

    if __name__ == "__main__":
        folder = sys.argv[1]
        for _ in ProcessExecutor(RunOptions(workers=2)).run(task, [(folder, i) for i in range(6)]):
            pass
""")


@pytest.mark.timeout(180)
def test_kill_9_of_a_sweeps_parent_leaves_no_worker_alive(tmp_path):
    script = tmp_path / "sweep_like.py"
    script.write_text(KILL_SCRIPT)
    marks = tmp_path / "marks"
    marks.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(marks)], cwd=PROJECT_ROOT)
    try:
        deadline = time.time() + 120
        while len(list(marks.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = [int(p.name.split("-")[1]) for p in marks.iterdir()]
        assert len(workers) == 2, "the workers did not start"
        parent.send_signal(signal.SIGKILL)  # what the OOM killer does: no clean-up runs in the parent
        parent.wait()
        deadline = time.time() + 20
        while any(claims.pid_alive(pid) and not _zombie(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if claims.pid_alive(pid) and not _zombie(pid)]
        assert len(list(marks.iterdir())) == 2  # no queued task started after the kill
    finally:
        parent.kill()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


# --- 5. settings files, Unicode names, time columns ------------------------------------------------------

def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    lines += [f'{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},'
              f'*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]' for i in range(9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml, line 2: YAML aliases \(\*name\) are not accepted"):
        load_yaml(path)
    assert time.perf_counter() - t0 < 5


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("grasp:\n  learning_rate: 0.1\n  alignment_threshold: 0.3\n  learning-rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml, line 4: key 'learning_rate' is given twice \(first on line 2\)"):
        load_yaml(path)


def test_nfc_and_nfd_spellings_of_a_class_are_one_class(tmp_path):
    table = image_table(tmp_path, labels=("café", "thé"))
    nfd = unicodedata.normalize("NFD", "café")
    table.loc[table.index % 2 == 0, "label"] = table.loc[table.index % 2 == 0, "label"].replace("café", nfd)
    assert (table["label"] == nfd).any() and (table["label"] == "café").any()
    out = tmp_path / "Uni"
    assert run_import(tmp_path, table, out) == 0
    card = read_json(out / CARD_NAME)
    assert card["classes"] == ["café", "thé"] and all(unicodedata.is_normalized("NFC", c) for c in card["classes"])


def test_class_names_that_differ_only_in_case_are_refused(tmp_path, capsys):
    table = image_table(tmp_path, labels=("Cat", "cat"))
    assert run_import(tmp_path, table, tmp_path / "Case") == 2
    assert "'Cat' and 'cat' differ only in letter case" in one_line_error(capsys)


@pytest.mark.parametrize("values", [[43831, 43832, 44197, 44198], [1, 2, 3, 4]])
def test_excel_serials_and_counters_are_refused_with_the_way_out(values):
    with pytest.raises(TimeStampError, match=r"--time_format excel .* bin column"):
        parse_timestamps(pd.Series(values))


def test_time_format_excel_reads_serial_days():
    parsed = parse_timestamps(pd.Series([43831, 44197]), time_format="excel")
    assert list(parsed) == [pd.Timestamp("2020-01-01"), pd.Timestamp("2021-01-01")]
    assert list(parse_timestamps(pd.Series([1_600_000_000]))) == [pd.Timestamp("2020-09-13 12:26:40")]


# --- 6. unusable weights files and a full disk: one line with the fix --------------------------------------

@pytest.mark.parametrize("content", [bytes(range(256)) * 16, b"PK\x03\x04" + bytes(64)], ids=["random", "zip"])
def test_a_weights_file_that_is_not_weights_is_one_line(content, tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"Cannot load pretrained weights .*weights.pth into resnet18.*--weights"):
        create_model("resnet18", 3, pretrained=True, weights=path)


class Payload:
    """Stands for any object whose unpickling would run code from the file."""


def test_a_pickle_payload_is_refused_without_suggesting_weights_only_false(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state": Payload()}, path)
    with pytest.raises(ModelError) as info:
        create_model("resnet18", 3, pretrained=True, weights=path)
    assert "pickled Python objects, which are never loaded" in str(info.value)
    assert "weights_only=False" not in str(info.value)


def test_another_architectures_weights_are_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(create_model("resnet10t", 3).state_dict(), path)
    with pytest.raises(ModelError, match="do not fit resnet18"):
        create_model("resnet18", 3, pretrained=True, weights=path)


def test_a_full_disk_while_saving_a_checkpoint_names_the_file_and_the_fix(trained_sources, tmp_path,
                                                                          monkeypatch, capsys):
    real_open = open

    def full_device(path, mode="r", *args, **kwargs):  # every write through utils.io hits a full device
        return real_open("/dev/full" if "w" in mode else path, mode, *args, **kwargs)

    monkeypatch.setattr(io_module, "open", full_device, raising=False)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path / "x.ckpt", torch.nn.Linear(2, 2), model_name=MODEL, classes=["a", "b"],
                        dataset="d", bin_name="b", config={}, metrics={})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())  # no temporary file left
    code = train_baseline_main(["--dataset", "drift_digits", "--bin", "era_1", "--model_name", MODEL, "--data_root",
                                str(trained_sources["data_root"]), "--results_dir", str(tmp_path / "r"),
                                "--max_epochs", "1", "--no-pretrained"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: No space left on device (") and ".ckpt)" in err  # the start's or era_1's file
    assert "free disk space or pass another --results_dir" in err and "basic_ios" not in err


def test_a_full_disk_during_an_import_names_output_dir_not_results_dir(tmp_path, monkeypatch, capsys):
    from multisource.data.build import importer

    table = image_table(tmp_path)

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(importer.shutil, "copyfile", full)
    assert run_import(tmp_path, table, tmp_path / "Full") == 1
    err = one_line_error(capsys)
    assert "No space left on device" in err and "--output_dir" in err and "--results_dir" not in err
    assert not (tmp_path / "Full").exists() and not list(tmp_path.glob(".Full*"))


def test_a_claim_left_under_this_processs_own_tag_is_taken_over_once_stale(tmp_path):
    """A restarted container can reuse the host name and pid of a process killed while it held a claim."""
    out = tmp_path / "trial_1"
    claims.claim_path(out).write_text(claims.process_tag())
    assert not claims.try_claim(out)  # fresh: this process holds it (its heartbeat keeps it so)
    old = time.time() - claims.STALE_AFTER_S - 5
    os.utime(claims.claim_path(out), (old, old))
    assert claims.try_claim(out) and claims.claim_path(out).read_text() == claims.process_tag()


def test_a_built_dataset_is_readable_by_others_as_the_umask_allows(tmp_path):
    out = tmp_path / "Data"
    assert run_import(tmp_path, image_table(tmp_path), out) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0700

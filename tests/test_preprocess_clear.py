"""CLEAR-10 / CLEAR-100 preprocessing on small fake raw trees in the real download's layout (SPEC 2.1-2.2)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multisource.cli.preprocess import build_main
from multisource.data.card import file_list_checksum, read_card
from multisource.data.build.clear import build_clear
from multisource.data.datasets import get_dataset
from multisource.data.datasets import CLEAR10_CLASSES, CLEAR100_30_CLASSES
from multisource.data.loaders import open_dataset
from multisource.data.build.raw import RawDataError
from multisource.data.splits import SPLITS, split_stratum

clear10_main = functools.partial(build_main, dataset="clear10")  # preprocessing/clear10_preprocessing.py
clear100_main = functools.partial(build_main, dataset="clear100")  # preprocessing/clear100_preprocessing.py

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BINS = {"year_1-2": (1, 2), "year_3-4": (3, 4), "year_5-6": (5, 6), "year_7-8": (7, 8), "year_9-10": (9, 10)}
CORRUPT = ("labeled_images/3/bus/3zz_corrupt.jpg", "labeled_images/6/camera/6zz_truncated.jpg")
NO_METADATA = "labeled_images/2/soccer/2soccer000.png"  # left out of its metadata JSON on purpose


def _count(bucket: int, ci: int, base: int) -> int:
    return base + (bucket + ci) % 4  # 4 different stratum sizes, so the floors differ between strata


def _image_bytes(seed: int, fmt: str) -> bytes:
    """A tiny deterministic image (8-40 px) encoded as ``fmt``."""
    import io

    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(8, 41, size=2))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_clear_raw(base: Path, classes: tuple[str, ...], *, per_stratum: int = 8, extra: tuple[str, ...] = (),
                   background: bool = True, reverse: bool = False, buckets: range = range(1, 12)) -> Path:
    """Raw CLEAR layout: ``base/class_names.txt`` (one level up) and ``base/train_image_only/labeled_*``."""
    tio = base / "train_image_only"
    names = (["BACKGROUND"] if background else []) + list(classes) + list(extra)
    base.mkdir(parents=True, exist_ok=True)
    (base / "class_names.txt").write_text("\n".join(names) + "\n")
    jobs = [(b, ci, c, i) for b in buckets for ci, c in enumerate(names) for i in range(_count(b, ci, per_stratum))]
    meta: dict[tuple[int, str], dict] = {}
    for b, ci, c, i in reversed(jobs) if reverse else jobs:
        fmt, ext = ("PNG", ".png") if i % 3 == 0 else ("JPEG", ".JPG" if i % 5 == 4 else ".jpg")
        stem = f"{b}{c}{i:03d}"
        folder = tio / "labeled_images" / str(b) / c
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}{ext}").write_bytes(_image_bytes(b * 10007 + ci * 101 + i, fmt))
        if f"labeled_images/{b}/{c}/{stem}{ext}" != NO_METADATA:
            meta.setdefault((b, c), {})[stem] = {"ID": stem, "IMG_PATH": f"labeled_images/{b}/{c}/{stem}{ext}",
                                                 "DATE_TAKEN": f"20{b:02d}-01-{i % 28 + 1:02d}"}
    for (b, c), entries in sorted(meta.items(), reverse=reverse):
        folder = tio / "labeled_metadata" / str(b)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{c}.json").write_text(json.dumps(entries))
    bus = tio / "labeled_images" / "3" / "bus"
    if bus.is_dir():
        (tio / CORRUPT[0]).write_bytes(b"this is not an image")
        (tio / CORRUPT[1]).write_bytes(_image_bytes(1, "JPEG")[:60])
        (tio / "labeled_images" / "3" / "bus" / "notes.txt").write_text("not an image either: ignored")
    return base


def valid_names(raw: Path, bucket: int, cls: str) -> list[str]:
    folder = raw / "train_image_only" / "labeled_images" / str(bucket) / cls
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png") and "zz_" not in p.name)


@pytest.fixture(scope="module")
def clear10(tmp_path_factory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("clear10")
    raw = make_clear_raw(tmp / "raw", CLEAR10_CLASSES)
    out = tmp / "CLEAR10"
    card = build_clear("clear10", raw, out, seed=42, workers=2, progress=False)
    return raw, out, card


def test_bins_classes_and_background_excluded(clear10):
    raw, out, card = clear10
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(BINS)
    assert card["classes"] == list(CLEAR10_CLASSES)
    assert card["excluded_classes"] == ["BACKGROUND"]
    assert card["source"]["unused_buckets"] == [11]
    assert card["source"]["class_names_file"] == "../class_names.txt"
    for b in BINS:
        for split in SPLITS:
            assert sorted(p.name for p in (out / b / split).iterdir()) == sorted(CLEAR10_CLASSES)
    assert not any("BACKGROUND" in str(p) for p in out.rglob("*"))
    assert not any(p.name.startswith("b11_") for p in out.rglob("*"))


def test_counts_are_bucket_level_floors_unioned_per_bin(clear10):
    raw, out, card = clear10
    for bin_name, buckets in BINS.items():
        for cls in CLEAR10_CLASSES:
            expected = {s: 0 for s in SPLITS}
            for b in buckets:
                names = valid_names(raw, b, cls)
                n = len(names)
                sizes = {"train": 8 * n // 10, "val": n // 10, "test": n - 8 * n // 10 - n // 10}
                parts = split_stratum(names, 42, stratum=f"{b}/{cls}")
                for s in SPLITS:
                    expected[s] += sizes[s]
                    assert sorted(p.name for p in (out / bin_name / s / cls).glob(f"b{b:02d}_*")) == sorted(
                        f"b{b:02d}_{x}" for x in parts[s])
            for s in SPLITS:
                assert card["bins"][bin_name]["splits"][s]["per_class"][cls] == expected[s], (bin_name, cls, s)
        per_bucket = card["bins"][bin_name]["per_bucket"]
        assert list(per_bucket) == [str(b) for b in buckets]
        assert card["bins"][bin_name]["source_years"] == list(buckets)


def test_corrupt_images_skipped_and_listed(clear10):
    raw, out, card = clear10
    assert card["skipped_count"] == 2
    assert [s["path"] for s in card["skipped"]] == sorted(CORRUPT)
    assert all(s["reason"] and str(raw) not in s["reason"] for s in card["skipped"])
    assert card["bins"]["year_3-4"]["skipped_count"] == 1 and card["bins"]["year_5-6"]["skipped_count"] == 1
    assert card["bins"]["year_1-2"]["skipped_count"] == 0
    assert not list(out.rglob("*zz_*")) and not list(out.rglob("*.txt"))


def test_files_copied_unchanged_with_manifest_and_metadata(clear10):
    raw, out, card = clear10
    lines = [json.loads(x) for x in (out / "year_1-2" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == sum(card["bins"]["year_1-2"]["splits"][s]["count"] for s in SPLITS)
    assert [x["file"] for x in lines] == sorted(x["file"] for x in lines)
    by_source = {x["source"]: x for x in lines}
    missing = by_source[NO_METADATA]
    assert missing["metadata"] is None and missing["bucket"] == 2
    for rec in lines[:40]:
        src = raw / "train_image_only" / rec["source"]
        dst = out / "year_1-2" / rec["file"]
        assert dst.read_bytes() == src.read_bytes()
        assert dst.name == f"b{rec['bucket']:02d}_{src.name}"
        assert rec["label"] == CLEAR10_CLASSES.index(rec["class"]) and rec["split"] == dst.parent.parent.name
        if rec["source"] != NO_METADATA:
            assert rec["metadata"]["IMG_PATH"] == rec["source"]
    assert card["bins"]["year_1-2"]["metadata_found"] == len(lines) - 1


def test_labels_through_the_loader(clear10):
    _, out, card = clear10
    handle = open_dataset("clear10", out)
    for split in SPLITS:
        ds = handle.split("year_7-8", split)
        assert len(ds) == card["bins"]["year_7-8"]["splits"][split]["count"]
        for path, label in ds.samples:
            assert label == CLEAR10_CLASSES.index(path.parent.name)
        rels = [f"year_7-8/{split}/{p.parent.name}/{p.name}" for p, _ in ds.samples]
        assert file_list_checksum(rels) == card["bins"]["year_7-8"]["splits"][split]["checksum"]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_reproducible_across_directory_creation_order(tmp_path):
    a = make_clear_raw(tmp_path / "raw_a", CLEAR10_CLASSES, per_stratum=3, buckets=range(1, 11))
    b = make_clear_raw(tmp_path / "raw_b", CLEAR10_CLASSES, per_stratum=3, buckets=range(1, 11), reverse=True)
    build_clear("clear10", a, tmp_path / "out_a", workers=3, progress=False)
    build_clear("clear10", b, tmp_path / "out_b", workers=1, progress=False)
    tree_a, tree_b = _tree(tmp_path / "out_a"), _tree(tmp_path / "out_b")
    assert list(tree_a) == list(tree_b)
    assert tree_a == tree_b  # images, manifests and the card: byte for byte


def test_clear100_keeps_exactly_the_30_classes(tmp_path):
    raw = make_clear_raw(tmp_path / "raw", CLEAR100_30_CLASSES, per_stratum=2, extra=("apple", "zebra"),
                         background=False)
    card = build_clear("clear100", raw, tmp_path / "out", workers=2, progress=False)
    assert card["classes"] == list(CLEAR100_30_CLASSES)
    assert card["excluded_classes"] == ["apple", "zebra"] and card["source"]["unused_buckets"] == [11]
    assert sorted(p.name for p in (tmp_path / "out" / "year_9-10" / "train").iterdir()) == sorted(CLEAR100_30_CLASSES)
    handle = open_dataset("clear100", tmp_path / "out")
    assert handle.classes == list(CLEAR100_30_CLASSES)


def test_clear100_missing_class_is_an_error_naming_it(tmp_path, capsys):
    classes = tuple(c for c in CLEAR100_30_CLASSES if c not in ("diving", "train"))
    raw = make_clear_raw(tmp_path / "raw", classes, per_stratum=1, background=False, buckets=range(1, 11))
    with pytest.raises(RawDataError, match=r"\['diving', 'train'\]"):
        build_clear("clear100", raw, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    rc = clear100_main(["--source_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "diving" in err and "train" in err and err.count("\n") == 1


def test_missing_raw_folder_says_what_to_download(tmp_path, capsys):
    rc = clear10_main(["--source_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "train_image_only" in err and "--source_dir" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(RawDataError, match="no labeled_images"):
        build_clear("clear10", tmp_path / "empty", tmp_path / "out")


def test_existing_output_needs_overwrite_and_failures_leave_no_half_build(clear10, tmp_path, monkeypatch):
    raw, _, _ = clear10
    out = tmp_path / "CLEAR10"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_clear("clear10", raw, out, progress=False)
    with pytest.raises(FileExistsError, match="replaces only a dataset this project built.*keep.txt"):
        build_clear("clear10", raw, out, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "user data"  # a user's folder is never replaced
    (out / "keep.txt").unlink()
    build_clear("clear10", raw, out, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import multisource.data.build.clear as clear_mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(clear_mod, "write_manifests", boom)
    with pytest.raises(OSError, match="disk full"):
        build_clear("clear10", raw, out, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLEAR10"]  # no .CLEAR10.building left behind
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    with pytest.raises(ValueError, match="contains the raw data"):
        build_clear("clear10", raw, raw.parent, overwrite=True, progress=False)


@pytest.mark.slow
def test_paper_commands_run_on_the_fake_build(clear10, tmp_path, monkeypatch, capsys):
    """SPEC 8 for clear10 on the fake build: one baseline, then every bin, then one method's experiment, each
    script run as written from its folder (in this interpreter: the entry points' own subprocess tests are in
    test_cli_train.py and test_runner.py)."""
    import runpy
    from types import SimpleNamespace

    _, out, _ = clear10
    monkeypatch.setenv("TQDM_DISABLE", "1")
    results = tmp_path / "results"
    common = ["--model_name", "tiny-resnet", "--no-pretrained", "--max_epochs", "1", "--batch_size", "32",
              "--image_size", "64", "--data_root", str(out), "--results_dir", str(results)]

    def run(cwd: str, script: str, *args: str) -> SimpleNamespace:
        monkeypatch.chdir(PROJECT_ROOT / cwd)
        monkeypatch.setattr(sys, "argv", [script, *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            runpy.run_path(script, run_name="__main__")
        captured = capsys.readouterr()
        assert done.value.code == 0, captured.err[-3000:]
        return SimpleNamespace(stdout=captured.out)

    run("baseline_training/clear10", "train_clear10.py", "--year_name", "year_1-2", *common)
    ckpts = list(results.rglob("year_1-2.ckpt"))
    assert len(ckpts) == 1 and ckpts[0].with_suffix(".json").is_file()
    proc = run("baseline_training/clear10", "train_all_subsets.py", *common)
    assert "year_1-2" in proc.stdout and "skipped" in proc.stdout  # the one trained above is complete
    assert len([p for p in results.rglob("*.ckpt") if "starts" not in p.parts]) == 5  # + the shared start
    proc = run("experiments/ensemble", "run_ensemble_experiment.py", "--dataset", "clear10", "--target", "year_1-2",
               "--sources", "year_3-4", "year_5-6", "year_7-8", "year_9-10", "--model", "tiny-resnet",
               "--image_size", "64", "--data_root", str(out), "--results_dir", str(results))
    metrics = json.loads((results / "clear10" / "tiny-resnet" / "ensemble" / "year_1-2" / "trial_1" /
                          "metrics.json").read_text())
    assert metrics["sources"] == ["year_3-4", "year_5-6", "year_7-8", "year_9-10"]
    assert metrics["memory"]["max_models_resident"] == 4
    assert metrics["test"]["num_samples"] == sum(s["splits"]["test"]["count"] for b, s in
                                                 json.loads((out / "dataset_card.json").read_text())["bins"].items()
                                                 if b == "year_1-2")


def test_card_is_read_back(clear10):
    _, out, card = clear10
    assert read_card(out) == json.loads(json.dumps(card))


def test_merging_baselines_run_on_the_fake_build_from_a_shared_start(clear10, tmp_path, capsys, monkeypatch):
    """The merges need sources fine-tuned from one start (here a saved tiny-resnet, as --weights); each runs
    through its paper-named sweep wrapper on clear10 and records its accuracy before and after fine-tuning."""
    import runpy

    from multisource.cli.train import train_all_main
    from multisource.models.checkpoint import save_checkpoint
    from multisource.models.factory import create_model

    _, out, _ = clear10
    monkeypatch.setenv("TQDM_DISABLE", "1")
    results = tmp_path / "results"
    start = save_checkpoint(tmp_path / "start.ckpt", create_model("tiny-resnet", 10, image_size=64),
                            model_name="tiny-resnet", classes=list(get_dataset("clear10").classes))
    assert train_all_main(["--dataset", "clear10", "--model_name", "tiny-resnet", "--weights", str(start),
                           "--max_epochs", "1", "--image_size", "64", "--data_root", str(out), "--results_dir",
                           str(results), "--device", "cpu"]) == 0
    for method, flags in (("task_arithmetic", ["--lambdas", "0.25", "0.5"]), ("ties", ["--density", "0.5"]),
                          ("dare", ["--drop_rate", "0.5"]), ("soup", [])):
        monkeypatch.chdir(PROJECT_ROOT / "experiments" / method)
        monkeypatch.setattr(sys, "argv", [f"run_all_{method}_clear10.py", "--num_trials", "1", "--targets",
                                          "year_5-6", "--model", "tiny-resnet", "--image_size", "64", "--data_root",
                                          str(out), "--results_dir", str(results), "--finetune_epochs", "1",
                                          "--learning_rate", "1e-3", "--device", "cpu", *flags])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(f"run_all_{method}_clear10.py", run_name="__main__")
        assert done.value.code == 0, capsys.readouterr().err[-2000:]
        m = json.loads((results / "clear10" / "tiny-resnet" / method / "year_5-6" / "trial_1" /
                        "metrics.json").read_text())
        assert m["information_used"]["source_models"] == ["year_1-2", "year_3-4", "year_7-8", "year_9-10"]
        assert m["budget"]["target_epochs"] == 1 and 0 <= m["stages"]["before_finetune"]["test_accuracy"] <= 1
        if method != "soup":
            assert m["information_used"]["pretrained_start"] == str(start)
    comparison = (results / "clear10" / "tiny-resnet" / "summaries" / "comparison.md").read_text()
    assert "| soup |" in comparison and "before fine-tuning" in comparison

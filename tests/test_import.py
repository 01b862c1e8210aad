"""Importing the user's own images: a table (CSV / Parquet / JSON Lines) or a folder tree becomes a dataset with
the standard layout, split rule, manifests and card; bad input is one clear line or a listed skip, and nothing
partial is ever left behind."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multisource.cli.own_data import import_main
from multisource.data.card import CARD_NAME
from multisource.data.datasets import get_dataset
from multisource.data.build.importer import MIN_STRATUM, ImportConfig, import_table
from multisource.data.loaders import open_dataset
from multisource.utils.io import read_json

ERAS = ("era_1", "era_2", "era_3", "era_4", "era_5")


def digits_table(digits_root: Path, eras=ERAS, seed: int = 0) -> pd.DataFrame:
    """Every image of the built-in digits (all splits pooled), era k dated on a random day of year 2018 + k."""
    rng = random.Random(seed)
    rows = []
    for k, era in enumerate(eras, 1):
        for split in ("train", "val", "test"):
            for cls_dir in sorted((digits_root / era / split).iterdir()):
                for f in sorted(cls_dir.iterdir()):
                    day = pd.Timestamp(2018 + k, 1, 1) + pd.Timedelta(days=rng.randrange(365))
                    rows.append({"path": str(f.relative_to(digits_root)), "label": cls_dir.name,
                                 "timestamp": day.date().isoformat(), "era": era})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def digits_import(digits_root, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("import")
    table = digits_table(digits_root)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    bad = pd.DataFrame([{"path": str(root / "broken.png"), "label": "3", "timestamp": "2021-06-01", "era": None},
                        {"path": "era_2/train/3/gone.png", "label": "3", "timestamp": "2020-06-01", "era": None}])
    table = pd.concat([table.iloc[:700], bad, table.iloc[700:]], ignore_index=True)  # bad rows 701 and 702
    csv = root / "images.csv"
    table.drop(columns="era").to_csv(csv, index=False)
    out = root / "MyDigits"
    code = import_main(["--table", str(csv), "--image_root", str(digits_root), "--output_dir", str(out),
                        "--bin_by", "year", "--image_size", "32", "--no_hflip", "--no_progress"])
    assert code == 0
    return {"table": table, "csv": csv, "out": out, "card": read_json(out / CARD_NAME), "root": root}


def test_table_import_follows_the_split_rule_per_bin_and_class(digits_import):
    card, table = digits_import["card"], digits_import["table"]
    assert card["dataset"] == "MyDigits" and card["binning"] == "year"
    assert card["bin_order"] == ["2019", "2020", "2021", "2022", "2023"] == list(card["bins"])
    assert card["classes"] == [str(d) for d in range(10)]  # numeric labels sorted as numbers
    for k, b in enumerate(card["bin_order"], 1):
        for cls in card["classes"]:
            n = int(((table["era"] == f"era_{k}") & (table["label"] == cls)).sum())
            got = {s: card["bins"][b]["splits"][s]["per_class"][cls] for s in ("train", "val", "test")}
            assert got == {"train": 8 * n // 10, "val": n // 10, "test": n - 8 * n // 10 - n // 10}, (b, cls)
        r = card["bins"][b]["time_range"]
        assert r["first"].startswith(str(2018 + k)) and r["last"].startswith(str(2018 + k))
        assert card["bins"][b]["bounds"] == {"start": f"{2018 + k}-01-01", "end_exclusive": f"{2019 + k}-01-01"}
    assert [(s["row"], s["bin"], s["reason"][:14]) for s in card["skipped"]] == [
        (701, "2021", "not a readable"), (702, "2020", "file not found")]
    assert card["bins"]["2021"]["skipped_count"] == 1 and card["warnings"] == [] and card["image_size"] == 32
    assert card["hflip"] is False


def test_manifests_carry_each_images_time_stamp_and_source_row(digits_import):
    out, table = digits_import["out"], digits_import["table"]
    lines = [json.loads(x) for x in (out / "2020" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == int((table["era"] == "era_2").sum())
    for rec in lines[:50]:
        row = table.iloc[rec["row"] - 1]
        assert rec["source"] == row["path"] and rec["timestamp"].startswith(row["timestamp"])
        assert rec["class"] == row["label"] and (out / "2020" / rec["file"]).is_file()
        assert rec["label"] == int(row["label"])


def test_the_same_table_as_parquet_and_json_lines_gives_the_same_dataset(digits_import, digits_root, tmp_path):
    table = digits_import["table"].drop(columns="era")
    table = table[table["timestamp"] < "2021-01-01"]  # two years keep it quick
    checksums = []
    for name, write in (("t.csv", lambda p: table.to_csv(p, index=False)),
                        ("t.parquet", lambda p: table.to_parquet(p, index=False)),
                        ("t.jsonl", lambda p: table.to_json(p, orient="records", lines=True))):
        write(tmp_path / name)
        card = import_table(tmp_path / name, tmp_path / f"out_{name}", ImportConfig(name="D", bin_by="year"),
                            image_root=digits_root, progress=False)
        checksums.append({b: {s: e["splits"][s]["checksum"] for s in e["splits"]} for b, e in card["bins"].items()})
    assert checksums[0] == checksums[1] == checksums[2]
    assert list(checksums[0]) == ["2019", "2020"]


def test_an_imported_dataset_is_its_card(digits_import):
    out = digits_import["out"]
    info = get_dataset(str(out))
    assert (info.name, info.bins, info.image_size, info.hflip, info.key) == \
        ("MyDigits", ("2019", "2020", "2021", "2022", "2023"), 32, False, str(out))
    handle = open_dataset(str(out))
    assert handle.root == out and handle.bins == list(info.bins) and handle.num_classes == 10
    assert len(handle.split("2021", "val")) == digits_import["card"]["bins"]["2021"]["splits"]["val"]["count"]


def test_a_registered_datasets_folder_opens_as_that_dataset(digits_root):
    info = get_dataset(str(digits_root))
    assert info.name == "drift_digits" and info.root == digits_root and info.image_size == 32


def test_unknown_dataset_names_and_folders_without_a_card_say_what_to_do(tmp_path):
    with pytest.raises(KeyError, match="Available: clear10.*or the folder of a dataset with a dataset_card.json"):
        get_dataset("MyData")
    with pytest.raises(KeyError, match="has no dataset_card.json.*import_dataset.py"):
        get_dataset(str(tmp_path))


# ---- a folder tree ---------------------------------------------------------------------------------------

def test_folder_tree_import_keeps_the_given_bin_order(digits_root, tmp_path):
    tree = tmp_path / "tree"
    names = {"era_1": "winter", "era_2": "spring", "era_3": "autumn"}
    for era, season in names.items():
        for split in ("train", "val", "test"):
            for cls_dir in (digits_root / era / split).iterdir():
                dest = tree / season / f"digit_{cls_dir.name}"
                dest.mkdir(parents=True, exist_ok=True)
                for f in cls_dir.iterdir():
                    shutil.copyfile(f, dest / f"{split}_{f.name}")
    (tree / "spring" / "digit_3" / "notes.txt").write_text("not an image")
    out = tmp_path / "Seasons"
    assert import_main(["--folder", str(tree), "--bins", "winter", "spring", "autumn", "--output_dir", str(out),
                        "--link", "symlink", "--no_progress"]) == 0
    card = read_json(out / CARD_NAME)
    assert card["bin_order"] == ["winter", "spring", "autumn"] and card["binning"] == "named bins"
    assert card["source"]["non_image_files_ignored"] == 1
    assert get_dataset(str(out)).bins == ("winter", "spring", "autumn")
    one = next((out / "spring" / "train" / "digit_3").iterdir())
    assert one.is_symlink() and one.resolve().parent == tree / "spring" / "digit_3"
    n = sum(1 for _ in (tree / "autumn" / "digit_0").glob("*.png"))
    assert card["bins"]["autumn"]["splits"]["test"]["per_class"]["digit_0"] == n - 8 * n // 10 - n // 10


# ---- bad input -------------------------------------------------------------------------------------------

def png(path: Path, value: int, size: int = 8) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path.name


@pytest.fixture()
def small_table(tmp_path) -> tuple[Path, pd.DataFrame]:
    """Two years x two classes x 12 distinct images each (enough for every stratum)."""
    rows = []
    for year in (2020, 2021):
        for cls in ("cat", "dog"):
            for i in range(12):
                value = (year - 2020) * 100 + (cls == "dog") * 50 + i  # distinct content everywhere
                rows.append({"path": png(tmp_path / "img" / f"{year}_{cls}_{i}.png", value), "label": cls,
                             "timestamp": f"{year}-0{1 + i % 9}-15"})
    return tmp_path, pd.DataFrame(rows)


def run_import(tmp_path: Path, table: pd.DataFrame, *extra: str, out: str = "Out") -> tuple[int, Path]:
    csv = tmp_path / "t.csv"
    table.to_csv(csv, index=False)
    code = import_main(["--table", str(csv), "--image_root", str(tmp_path / "img"), "--output_dir",
                        str(tmp_path / out), "--bin_by", "year", "--no_progress", *extra])
    return code, tmp_path / out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def nothing_left(tmp_path: Path, out: str = "Out") -> bool:
    return not (tmp_path / out).exists() and not list(tmp_path.glob(f".{out}.*"))


@pytest.mark.parametrize("change, words", [
    (lambda t: t.assign(timestamp=t["timestamp"].where(t.index != 4, "31/02/2020")), ["'31/02/2020'", "row 5"]),
    (lambda t: t.assign(timestamp=t["timestamp"].where(t.index != 7, "1066-10-14")), ["'1066-10-14'", "row 8",
                                                                                      "plausible range"]),
    (lambda t: t.assign(label=t["label"].where(t.index != 2, "cats/dogs")), ["'cats/dogs'", "row 3",
                                                                             "folder name"]),
    (lambda t: t.assign(label=t["label"].where(t.index != 0, ".hidden")), ["'.hidden'", "row 1"]),
    (lambda t: t.rename(columns={"timestamp": "date"}), ["['timestamp']", "--time_column"]),
    (lambda t: pd.concat([t, t.iloc[[3]]]), ["Rows 4 and", "same image"]),
    (lambda t: t.assign(timestamp=t["timestamp"].str.replace("2021", "2222")), ["'2222-", "plausible range"]),
    (lambda t: t[~((t["label"] == "dog") & (t["timestamp"] > "2021") & (t.index % 12 > 4))],
     ["1 bin x class stratum(s) have fewer than 10 images", "2021/dog (5)", "--drop_small"]),
])
def test_bad_rows_are_one_line_errors_and_leave_nothing(small_table, capsys, change, words):
    tmp_path, table = small_table
    code, out = run_import(tmp_path, change(table))
    assert code == 2
    line = one_line_error(capsys)
    for w in words:
        assert w in line, line
    assert nothing_left(tmp_path)


def test_missing_and_corrupt_images_are_listed_and_skipped_or_refused_with_strict(small_table, capsys):
    tmp_path, table = small_table
    (tmp_path / "img" / table["path"][1]).unlink()
    (tmp_path / "img" / table["path"][2]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    extra = pd.DataFrame([{"path": png(tmp_path / "img" / f"extra_{i}.png", 200 + i), "label": "cat",
                           "timestamp": "2020-05-05"} for i in range(2)])
    table = pd.concat([table, extra], ignore_index=True)  # the cat stratum of 2020 keeps 12 readable images
    code, out = run_import(tmp_path, table, "--strict")
    assert code == 2 and "2 image(s) are missing or unreadable" in one_line_error(capsys)
    assert nothing_left(tmp_path)
    code, out = run_import(tmp_path, table)
    assert code == 0
    card = read_json(out / CARD_NAME)
    assert card["skipped_count"] == 2
    assert [(s["row"], s["bin"]) for s in card["skipped"]] == [(2, "2020"), (3, "2020")]
    assert card["skipped"][0]["reason"] == "file not found"
    assert card["skipped"][1]["reason"].startswith("not a readable image")
    assert card["bins"]["2020"]["skipped_count"] == 2
    assert card["bins"]["2020"]["splits"]["train"]["per_class"]["cat"] == 8 * 12 // 10


def test_small_strata_can_be_dropped_and_absent_classes_are_warned_about(small_table, capsys):
    tmp_path, table = small_table
    table = pd.concat([table, table.assign(label="bird", path=[png(tmp_path / "img" / f"bird_{i}.png", 200 - i % 50 + i // 50)
                                                                for i in range(len(table))])], ignore_index=True)
    small = table[~((table["label"] == "dog") & (table["timestamp"] > "2021") & (table.index % 12 > 4))]
    code, out = run_import(tmp_path, small, "--drop_small")
    assert code == 0
    card = read_json(out / CARD_NAME)
    assert card["dropped_strata"] == [{"bin": "2021", "class": "dog", "images": 5}]
    assert card["bins"]["2021"]["splits"]["train"]["per_class"]["dog"] == 0
    assert any("class 'dog' has no images in bin(s) ['2021']" in w for w in card["warnings"])
    assert MIN_STRATUM == 10
    # with two classes, the same drop leaves 2021 one class: it could not be a target, so it is refused
    code, _ = run_import(tmp_path, small[small["label"] != "bird"], "--drop_small", out="Two")
    assert code == 2 and "2021 (train has 1 class, val has 1 class, test has 1 class)" in capsys.readouterr().err


def test_the_same_content_in_two_bins_is_reported(small_table):
    tmp_path, table = small_table
    shutil.copyfile(tmp_path / "img" / table["path"][0], tmp_path / "img" / table["path"][30])  # 2020 -> 2021
    code, out = run_import(tmp_path, table)
    assert code == 0
    card = read_json(out / CARD_NAME)
    assert len(card["duplicates"]["across_bins"]) == 1
    images = card["duplicates"]["across_bins"][0]["images"]
    assert [i.split("/")[0] for i in images] == ["2020", "2021"]
    assert any("same content in two or more bins" in w for w in card["warnings"])


def test_an_existing_dataset_is_replaced_only_with_overwrite_and_survives_a_failed_rebuild(small_table, capsys):
    tmp_path, table = small_table
    code, out = run_import(tmp_path, table)
    assert code == 0
    before = (out / CARD_NAME).read_bytes()
    assert run_import(tmp_path, table)[0] == 2
    assert "already exists" in one_line_error(capsys) and (out / CARD_NAME).read_bytes() == before
    (tmp_path / "img" / table["path"][0]).unlink()
    assert run_import(tmp_path, table, "--overwrite", "--strict")[0] == 2  # fails half-way: old dataset intact
    one_line_error(capsys)
    assert (out / CARD_NAME).read_bytes() == before and not list(tmp_path.glob(".Out.*"))
    assert run_import(tmp_path, table, "--overwrite")[0] == 0
    assert read_json(out / CARD_NAME)["skipped_count"] == 1


@pytest.mark.parametrize("extra, words", [
    (["--bins", "2020", "2021", "2020"], "--bins names a value twice"),
    (["--classes", "cat", "dog", "cat"], "--classes names a value twice"),
    (["--bin_by", "quantiles:30"], "quantiles:30 makes only"),
])
def test_bad_options_are_one_line_errors(small_table, capsys, extra, words):
    tmp_path, table = small_table
    assert run_import(tmp_path, table, *extra)[0] == 2
    assert words in one_line_error(capsys)
    assert nothing_left(tmp_path)


def test_a_bin_may_not_be_named_like_the_upstream_pool(small_table, capsys):
    tmp_path, table = small_table
    table = table.assign(bin=["upstream" if t < "2021" else "later" for t in table["timestamp"]])
    csv = tmp_path / "b.csv"
    table.drop(columns="timestamp").to_csv(csv, index=False)
    assert import_main(["--table", str(csv), "--image_root", str(tmp_path / "img"), "--output_dir",
                        str(tmp_path / "Out"), "--no_progress"]) == 2
    assert "'upstream' at row 1 cannot be a folder name (reserved" in one_line_error(capsys)


def test_images_the_loaders_cannot_read_are_skipped_and_listed(small_table):
    tmp_path, table = small_table
    Image.open(tmp_path / "img" / table["path"][0]).save(tmp_path / "img" / "first.webp")
    table = pd.concat([table, pd.DataFrame([{"path": "first.webp", "label": "cat", "timestamp": "2020-02-02"}])],
                      ignore_index=True)
    code, out = run_import(tmp_path, table)
    assert code == 0
    card = read_json(out / CARD_NAME)
    assert card["skipped"] == [{"row": 49, "path": "first.webp", "bin": "2020", "reason": card["skipped"][0]["reason"]}]
    assert "extension '.webp'" in card["skipped"][0]["reason"]
    placed = sum(e["splits"][s]["count"] for e in card["bins"].values() for s in e["splits"])
    assert placed == 48  # every other image, and the card counts exactly what the loaders see


def test_a_built_in_name_is_refused_for_an_import(small_table, capsys):
    tmp_path, table = small_table
    assert run_import(tmp_path, table, "--name", "drift_digits")[0] == 2
    assert "built-in dataset's name" in one_line_error(capsys)

"""Yearbook preprocessing on a small fake raw tree in the real download's layout (SPEC 2.3)."""

from __future__ import annotations

import functools
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multisource.cli.preprocess import build_main
from multisource.data.loaders import open_dataset
from multisource.data.build.raw import RawDataError
from multisource.data.splits import SPLITS
from multisource.data.build.yearbook import RAW_FOLDER, build_yearbook, label_of, period_of

yearbook_main = functools.partial(build_main, dataset="yearbook")  # preprocessing/yearbook_preprocessing.py

BINS = ("before_1950s", "1950s_1960s", "1970s_1980s", "1990s_and_later")
YEARS = (1905, 1921, 1929, 1930, 1948, 1949, 1950, 1961, 1969, 1970, 1985, 1989, 1990, 1999, 2000, 2013)
UNDATED = ("F/Ohio_Cleveland_1950.png", "M/195_short_year.png")
CORRUPT = "M/1975_corrupt_0-1.png"


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def make_yearbook_raw(base: Path, *, per_year: int = 3, reverse: bool = False) -> Path:
    """``base/faces_aligned_.../{M,F}/<year>_<school>_<n>.png``; every M name also exists under F."""
    root = base / RAW_FOLDER
    files = []
    for year in YEARS:
        for i in range(per_year):
            name = f"{year}_Ohio_School_{i}-1.png"
            files += [("M", name), ("F", name)]  # the same file name in both folders: both must survive
        files.append(("F", f"{year}_Texas_Only_F.png"))
    files += [tuple(u.split("/")) for u in UNDATED]
    for seed, (gender, name) in sorted(enumerate(files), reverse=reverse):
        (root / gender).mkdir(parents=True, exist_ok=True)
        (root / gender / name).write_bytes(_png(seed))
    (root / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "M" / "Thumbs.db").write_bytes(b"junk")  # not an image: ignored silently
    return base


@pytest.fixture(scope="module")
def yearbook(tmp_path_factory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("yearbook")
    raw = make_yearbook_raw(tmp / "raw")
    out = tmp / "Yearbook_Decades"
    return raw, out, build_yearbook(raw, out, seed=7, workers=2, progress=False)


def test_periods_and_labels_follow_the_spec():
    assert [period_of(y) for y in (1905, 1949, 1950, 1969, 1970, 1989, 1990, 2013)] == [
        "before_1950s", "before_1950s", "1950s_1960s", "1950s_1960s", "1970s_1980s", "1970s_1980s",
        "1990s_and_later", "1990s_and_later"]
    assert label_of(1929, "M", "gender") == "M"
    assert [label_of(y, "F", "decade") for y in (1929, 1930, 1959, 1960, 1979, 1980, 1999, 2000)] == [
        "earlier_decade", "later_decade"] * 4


def test_gender_build_counts_names_and_card(yearbook):
    raw, out, card = yearbook
    assert card["classes"] == ["F", "M"] and card["label"] == "gender" and card["seed"] == 7
    dated = Counter()
    for gender in ("F", "M"):
        for p in (raw / RAW_FOLDER / gender).glob("*.png"):
            if p.name[:4].isdigit() and p.name[4] == "_" and f"{gender}/{p.name}" != CORRUPT:
                dated[(period_of(int(p.name[:4])), gender)] += 1
    for (bin_name, gender), n in dated.items():
        per_class = {s: card["bins"][bin_name]["splits"][s]["per_class"][gender] for s in SPLITS}
        assert per_class == {"train": 8 * n // 10, "val": n // 10, "test": n - 8 * n // 10 - n // 10}
    total = sum(card["bins"][b]["splits"][s]["count"] for b in BINS for s in SPLITS)
    assert total == sum(dated.values())
    assert card["bins"]["before_1950s"]["source_years"]["min"] == 1905
    assert card["bins"]["1990s_and_later"]["source_years"]["max"] == 2013
    assert card["bins"]["1950s_1960s"]["period"] == {"first_year": 1950, "last_year": 1969}


def test_same_name_in_m_and_f_keeps_both(yearbook):
    raw, out, _ = yearbook
    name = "1961_Ohio_School_0-1.png"
    found = {p.relative_to(out / "1950s_1960s").as_posix() for p in out.rglob(f"*_{name}")}
    assert len(found) == 2
    assert {Path(f).parent.name for f in found} == {"F", "M"}
    for f in found:
        gender = Path(f).name[0]
        assert (out / "1950s_1960s" / f).read_bytes() == (raw / RAW_FOLDER / gender / name).read_bytes()


def test_undated_and_corrupt_files_are_skipped_and_listed(yearbook):
    _, out, card = yearbook
    skipped = {s["path"]: s for s in card["skipped"]}
    assert sorted(skipped) == sorted([*UNDATED, CORRUPT])
    assert card["skipped_count"] == 3
    assert all(skipped[u]["bin"] is None and "4-digit year" in skipped[u]["reason"] for u in UNDATED)
    assert skipped[CORRUPT]["bin"] == "1970s_1980s"
    assert card["bins"]["1970s_1980s"]["skipped_count"] == 1 and card["bins"]["before_1950s"]["skipped_count"] == 0
    assert not list(out.rglob("*corrupt*")) and not list(out.rglob("*Cleveland_1950*"))


def test_manifest_and_loader_labels(yearbook):
    _, out, card = yearbook
    records = [json.loads(x) for x in (out / "before_1950s" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == sum(card["bins"]["before_1950s"]["splits"][s]["count"] for s in SPLITS)
    for r in records:
        assert r["file"] == f"{r['split']}/{r['class']}/{r['gender']}_{Path(r['source']).name}"
        assert r["year"] < 1950 and r["class"] == r["gender"]
    handle = open_dataset("yearbook", out)
    ds = handle.split("before_1950s", "train")
    assert all(label == ["F", "M"].index(p.parent.name) for p, label in ds.samples)


def test_decade_option(tmp_path):
    raw = make_yearbook_raw(tmp_path / "raw", per_year=2)
    card = build_yearbook(raw, tmp_path / "out", label="decade", progress=False, workers=1)
    assert card["classes"] == ["earlier_decade", "later_decade"] and card["label"] == "decade"
    assert card["decade_boundaries"]["before_1950s"]["earlier_decade"] == "year < 1930"
    handle = open_dataset("yearbook", tmp_path / "out")
    assert handle.classes == ["earlier_decade", "later_decade"]
    records = [json.loads(x) for b in BINS for x in (tmp_path / "out" / b / "manifest.jsonl").read_text().splitlines()]
    for r in records:
        assert r["class"] == label_of(r["year"], r["gender"], "decade")
        assert r["label"] == handle.classes.index(r["class"])
    # M/ and F/ share names: in one decade class folder both must still be there
    same = [r for r in records if Path(r["source"]).name == "1961_Ohio_School_0-1.png"]
    assert len(same) == 2 and len({r["file"] for r in same}) == 2


def test_reproducible_across_creation_order(tmp_path):
    a = make_yearbook_raw(tmp_path / "a", per_year=2)
    b = make_yearbook_raw(tmp_path / "b", per_year=2, reverse=True)
    build_yearbook(a, tmp_path / "out_a", progress=False, workers=3)
    build_yearbook(b / RAW_FOLDER, tmp_path / "out_b", progress=False, workers=1)  # folder itself works too

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(tmp_path / "out_a") == tree(tmp_path / "out_b")


def test_errors(tmp_path, capsys):
    rc = yearbook_main(["--source_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and RAW_FOLDER in err and "--source_dir" in err and err.count("\n") == 1
    (tmp_path / "raw" / "M").mkdir(parents=True)
    with pytest.raises(RawDataError, match="has M/ but no F/ folder"):
        build_yearbook(tmp_path / "raw", tmp_path / "out")
    (tmp_path / "raw" / "F").mkdir()
    with pytest.raises(RawDataError, match="no dated portraits"):
        build_yearbook(tmp_path / "raw", tmp_path / "out")
    with pytest.raises(SystemExit):  # argparse: "--label: invalid choice: 'age' (choose from gender, decade)"
        yearbook_main(["--label", "age"])
    assert "--label" in capsys.readouterr().err

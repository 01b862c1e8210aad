"""The embedded drifting-glyphs benchmark: same seed same bytes, independent images, gradual drift, its card,
its options checked, and its command."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from multisource.config import ConfigError
from multisource.data.card import CARD_NAME, read_card
from multisource.data.build.drift_glyphs import UPSTREAM, DriftGlyphsConfig, bin_names, build_drift_glyphs
from multisource.data.loaders import open_dataset
from multisource.data.splits import SPLITS
from multisource.paths import PROJECT_ROOT

TINY = DriftGlyphsConfig(num_bins=3, characters="ABC", train_per_class=4, val_per_class=2, test_per_class=3,
                         upstream_per_class=4, image_size=16)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory) -> tuple[Path, Path]:
    """The same options built twice, with one and with two rendering processes."""
    base = tmp_path_factory.mktemp("glyph_builds")
    build_drift_glyphs(base / "one", TINY.__class__(**{**TINY.__dict__, "workers": 1}), progress=False)
    build_drift_glyphs(base / "two", TINY.__class__(**{**TINY.__dict__, "workers": 2}), progress=False)
    return base / "one", base / "two"


def test_the_same_seed_gives_the_same_bytes_whatever_the_workers(tiny_builds, tmp_path):
    one, two = tiny_builds
    a, b = _files(one), _files(two)
    assert a.keys() == b.keys() and a == b
    assert sum(k.endswith(".png") for k in a) == 3 * (3 * (4 + 2 + 3)) + 3 * (4 + 2 + 2)
    other = build_drift_glyphs(tmp_path / "seed7", DriftGlyphsConfig(**{**TINY.__dict__, "seed": 7}), progress=False)
    assert other["seed"] == 7
    c = _files(tmp_path / "seed7")
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] == c[k] for k in pngs) == 0  # another seed: every image differs


def test_every_image_is_its_own_draw_across_bins_and_splits(tiny_builds):
    root = tiny_builds[0]
    digests = [hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in root.rglob("*.png")]
    assert len(digests) == len(set(digests)) > 100


def test_the_card_is_complete_and_the_dataset_opens_with_its_bins(tiny_builds):
    root = tiny_builds[0]
    card = read_card(root)
    assert card["dataset"] == "drift_glyphs" and card["classes"] == ["A", "B", "C"]
    assert card["bin_order"] == ["era_01", "era_02", "era_03"] and card["image_size"] == 16
    assert card["hflip"] is False and card["example_group"] == ""
    assert card["config"]["num_bins"] == 3 and "workers" not in card["config"]
    assert [card["bins"][b]["time"] for b in card["bin_order"]] == [0.0, 0.5, 1.0]
    for b in card["bin_order"]:
        counts = {s: card["bins"][b]["splits"][s]["count"] for s in SPLITS}
        assert counts == {"train": 12, "val": 6, "test": 9}
        assert card["bins"][b]["splits"]["test"]["per_class"] == {"A": 3, "B": 3, "C": 3}
    assert {s: card[UPSTREAM]["splits"][s]["count"] for s in SPLITS} == {"train": 12, "val": 6, "test": 6}
    handle = open_dataset("drift_glyphs", root)  # the registry says 6 bins and 26 letters; the card wins
    assert handle.bins == ["era_01", "era_02", "era_03"] and handle.classes == ["A", "B", "C"]
    assert handle.info.image_size == 16 and handle.info.example_group == ""
    assert open_dataset(str(root)).bins == handle.bins


def test_bin_names_sort_in_time_order():
    assert bin_names(3) == ["era_01", "era_02", "era_03"]
    names = bin_names(64)
    assert names == sorted(names) and names[-1] == "era_64"


def _features(root: Path, bin_name: str, split: str, classes: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = [], []
    for k, c in enumerate(classes):
        for p in sorted((root / bin_name / split / c).glob("*.png")):
            x.append(np.asarray(Image.open(p).resize((12, 12), Image.BILINEAR), np.float32).ravel() / 255)
            y.append(k)
    return np.array(x), np.array(y)


def test_drift_is_gradual_a_tiny_models_accuracy_falls_with_distance_from_its_bin(tmp_path):
    """A linear classifier on 12 x 12 pixels trained on one era: its accuracy on each era's test split falls as the
    era moves away from its own, in both directions."""
    from sklearn.linear_model import LogisticRegression

    cfg = DriftGlyphsConfig(num_bins=6, characters="ABCDEF", train_per_class=50, val_per_class=1, test_per_class=40,
                            upstream_per_class=2)
    build_drift_glyphs(tmp_path / "g", cfg, progress=False)
    bins = cfg.bin_names()
    tests = {b: _features(tmp_path / "g", b, "test", cfg.characters) for b in bins}
    # measured here: era_01 0.746 0.617 0.500 0.350 0.275 0.258; era_06 0.217 ... 0.508; era_03 0.612 0.621 0.633
    # 0.458 0.338 0.275 (chance 1/6). The thresholds leave room for another BLAS's rounding.
    for own in (0, 5, 2):
        model = LogisticRegression(max_iter=500).fit(*_features(tmp_path / "g", bins[own], "train", cfg.characters))
        acc = np.array([model.score(*tests[b]) for b in bins])
        distance = np.abs(np.arange(len(bins)) - own)
        far = acc[distance == distance.max()].max()
        assert acc[own] - far > 0.15, (bins[own], acc.round(3))
        if own in (0, 5):  # from an end, every step away is a step further in time: a near-monotone fall
            assert spearmanr(distance, acc).statistic < -0.8, (bins[own], acc.round(3))
        else:  # from the middle: the eras next to it score well above those two or more eras away
            assert acc[distance <= 1].mean() - acc[distance >= 2].mean() > 0.1, (bins[own], acc.round(3))


@pytest.mark.parametrize("options, problem", [
    ({"num_bins": 1}, "num_bins=1 is out of range; use a value in [2, 64]"),
    ({"num_bins": 65}, "num_bins=65 is out of range"),
    ({"characters": "ABA"}, "names 'A' twice"),
    ({"characters": "A"}, "give at least two characters"),
    ({"characters": "AB?"}, "'?' cannot be a class"),
    ({"characters": "Aa"}, "'a' and its capital would be folders differing only in case"),
    ({"image_size": 8}, "image_size=8 is out of range; use a value in [16, 256]"),
    ({"test_per_class": 0}, "test_per_class=0 is out of range"),
    ({"seed": -1}, "seed=-1 is out of range"),
])
def test_bad_options_are_one_clear_error(options, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("?", r"\?")):
        DriftGlyphsConfig(**options)


def test_the_command_builds_prints_and_refuses_bad_flags(tmp_path):
    out = tmp_path / "G"
    cmd = [sys.executable, "-m", "multisource", "preprocess", "drift_glyphs", "--output_dir", str(out), "--bins", "2",
           "--characters", "XY", "--train_per_class", "3", "--val_per_class", "1", "--test_per_class", "2",
           "--upstream_per_class", "2", "--image_size", "16", "--no_progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"Built drifting glyphs in {out} (2 bins, 2 classes" in done.stdout
    assert "era_02: train 6, val 2, test 4" in done.stdout and (out / CARD_NAME).is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert again.returncode != 0 and "pass --overwrite" in again.stderr  # a finished build is never overwritten
    bad = subprocess.run([*cmd[:8], "two", "--overwrite"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                         timeout=300)
    assert bad.returncode != 0 and "num_bins" in bad.stderr and "Traceback" not in bad.stderr
    assert read_card(out)["bin_order"] == ["era_01", "era_02"]  # the refused run left the build as it was


def test_a_sweep_and_its_summaries_take_the_builds_bins_not_the_registrys(tiny_builds, tmp_path):
    """The registry lists drifting glyphs' default six eras; a build with other --bins is what sweeps and
    summaries follow: 'newest' is the build's last era, and results on an era the registry does not list are
    averaged, not refused."""
    from multisource.experiment.summary import dataset_bins
    from multisource.experiment.sweep import SweepConfig, plan_sweep
    from multisource.options import RunOptions

    root = tiny_builds[0]
    assert dataset_bins("drift_glyphs", root) == ["era_01", "era_02", "era_03"]
    opts = RunOptions(data_root=str(root), results_dir=str(tmp_path))
    plan = plan_sweep(SweepConfig(dataset="drift_glyphs", methods=("grasp",), targets=("newest",), num_trials=1,
                                  protocol="past"), opts)
    assert {(j.config.target, tuple(j.sources)) for j in plan.jobs} == {("era_03", ("era_01", "era_02"))}
    with pytest.raises(Exception, match=r"Unknown bin\(s\) \['era_09'\] for dataset drift_glyphs"):
        plan_sweep(SweepConfig(dataset="drift_glyphs", methods=("grasp",), targets=("era_09",)), opts)


def test_draws_differ_between_bins_at_the_same_time(tmp_path):
    """Each folder's generator is seeded by its bin too: two bins with the same time draw different images."""
    from multisource.data.build.drift_glyphs import _render_folder

    for b in ("era_01", "era_02"):
        _render_folder(str(tmp_path / b), TINY, b, 0.5, "test", 0, 3)
    assert all((tmp_path / "era_01" / f"A_{i:05d}.png").read_bytes() != (tmp_path / "era_02" / f"A_{i:05d}.png")
               .read_bytes() for i in range(3))


def test_results_follow_the_card_of_the_build_they_were_made_on(tmp_path):
    """Summaries screen results against the build's bins (its card, at the data_root the results name), not the
    registry's default six eras."""
    from types import SimpleNamespace

    from multisource.experiment.summary import screened_key
    from multisource.utils.io import write_json

    root = tmp_path / "G"
    write_json(root / CARD_NAME, {"dataset": "drift_glyphs", "classes": ["A", "B"], "bin_order": bin_names(13),
                                  "bins": {}})

    def record(target: str):
        return SimpleNamespace(target=target, trial=1, folder=tmp_path / target, config=SimpleNamespace(
            dataset="drift_glyphs"), extra={"options": {"data_root": str(root)}})

    found = {"grasp": {"finished": [record("era_13"), record("era_14")], "failed": []}}
    screened_key("drift_glyphs", found)
    assert [r.target for r in found["grasp"]["finished"]] == ["era_13"]  # era_13: not a registry era, kept
    assert [f["target"] for f in found["grasp"]["failed"]] == ["era_14"]  # not an era of that build


def test_settings_files_build_the_benchmark_they_name(tmp_path):
    from multisource.experiment.settings import read_settings, resolve_data, resolve_sweep
    from multisource.config import Layer

    file = read_settings(str(PROJECT_ROOT / "configs" / "glyphs.yaml"))
    assert resolve_data(file) == DriftGlyphsConfig(num_bins=13)
    sweep, _ = resolve_sweep(file, Layer())
    assert sweep.num_sources == (1, 2, 4, 8, 12) and sweep.targets == ("newest",) and sweep.dataset == "drift_glyphs"
    bare = tmp_path / "bare.yaml"  # no dataset: the command says which benchmark its data: section builds
    bare.write_text("data:\n  num_bins: 3\n  image_size: 24\n")
    assert resolve_data(read_settings(str(bare)), dataset="drift_glyphs") == DriftGlyphsConfig(num_bins=3,
                                                                                               image_size=24)
    with pytest.raises(ConfigError, match=r"bare.yaml, line 2, data.num_bins: 'num_bins' is not a setting of "
                                          r"DriftDigitsConfig, which this command builds"):
        resolve_data(read_settings(str(bare)), dataset="drift_digits")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  num_bin: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line 2, data.num_bin: unknown key 'num_bin' for the data: "
                                          r"section"):
        read_settings(str(bad))
    named = tmp_path / "named.yaml"
    named.write_text("dataset: drift_digits\ndata:\n  num_bins: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'num_bins' for DriftDigitsConfig"):
        read_settings(str(named))

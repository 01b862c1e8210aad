"""The embedded drifting-digits benchmark: determinism, disjoint instances, split rule, card, drift."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multisource.data.card import CARD_NAME, file_list_checksum, read_card
from multisource.data.build.drift_digits import (UPSTREAM, DriftDigitsConfig, build_drift_digits, era_style,
                                           render_digit)
from multisource.data.splits import SPLITS, split_stratum

BINS = ["era_1", "era_2", "era_3", "era_4", "era_5"]
CLASSES = [str(d) for d in range(10)]
NAME = re.compile(r"^d(\d{4})_r(\d+)\.png$")


def _images(root: Path) -> list[Path]:
    """The dataset's own files (images and card), ignoring anything others may add (caches, logs)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix == ".png" or p.name == CARD_NAME))


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _images(root)}


def _instances(root: Path) -> dict[tuple[str, str, str], set[int]]:
    """(bin, split, class) -> digit indices found in the file names."""
    out: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for b in [UPSTREAM, *BINS]:
        for split in SPLITS:
            for cls in CLASSES:
                for p in (root / b / split / cls).iterdir():
                    m = NAME.match(p.name)
                    assert m, f"unexpected file name {p}"
                    out[(b, split, cls)].add(int(m.group(1)))
    return out


@pytest.fixture(scope="module")
def small_builds(tmp_path_factory) -> dict[str, Path]:
    """Three quick builds (8 px): seed 42 twice (the second over an existing folder) and seed 7 with two
    renders per training instance."""
    base = tmp_path_factory.mktemp("digits_builds")
    cfg = DriftDigitsConfig(image_size=8, train_renders=1, eval_renders=1)
    a = base / "a"
    build_drift_digits(a, cfg)
    b = base / "b"
    b.mkdir()
    (b / "stale.txt").write_text("left from an old build")
    with pytest.raises(FileExistsError) as info:
        build_drift_digits(b, cfg)
    assert str(info.value) == (f"{b} already exists and is not empty; pass --overwrite to rebuild it or "
                               "choose another --output_dir.")
    assert (b / "stale.txt").is_file()  # refusing touched nothing
    with pytest.raises(FileExistsError, match=r"--overwrite replaces only a dataset this project built.*stale\.txt"):
        build_drift_digits(b, cfg, overwrite=True)  # a folder of someone's files is never replaced
    assert (b / "stale.txt").read_text() == "left from an old build"
    (b / "stale.txt").unlink()
    build_drift_digits(b, replace(cfg, workers=1))  # an empty folder is built into, here in one process
    build_drift_digits(b, cfg, overwrite=True)  # a dataset this project built is rebuilt
    d = base / "d"
    build_drift_digits(d, replace(cfg, workers=1))
    c = base / "c"
    build_drift_digits(c, DriftDigitsConfig(image_size=8, train_renders=2, eval_renders=1, seed=7))
    return {"a": a, "b": b, "c": c, "d": d}


def test_same_seed_builds_are_byte_identical(small_builds):
    a, b = _digests(small_builds["a"]), _digests(small_builds["b"])
    assert len(a) == 1797 + 1  # one render of every digit, plus the card
    assert a == b
    assert _digests(small_builds["d"]) == a  # rendered in one process or two: the same bytes
    assert not list(small_builds["a"].parent.glob(".*building*"))  # no temporary folder left behind
    assert not list(small_builds["a"].parent.glob(".*old*"))


def test_another_seed_gives_other_splits_and_pixels(small_builds):
    a = _digests(small_builds["a"])
    c = {k: v for k, v in _digests(small_builds["c"]).items() if not k.endswith("_r1.png")}
    assert len(c) == len(a) and set(a) != set(c)  # other instances in other bins/splits
    common = set(a) & set(c) - {CARD_NAME}
    assert sum(a[k] != c[k] for k in common) > 0.9 * len(common)  # and other jitter where they coincide
    assert read_card(small_builds["c"])["seed"] == 7


def test_instances_are_disjoint_and_labels_are_the_digits(digits_root):
    from sklearn.datasets import load_digits

    targets = load_digits().target
    found = _instances(digits_root)
    owner: dict[int, tuple[str, str]] = {}
    for (b, split, cls), indices in found.items():
        for i in indices:
            assert i not in owner, f"digit {i} is in both {owner[i]} and {(b, split)}"
            owner[i] = (b, split)
            assert targets[i] == int(cls), f"digit {i} (a {targets[i]}) filed under class {cls}"
    assert sorted(owner) == list(range(1797))  # every digit used exactly once
    for cls in range(10):  # upstream_fraction = 0.15 of each class is reserved for pretraining
        n_up = sum(1 for i, (b, _) in owner.items() if b == UPSTREAM and targets[i] == cls)
        assert n_up == round(0.15 * int(np.sum(targets == cls))), cls
    per_era = [sum(1 for b, _ in owner.values() if b == era) for era in BINS]
    assert max(per_era) - min(per_era) <= 10 and sum(per_era) == 1797 - 269


def test_renders_stay_inside_their_split(small_builds):
    """With several renders, r0..r{n-1} of one instance all land in that instance's split."""
    root = small_builds["c"]  # train_renders=2
    seen: dict[int, set[tuple[str, str, int]]] = defaultdict(set)
    for p in root.rglob("*.png"):
        b, split = p.parts[-4], p.parts[-3]
        m = NAME.match(p.name)
        seen[int(m.group(1))].add((b, split, int(m.group(2))))
    assert len(seen) == 1797
    for i, places in seen.items():
        assert len({(b, s) for b, s, _ in places}) == 1, f"digit {i} spread over {places}"
        split = next(iter(places))[1]
        assert sorted(r for _, _, r in places) == ([0, 1] if split == "train" else [0])
    card = read_card(root)
    train = sum(card["bins"][b]["splits"]["train"]["count"] for b in BINS)
    assert train == 2 * sum(1 for places in seen.values() for b, s, r in places if s == "train" and r == 0
                            and b != UPSTREAM)
    assert card["config"]["train_renders"] == 2


def test_split_rule_per_stratum(digits_root):
    found = _instances(digits_root)
    for b in [UPSTREAM, *BINS]:
        for cls in CLASSES:
            sizes = {s: len(found[(b, s, cls)]) for s in SPLITS}
            n = sum(sizes.values())
            assert sizes["train"] == (8 * n) // 10 and sizes["val"] == n // 10, (b, cls, sizes)
            assert sizes["test"] == n - (8 * n) // 10 - n // 10


def test_split_stratum_rule_and_determinism():
    for n in (0, 1, 5, 9, 10, 11, 19, 37):
        items = list(range(n))
        out = split_stratum(items, 42, "era_1/3")
        assert [len(out[s]) for s in SPLITS] == [(8 * n) // 10, n // 10, n - (8 * n) // 10 - n // 10]
        assert sorted(out["train"] + out["val"] + out["test"]) == items
        assert out == split_stratum(items, 42, "era_1/3")
    items = list(range(50))
    assert split_stratum(items, 42, "era_1/3") != split_stratum(items, 42, "era_2/3")  # stratum in the seed
    assert split_stratum(items, 42, "era_1/3") != split_stratum(items, 43, "era_1/3")


def test_card_matches_the_files_on_disk(digits_root):
    card = read_card(digits_root)
    assert card["dataset"] == "drift_digits" and card["seed"] == 42 and card["schema"] == 2
    assert card["classes"] == CLASSES and card["bin_order"] == BINS
    # what a reader needs is in the card itself (the dataset is its card)
    assert card["image_size"] == 32 and card["hflip"] is False and card["example_group"] == r"^(d\d+)_r\d+$"
    assert card["label_order"] == {c: i for i, c in enumerate(CLASSES)}
    assert list(card["bins"]) == BINS
    assert [card["bins"][b]["era"] for b in BINS] == [1, 2, 3, 4, 5]
    assert card["config"]["train_renders"] == 1 and card["config"]["image_size"] == 32
    entries = {b: card["bins"][b] for b in BINS} | {UPSTREAM: card[UPSTREAM]}
    for b, entry in entries.items():
        for split in SPLITS:
            summary = entry["splits"][split]
            rels = []
            for cls in CLASSES:
                files = sorted(p.name for p in (digits_root / b / split / cls).glob("*.png"))
                assert summary["per_class"][cls] == len(files), (b, split, cls)
                rels += [f"{b}/{split}/{cls}/{name}" for name in files]
            assert summary["count"] == len(rels)
            assert summary["checksum"] == file_list_checksum(rels)
    assert card["bins"]["era_1"]["splits"]["train"]["count"] == 241
    assert sum(card["bins"][b]["splits"][s]["count"] for b in BINS for s in SPLITS) == 1797 - 269


def test_file_list_checksum_is_order_free_and_content_sensitive():
    assert file_list_checksum(["b", "a"]) == file_list_checksum(["a", "b"])
    assert file_list_checksum(["a", "b"]) != file_list_checksum(["a", "c"])
    assert file_list_checksum([]) == hashlib.sha256(b"").hexdigest()
    assert file_list_checksum(["x"]) == hashlib.sha256(b"x\n").hexdigest()


def test_images_are_rgb_at_the_configured_size(digits_root):
    img = Image.open(next((digits_root / "era_3" / "test" / "7").glob("*.png")))
    assert img.mode == "RGB" and img.size == (32, 32)


def test_style_drifts_one_step_per_era():
    cfg = DriftDigitsConfig()
    styles = [[era_style(k, 5, cfg, np.random.default_rng(s)) for s in range(200)] for k in range(5)]
    rotation = [np.mean([s.rotation for s in era]) for era in styles]
    steps = [cfg.max_rotation * (k / 4) ** cfg.rotation_power for k in range(5)]  # 0 at era_1, max at era_5
    assert rotation == pytest.approx(steps, abs=1.0)  # +-5 degrees of jitter averages out
    assert all(b - a >= 6 for a, b in zip(rotation, rotation[1:]))  # a real step every era
    stroke = [np.mean([s.stroke for s in era]) for era in styles]
    assert all(b > a for a, b in zip(stroke, stroke[1:]))
    assert styles[0][0].ink == (20, 20, 30) and styles[4][0].ink == (40, 50, 150)
    assert styles[2][0].paper == pytest.approx((240, 233.5, 212.5))


def test_render_is_deterministic_given_the_rng():
    from sklearn.datasets import load_digits

    digit = load_digits().images[0]
    style = era_style(2, 5, DriftDigitsConfig(), np.random.default_rng(0))
    one = render_digit(digit, style, 24, np.random.default_rng(1))
    two = render_digit(digit, style, 24, np.random.default_rng(1))
    three = render_digit(digit, style, 24, np.random.default_rng(2))
    assert one.size == (24, 24) and one.mode == "RGB"
    assert np.array_equal(np.asarray(one), np.asarray(two))
    assert not np.array_equal(np.asarray(one), np.asarray(three))


def _pixels(root: Path, b: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted((root / b / split).glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(p).convert("L").resize((16, 16)), np.float32).ravel() / 255 for p in paths])
    return x, np.array([int(p.parent.name) for p in paths])


def test_the_data_itself_drifts_gradually(digits_root):
    """A pixel-level linear classifier fit on era_1 degrades era by era: the shift is in the data, gradual,
    and the task stays the same (well above chance next door). Independent of any network training."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(*_pixels(digits_root, "era_1", "train"))
    acc = [clf.score(*_pixels(digits_root, b, "test")) for b in BINS]
    assert acc[0] >= 0.6, acc
    assert acc[0] - acc[4] >= 0.3, acc
    assert acc[1] >= 0.4, acc  # the next era is still the same task
    assert all(later <= earlier + 0.1 for earlier, later in zip(acc, acc[1:])), acc  # no jump back up
    assert acc[4] == min(acc), acc

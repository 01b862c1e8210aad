"""Loading a preprocessed dataset: labels from the declared class list, clear errors for missing data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multisource.data.card import build_card, write_card
from multisource.data.folder import BinSplitDataset, DataError
from multisource.data.loaders import make_loader, open_dataset, split_loader
from multisource.data.transforms import DataConfig, eval_transform

BUILD = "python preprocessing/drift_digits_preprocessing.py"


def _png(path: Path, value: int = 0, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """A drift_digits-shaped dataset: era_1 with train/val/test, a few images per class 0..2."""
    root = tmp_path / "DriftDigits"
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for cls in ("0", "1", "2"):
            for i in range(n):
                _png(root / "era_1" / split / cls / f"d{i:04d}_r0.png", value=40 * int(cls))
    return root


def test_labels_follow_the_declared_class_order_not_the_listing(tmp_path):
    root = tmp_path / "ds"
    for cls in ("apple", "mango", "zebra"):
        for name in ("b.png", "a.PNG", "c.jpeg"):
            _png(root / "bin" / "train" / cls / name)
    (root / "bin" / "train" / "apple" / "notes.txt").write_text("not an image")
    (root / "bin" / "train" / "apple" / ".DS_Store").write_bytes(b"\0")
    classes = ["zebra", "apple", "mango"]  # declared order differs from the alphabetical listing
    ds = BinSplitDataset(root, "bin", "train", classes)
    assert len(ds) == 9
    for path, label in ds.samples:
        assert classes[label] == path.parent.name
    assert ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [p.name for p, _ in ds.samples[:3]] == ["a.PNG", "b.png", "c.jpeg"]  # sorted, any-case extension
    img, label = ds[3]
    assert label == 1 and isinstance(img, Image.Image) and img.mode == "RGB"


def test_open_dataset_takes_classes_from_the_card(tiny_root):
    handle = open_dataset("drift_digits", tiny_root)
    assert handle.classes == [str(d) for d in range(10)]  # no card: the registry's class list
    assert handle.bins == ["era_1", "era_2", "era_3", "era_4", "era_5"]
    reordered = ["2", "1", "0", "3", "4", "5", "6", "7", "8", "9"]
    write_card(tiny_root, build_card(tiny_root, dataset="drift_digits", classes=reordered, bins=["era_1"], seed=0))
    handle = open_dataset("drift_digits", tiny_root)
    assert handle.classes == reordered and handle.num_classes == 10
    assert handle.bins == ["era_1"]  # the card says which bins were built
    ds = handle.split("era_1", "train")
    assert {p.parent.name: y for p, y in ds.samples} == {"2": 0, "1": 1, "0": 2}


def test_digits_labels_match_folders(digits_root):
    handle = open_dataset("drift_digits", digits_root)
    ds = handle.split("era_4", "val")
    assert len(ds) == handle.card["bins"]["era_4"]["splits"]["val"]["count"]
    assert all(handle.classes[y] == p.parent.name for p, y in ds.samples)
    assert sorted(set(ds.targets)) == list(range(10))


def test_missing_dataset_folder(tmp_path):
    missing = tmp_path / "nowhere" / "DriftDigits"
    with pytest.raises(DataError) as info:
        open_dataset("drift_digits", missing)
    msg = str(info.value)
    assert str(missing) in msg and BUILD in msg and "--data_root" in msg


def test_unknown_bin_lists_the_bins(tiny_root):
    handle = open_dataset("drift_digits", tiny_root)
    with pytest.raises(DataError) as info:  # checked once, where a run is planned
        handle.check_bins("era_9")
    assert str(info.value) == ("Unknown bin(s) ['era_9'] for dataset drift_digits; its bins are "
                               "['era_1', 'era_2', 'era_3', 'era_4', 'era_5'].")


def test_missing_bin_folder_names_path_and_fix(tiny_root):
    handle = open_dataset("drift_digits", tiny_root)
    with pytest.raises(DataError) as info:
        handle.check_bins("era_3")
    msg = str(info.value)
    assert str(tiny_root / "era_3") in msg and BUILD in msg
    with pytest.raises(DataError) as info:  # a folder gone after the check is still one clear error
        handle.split("era_3", "train")
    assert str(tiny_root / "era_3") in str(info.value) and BUILD in str(info.value)


def test_missing_split_folder(tiny_root):
    import shutil

    shutil.rmtree(tiny_root / "era_1" / "test")
    with pytest.raises(DataError) as info:
        open_dataset("drift_digits", tiny_root).split("era_1", "test")
    msg = str(info.value)
    assert f"Split folder {tiny_root / 'era_1' / 'test'} does not exist" in msg and BUILD in msg


def test_empty_split_names_path_and_fix(tiny_root):
    for p in (tiny_root / "era_1" / "val").rglob("*.png"):
        p.unlink()
    (tiny_root / "era_1" / "val" / "0" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        open_dataset("drift_digits", tiny_root).split("era_1", "val")
    msg = str(info.value)
    assert f"Split {tiny_root / 'era_1' / 'val'} holds no images" in msg and BUILD in msg


def test_unknown_class_folder_is_an_error(tiny_root):
    _png(tiny_root / "era_1" / "train" / "BACKGROUND" / "x.png")
    with pytest.raises(DataError, match=r"class folders \['BACKGROUND'\] that are not in the dataset's class list"):
        open_dataset("drift_digits", tiny_root).split("era_1", "train")


def test_unreadable_image_names_path_and_fix(tiny_root):
    bad = tiny_root / "era_1" / "train" / "1" / "d0001_r0.png"
    bad.write_bytes(b"this is not a png")
    ds = open_dataset("drift_digits", tiny_root).split("era_1", "train")
    index = [p for p, _ in ds.samples].index(bad)
    ds[index - 1]  # its neighbours are fine
    with pytest.raises(DataError) as info:
        ds[index]
    msg = str(info.value)
    assert f"Cannot read image {bad}" in msg and "re-run the dataset's preprocessing script" in msg


def test_transforms_and_loader_shapes(tiny_root):
    handle = open_dataset("drift_digits", tiny_root)
    cfg = DataConfig(image_size=8, resize_ratio=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), hflip=False)
    loader = split_loader(handle, "era_1", "test", cfg, batch_size=2)
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert y.tolist() == [0, 1]  # eval: not shuffled
    # class "1" images are uniformly 40/255 grey: normalised to (40/255 - 0.5) / 0.25
    assert torch.allclose(x[1], torch.full((3, 8, 8), (40 / 255 - 0.5) / 0.25), atol=1e-6)
    t = eval_transform(DataConfig(image_size=32))
    assert t(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_train_loader_is_seeded_and_never_yields_a_batch_of_one(tiny_root):
    """9 training images in batches of 4: shuffled by the seed, and the last batch of one image dropped (it
    breaks BatchNorm in train mode); other ragged batches and eval loaders keep every image."""
    handle = open_dataset("drift_digits", tiny_root)
    cfg = DataConfig(image_size=8, hflip=False, color_jitter=(0, 0, 0, 0))

    def order(seed: int) -> list[int]:
        loader = split_loader(handle, "era_1", "train", cfg, batch_size=4, seed=seed)
        return [len(y) for _, y in loader], torch.cat([y for _, y in loader]).tolist()

    sizes, labels = order(0)
    assert sizes == [4, 4]
    assert order(0) == (sizes, labels)
    assert any(order(s)[1] != labels for s in (1, 2, 3))
    assert [len(y) for _, y in split_loader(handle, "era_1", "train", cfg, batch_size=5)] == [5, 4]
    eval_sizes = [len(y) for _, y in split_loader(handle, "era_1", "train", cfg, batch_size=4, train=False)]
    assert eval_sizes == [4, 4, 1]
    ds = handle.split("era_1", "train")
    assert len(make_loader(ds, batch_size=16, train=True, drop_last=True)) == 1  # smaller than a batch: kept


def test_example_groups_name_the_digit_each_rendering_shows(tmp_path):
    from PIL import Image

    from multisource.data.datasets import get_dataset
    from multisource.data.folder import BinSplitDataset, example_groups

    for cls, stems in (("3", ["d0007_r0", "d0007_r1", "d0012_r0"]), ("5", ["d0007_r2", "other"])):
        (tmp_path / "era_1" / "test" / cls).mkdir(parents=True)
        for stem in stems:
            Image.new("RGB", (4, 4)).save(tmp_path / "era_1" / "test" / cls / f"{stem}.png")
    data = BinSplitDataset(tmp_path, "era_1", "test", [str(d) for d in range(10)])
    groups = example_groups(data, get_dataset("drift_digits").example_group)
    # renderings of one digit share a group; labels keep equal stems of other classes apart; no match: its own
    assert groups == ["3/d0007", "3/d0007", "3/d0012", "5/d0007", "5/other"]
    assert example_groups(data, get_dataset("clear10").example_group) is None


def test_a_built_dataset_is_its_card(tmp_path):
    """The card's facts win over the registry's: a drifting-digits build at 24 px trains at 24 px, flips stay
    off and renderings group by the card's pattern; a card of schema 1 (no facts) falls back to the registry."""
    import json

    from multisource.data.card import CARD_NAME
    from multisource.data.build.drift_digits import DriftDigitsConfig, build_drift_digits

    root = tmp_path / "Digits24"
    build_drift_digits(root, DriftDigitsConfig(image_size=24, train_renders=1, eval_renders=1), progress=False)
    handle = open_dataset("drift_digits", root)
    assert (handle.info.image_size, handle.info.hflip, handle.info.example_group) == (24, False, r"^(d\d+)_r\d+$")
    assert handle.bins == ["era_1", "era_2", "era_3", "era_4", "era_5"] and handle.classes[0] == "0"
    card = json.loads((root / CARD_NAME).read_text())
    card["bin_order"] = ["era_1", "era_2", "era_3"]  # a build of fewer bins: the card says which
    card["image_size"], card["hflip"] = 48, True
    (root / CARD_NAME).write_text(json.dumps(card))
    handle = open_dataset("drift_digits", root)
    assert handle.bins == ["era_1", "era_2", "era_3"] and (handle.info.image_size, handle.info.hflip) == (48, True)
    for key in ("bin_order", "image_size", "hflip", "example_group"):  # an older card: the registry's facts
        card.pop(key)
    card["schema"] = 1
    (root / CARD_NAME).write_text(json.dumps(card))
    handle = open_dataset("drift_digits", root)
    assert (handle.info.image_size, handle.info.hflip, handle.bins[-1]) == (32, False, "era_5")
    card["example_group"] = "no group here"
    (root / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="example_group 'no group here' is not a regular expression with a group"):
        open_dataset("drift_digits", root)

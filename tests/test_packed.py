"""The packed pixel cache: same samples and tensors as the image folders, used only when valid."""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multisource.cli.preprocess import build_main
from multisource.data.card import build_card, read_card, write_card
from multisource.data.folder import BinSplitDataset
from multisource.data.loaders import make_loader, open_dataset
from multisource.data.build.pack import pack_dataset, stored_size
from multisource.data.packed import PackedDataset, open_packed, packed_paths
from multisource.data.transforms import DataConfig, make_transform
from multisource.utils.io import read_json, write_json

clear10_main = functools.partial(build_main, dataset="clear10")  # preprocessing/clear10_preprocessing.py

CLASSES = ["cat", "dog"]
BIN = "year_1-2"
SIZES = [(20, 30), (50, 70), (100, 40), (64, 48), (33, 33), (90, 31), (31, 90), (32, 45)]  # (W, H)
MODES = ["RGB", "L", "P", "RGBA"]


def _smooth(seed: int, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(xx / rng.uniform(4, 12) + c) * np.cos(yy / rng.uniform(4, 12))
                    for c in range(3)], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: int = 6) -> Path:
    """A clear10-style built dataset with one bin, two classes, images of mixed sizes, modes and formats."""
    k = 0
    for split, n in (("train", per_class), ("val", 2), ("test", 2)):
        for cls in CLASSES:
            folder = root / BIN / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = SIZES[k % len(SIZES)]
                img = Image.fromarray(_smooth(k, w, h)).convert(MODES[k % len(MODES)])
                ext = ".jpg" if img.mode in ("RGB", "L") and k % 2 else ".png"
                img.save(folder / f"img{k:03d}{ext}")
                k += 1
    write_card(root, build_card(root, dataset="clear10", classes=CLASSES, bins=[BIN], seed=0))
    return root


@pytest.fixture()
def packed_root(tmp_path) -> Path:
    root = make_dataset(tmp_path / "data")
    pack_dataset(root, 32, workers=2, progress=False)
    return root


def _pairs(ds_a, ds_b):
    for i in range(len(ds_a)):
        torch.manual_seed(i)
        a, la = ds_a[i]
        torch.manual_seed(i)
        b, lb = ds_b[i]
        assert la == lb
        yield a, b


def test_stored_size_matches_torchvision_resize():
    from torchvision.transforms import functional as TF

    for w, h in SIZES + [(500, 375), (375, 500), (257, 1000)]:
        img = Image.new("RGB", (w, h))
        assert stored_size(w, h, 32) == (TF.resize(img, 32).size if min(w, h) > 32 else (w, h))
        assert stored_size(w, h, 1000) == (w, h)  # never upscaled


def test_index_matches_card_and_folder_order(packed_root):
    card = read_card(packed_root)
    handle = open_dataset("clear10", packed_root)
    for split in ("train", "val", "test"):
        npy, meta = packed_paths(packed_root, BIN, split)
        index = read_json(meta)
        assert index["checksum"] == card["bins"][BIN]["splits"][split]["checksum"]
        folder = BinSplitDataset(packed_root, BIN, split, CLASSES)
        assert index["files"] == [f"{BIN}/{split}/{p.parent.name}/{p.name}" for p, _ in folder.samples]
        assert index["labels"] == folder.targets and index["classes"] == CLASSES and index["size"] == 32
        assert np.load(npy, mmap_mode="r").shape == (index["bytes"],)
        assert isinstance(handle.split(BIN, split, make_transform(DataConfig(image_size=28, resize_ratio=32 / 28),
                                                                  train=False)), PackedDataset)
    assert not list(packed_root.rglob("*.tmp"))


@pytest.mark.parametrize("train", [True, False])
def test_identical_tensors_when_resize_equals_cache_size(packed_root, train):
    cfg = DataConfig(image_size=28, resize_ratio=32 / 28)  # Resize(32) then crop 28, like 256 -> 224
    t = make_transform(cfg, train)
    handle = open_dataset("clear10", packed_root)
    packed = handle.split(BIN, "train", t)
    folder = BinSplitDataset(packed_root, BIN, "train", CLASSES, t)
    assert isinstance(packed, PackedDataset) and packed.samples == folder.samples
    for a, b in _pairs(packed, folder):
        assert torch.equal(a, b)


def test_a_label_budgets_subsample_of_a_packed_split_reads_the_same_pixels(packed_root):
    """restricted(indices): the subsample a label budget trains on holds exactly those examples, pixels and
    labels, from the packed cache as from the folders."""
    cfg = DataConfig(image_size=28, resize_ratio=32 / 28)
    t = make_transform(cfg, False)
    packed = open_dataset("clear10", packed_root).split(BIN, "train", t)
    folder = BinSplitDataset(packed_root, BIN, "train", CLASSES, t)
    keep = [len(packed) - 1, 0, 3]
    sub, sub_folder = packed.restricted(keep), folder.restricted(keep)
    assert isinstance(sub, PackedDataset) and len(sub) == 3 and sub.samples == [packed.samples[i] for i in keep]
    assert sub.targets == [packed.targets[i] for i in keep] and len(packed) > 3  # the whole split untouched
    for j, i in enumerate(keep):
        assert np.array_equal(sub.load_array(j), packed.load_array(i))
        assert torch.equal(sub[j][0], packed[i][0]) and torch.equal(sub_folder[j][0], folder[i][0])


def test_close_tensors_with_a_smaller_resize(packed_root):
    t = make_transform(DataConfig(image_size=14, resize_ratio=16 / 14), train=False)
    handle = open_dataset("clear10", packed_root)
    packed = handle.split(BIN, "train", t)
    assert isinstance(packed, PackedDataset)
    diffs = [(a - b).abs().mean().item() for a, b in _pairs(packed, BinSplitDataset(packed_root, BIN, "train",
                                                                                   CLASSES, t))]
    assert max(diffs) < 0.15  # normalised units: resize interpolation only


def test_larger_resize_falls_back_to_folders(packed_root, caplog):
    t = make_transform(DataConfig(image_size=56, resize_ratio=64 / 56), train=True)
    with caplog.at_level(logging.WARNING):
        ds = open_dataset("clear10", packed_root).split(BIN, "train", t)
    assert type(ds) is BinSplitDataset
    assert "larger --cache_size" in caplog.text


def test_stale_or_broken_caches_are_not_used(packed_root):
    t = make_transform(DataConfig(image_size=28, resize_ratio=32 / 28), train=False)
    handle = open_dataset("clear10", packed_root)
    npy, meta = packed_paths(packed_root, BIN, "val")
    # a file added after packing, card not rebuilt: the listing no longer matches the cache
    extra = packed_root / BIN / "val" / "cat" / "zzz_new.png"
    Image.new("RGB", (40, 40)).save(extra)
    assert open_packed(handle, BIN, "val", t) is None
    # card rebuilt: its checksum no longer matches the cache's
    write_card(packed_root, build_card(packed_root, dataset="clear10", classes=CLASSES, bins=[BIN], seed=0))
    assert open_packed(open_dataset("clear10", packed_root), BIN, "val", t) is None
    assert type(open_dataset("clear10", packed_root).split(BIN, "val", t)) is BinSplitDataset
    # repacked: valid again
    pack_dataset(packed_root, 32, progress=False)
    assert isinstance(open_packed(open_dataset("clear10", packed_root), BIN, "val", t), PackedDataset)
    # missing pixels, truncated pixels, unreadable or missing index: folders
    handle = open_dataset("clear10", packed_root)
    npy, meta = packed_paths(packed_root, BIN, "test")
    index = read_json(meta)
    np.save(npy, np.zeros(index["bytes"] - 1, np.uint8))
    assert open_packed(handle, BIN, "test", t) is None
    npy.unlink()
    assert open_packed(handle, BIN, "test", t) is None
    meta.write_text("{not json")
    assert open_packed(handle, BIN, "test", t) is None
    meta.unlink()
    assert open_packed(handle, BIN, "test", t) is None
    write_json(meta, {**index, "classes": ["dog", "cat"]})
    assert open_packed(handle, BIN, "test", t) is None


def test_no_card_means_no_cache(packed_root):
    (packed_root / "dataset_card.json").unlink()
    handle = open_dataset("clear10", packed_root)
    assert open_packed(handle, BIN, "train", make_transform(DataConfig(), train=False)) is None


def test_pickles_without_pixels_and_works_with_loader_workers(packed_root):
    t = make_transform(DataConfig(image_size=28, resize_ratio=32 / 28), train=False)
    ds = open_dataset("clear10", packed_root).split(BIN, "train", t)
    ds[0]  # maps the pixels in this process
    assert ds._pixels is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._pixels is None and torch.equal(clone[3][0], ds[3][0])
    batches = [torch.cat([x for x, _ in make_loader(ds, batch_size=4, train=False, num_workers=w)]) for w in (0, 2)]
    assert torch.equal(batches[0], batches[1])


def test_cache_only_cli_packs_an_existing_build(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", per_class=3)
    assert clear10_main(["--output_dir", str(root), "--cache_only", "--cache_size", "24", "--no_progress"]) == 0
    assert "Packed" in capsys.readouterr().out
    assert read_json(packed_paths(root, BIN, "train")[1])["size"] == 24
    assert clear10_main(["--output_dir", str(root), "--cache_only"]) == 2
    assert "--cache_size" in capsys.readouterr().err

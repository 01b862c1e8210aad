"""Writes the packed cache that ``multisource.data.packed`` reads (its format is described there): each split's
images decoded once, resized short side to ``size`` with torchvision's own resize, in one memory-mapped file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from torchvision.transforms import functional as TF

from ...utils.io import write_json
from ..card import file_list_checksum, read_card
from ..folder import BinSplitDataset, DataError
from ..packed import PACKED_FORMAT, PACKED_VERSION, packed_paths
from ..splits import SPLITS
from .raw import parallel_map


def stored_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(W, H) an image is stored at: short side -> ``size`` as torchvision's Resize(size); never upscaled."""
    short, long = min(width, height), max(width, height)
    if short <= size:
        return width, height
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _header_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def write_packed(root: Path, bin_name: str, split: str, classes: Sequence[str], size: int, *,
                 workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Pack one split of a built dataset (same order as the folder loader); returns its index."""
    ds = BinSplitDataset(root, bin_name, split, classes, cache=False)
    paths = [p for p, _ in ds.samples]
    files = [f"{bin_name}/{split}/{classes[label]}/{p.name}" for p, label in ds.samples]
    dims = parallel_map(_header_size, paths, workers=workers, desc="", progress=False)  # headers only: fast
    shapes = [stored_size(w, h, size)[::-1] for w, h in dims]  # [H, W]
    counts = np.array([h * w * 3 for h, w in shapes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    npy, meta = packed_paths(root, bin_name, split)
    meta.unlink(missing_ok=True)  # the index is written last: no index, no (possibly half-written) cache
    tmp = npy.with_name(f".{npy.name}.tmp")
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(offsets[-1]),))

    def fill(i: int) -> None:
        img = _load_rgb(paths[i])
        if img.size != (shapes[i][1], shapes[i][0]):
            img = TF.resize(img, size)  # the very resize the transforms apply: identical pixels
        arr = np.asarray(img, dtype=np.uint8)
        if arr.shape != (shapes[i][0], shapes[i][1], 3):
            raise DataError(f"{paths[i]} decoded to {arr.shape}, its header said {dims[i]}; re-run preprocessing.")
        pixels[offsets[i]:offsets[i + 1]] = arr.reshape(-1)

    try:
        parallel_map(fill, range(len(paths)), workers=workers, desc=f"Packing {bin_name}/{split}",
                     progress=progress)
        pixels.flush()
        del pixels
        os.replace(tmp, npy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    index = {
        "format": PACKED_FORMAT, "version": PACKED_VERSION, "bin": bin_name, "split": split, "size": size,
        "resize": "short side to size with torchvision bilinear resize, never upscaled, not cropped",
        "classes": list(classes), "count": len(files), "bytes": int(offsets[-1]),
        "checksum": file_list_checksum(files), "downsized": sum(1 for d, s in zip(dims, shapes) if d[::-1] != tuple(s)),
        "files": files, "labels": [label for _, label in ds.samples], "shapes": [list(s) for s in shapes],
    }
    write_json(meta, index)
    return index


def pack_dataset(root: Path, size: int, *, workers: int = 1, progress: bool = True,
                 bins: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Pack every non-empty split of a built dataset (classes and bins from its card)."""
    root = Path(root)
    card = read_card(root)
    if not card:
        raise DataError(f"{root} has no dataset card; build the dataset with its preprocessing script first.")
    if size < 8:
        raise ValueError(f"--cache_size must be 0 (no cache) or at least 8 pixels, got {size}.")
    out: dict[str, dict[str, int]] = {}
    for b in bins or list(card["bins"]):
        for split in SPLITS:
            if card["bins"][b]["splits"][split]["count"] == 0:
                continue
            index = write_packed(root, b, split, card["classes"], size, workers=workers, progress=progress)
            out.setdefault(b, {})[split] = index["bytes"]
    return out

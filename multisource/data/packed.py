"""Optional packed cache per bin and split: decoded, pre-resized uint8 pixels in one memory-mapped file.

Decoding JPEGs and resizing them dominates the cost of the image-folder path. The cache stores, for
``<root>/<bin>/<split>/``, two files beside the split folder:

* ``<split>.packed.npy``: one flat uint8 array (``np.lib.format.open_memmap``), the images one after the
  other, each ``H x W x 3`` RGB in row-major order;
* ``<split>.packed.json``: the index: format/version, ``size``, ``classes``, ``files`` (relative paths,
  in the loader's order), ``labels``, ``shapes`` (``[H, W]`` per image), ``checksum`` (the split's
  file-list checksum, as in the dataset card) and ``downsized`` (how many images were shrunk).

Each image is stored after resizing its **short side to ``size``** with torchvision's own bilinear
``resize`` (never upscaled, never cropped, aspect ratio kept). The train/eval transforms begin with
``Resize(resize_size)``; when ``resize_size == size`` (256 for 224 px models) that resize is an identity on
the cached image, so both paths give bit-identical tensors for the same random draws. With another
``resize_size`` smaller than ``size`` they agree up to resize interpolation; with a larger one (which
would upscale already shrunk pixels) the cache is not used.

``open_packed`` returns a dataset only when the index's checksum equals the dataset card's checksum for
that split and its file list equals the split folder's current listing; otherwise ``None`` and the
loaders read the image folders.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ..utils.io import read_json, write_json
from .card import file_list_checksum, read_card
from .folder import BinSplitDataset, DataError
from .raw import parallel_map
from .splits import SPLITS

log = logging.getLogger(__name__)
PACKED_FORMAT = "multisource-packed"
PACKED_VERSION = 1
_warned: set[str] = set()


def packed_paths(root: Path, bin_name: str, split: str) -> tuple[Path, Path]:
    """(pixels ``.npy``, index ``.json``) of one bin's split."""
    folder = Path(root) / bin_name
    return folder / f"{split}.packed.npy", folder / f"{split}.packed.json"


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


class PackedDataset(BinSplitDataset):
    """A split read from its packed cache; same samples, labels and transform as the folder dataset."""

    def __init__(self, root: Path, bin_name: str, split: str, classes: Sequence[str],
                 transform: Callable | None, *, index: dict, npy: Path, fix_hint: str = "") -> None:
        # no in-memory image cache: the pixels are already mapped, and the OS page cache keeps them warm
        super().__init__(root, bin_name, split, classes, transform, fix_hint=fix_hint, cache=False)
        files = [f"{bin_name}/{split}/{self.classes[label]}/{p.name}" for p, label in self.samples]
        if files != index["files"]:
            raise DataError(f"the files in {self.root / bin_name / split} differ from those packed")
        self._shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
        self._offsets = np.concatenate([[0], np.cumsum(self._shapes[:, 0] * self._shapes[:, 1] * 3)])
        self.npy = npy
        self._pixels: np.ndarray | None = None  # opened lazily, once per (worker) process

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pixels"] = None  # never pickle the mapped pixels into spawned workers
        return state

    def restricted(self, indices: Sequence[int]) -> "PackedDataset":
        sub = super().restricted(indices)
        sub._shapes, sub._offsets = self._shapes[list(indices)], self._offsets[list(indices)]
        return sub

    def load_array(self, index: int) -> np.ndarray:
        """The image's stored pixels, ``H x W x 3`` uint8 (a copy out of the mapped file)."""
        if self._pixels is None:
            self._pixels = np.load(self.npy, mmap_mode="r")
        h, w = self._shapes[index]
        start = self._offsets[index]
        return np.array(self._pixels[start:start + h * w * 3]).reshape(h, w, 3)

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.load_array(index))


def _resize_size(transform: Any) -> int | None:
    """The short-side size of the transform's leading ``Resize`` (None when it has none)."""
    for t in getattr(transform, "transforms", []):
        if isinstance(t, T.Resize):
            s = t.size
            return int(s) if isinstance(s, int) else int(max(s))
    return None


def _problem(index: dict, handle: Any, bin_name: str, split: str, npy: Path, transform: Any) -> str | None:
    if index.get("format") != PACKED_FORMAT or index.get("version") != PACKED_VERSION:
        return "unknown cache format"
    card = handle.card or {}
    expected = card.get("bins", {}).get(bin_name, {}).get("splits", {}).get(split, {}).get("checksum")
    if expected is None:
        return "no checksum for this split in the dataset card"
    if index.get("checksum") != expected:
        return "its file-list checksum differs from the dataset card's (stale cache)"
    if list(index.get("classes", [])) != list(handle.classes):
        return "its class list differs from the dataset's"
    if not npy.is_file():
        return f"{npy.name} is missing"
    header = np.load(npy, mmap_mode="r")
    if header.dtype != np.uint8 or header.shape != (index["bytes"],):
        return f"{npy.name} holds {header.shape} {header.dtype}, the index expects ({index['bytes']},) uint8"
    wanted = _resize_size(transform)
    if index.get("downsized", 0) and (wanted is None or wanted > index["size"]):
        return (f"the transform resizes to {wanted} px but the cache holds images shrunk to {index['size']} px; "
                "rebuild it with a larger --cache_size")
    return None


def _warn_once(meta: Path, reason: str) -> None:
    key = f"{meta}:{reason}"
    if key not in _warned:
        _warned.add(key)
        log.warning("Not using packed cache %s: %s; reading the image folders instead.", meta, reason)


def open_packed(handle: Any, bin_name: str, split: str, transform: Any) -> PackedDataset | None:
    """The split's packed cache if it exists and is valid for this dataset and transform, else None."""
    npy, meta = packed_paths(handle.root, bin_name, split)
    if not meta.is_file():
        log.debug("No packed cache at %s; reading the image folders.", meta)
        return None
    try:
        index = read_json(meta)
        reason = _problem(index, handle, bin_name, split, npy, transform)
        if reason is None:
            return PackedDataset(handle.root, bin_name, split, handle.classes, transform, index=index, npy=npy,
                                 fix_hint=handle.fix_hint)
    except (DataError, OSError, ValueError, KeyError, TypeError) as exc:  # unusable cache: fall back
        reason = str(exc)
    _warn_once(meta, reason)
    return None

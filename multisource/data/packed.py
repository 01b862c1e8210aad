"""Optional packed cache per bin and split: decoded, pre-resized uint8 pixels in one memory-mapped file.
This module reads it; ``multisource.data.build.pack`` writes it.

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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torchvision import transforms as T

from ..utils.io import read_json
from .folder import BinSplitDataset, DataError

log = logging.getLogger(__name__)
PACKED_FORMAT = "multisource-packed"
PACKED_VERSION = 1
_warned: set[str] = set()


def packed_paths(root: Path, bin_name: str, split: str) -> tuple[Path, Path]:
    """(pixels ``.npy``, index ``.json``) of one bin's split."""
    folder = Path(root) / bin_name
    return folder / f"{split}.packed.npy", folder / f"{split}.packed.json"


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

"""A bin's split as an ImageFolder whose labels come from the declared class list."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .card import list_images
from .errors import DataError  # noqa: F401  (re-exported: every reader raises it)


# Decoded images are kept in memory when a whole split fits in this budget (the small embedded benchmark);
# large real datasets use the packed cache instead (see data/packed.py).
MEMORY_CACHE_BYTES = 256 * 2**20


class BinSplitDataset(Dataset):
    """``<root>/<bin>/<split>/<class>/<image>``; label = index of the class in ``classes``."""

    def __init__(self, root: Path, bin_name: str, split: str, classes: Sequence[str],
                 transform: Callable | None = None, *, fix_hint: str = "", cache: bool | None = None) -> None:
        self.root, self.bin_name, self.split = Path(root), bin_name, split
        self.classes = list(classes)
        self.transform = transform
        folder = self.root / bin_name / split
        if not folder.is_dir():
            raise DataError(f"Split folder {folder} does not exist. {fix_hint}".strip())
        unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in self.classes)
        if unknown:
            raise DataError(f"{folder} has class folders {unknown} that are not in the dataset's class list "
                            f"{self.classes}. {fix_hint}".strip())
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            cls_dir = folder / cls
            if cls_dir.is_dir():
                self.samples.extend((p, label) for p in list_images(cls_dir))
        if not self.samples:
            raise DataError(f"Split {folder} holds no images. {fix_hint}".strip())
        self.targets = [label for _, label in self.samples]
        self._cache: dict[int, Image.Image] | None = {} if (cache if cache is not None else self._fits_memory()) \
            else None

    def _fits_memory(self) -> bool:
        first = self.load_image(0)
        return first.width * first.height * 3 * len(self.samples) <= MEMORY_CACHE_BYTES

    def __len__(self) -> int:
        return len(self.samples)

    def restricted(self, indices: Sequence[int]) -> "BinSplitDataset":
        """The same split holding only the examples at ``indices`` (in that order): a label budget's subsample
        with this dataset's transform and interface."""
        sub = copy.copy(self)
        sub.samples = [self.samples[i] for i in indices]
        sub.targets = [label for _, label in sub.samples]
        sub._cache = None if self._cache is None else {}
        return sub

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"Cannot read image {path} ({exc}). Delete it or re-run the dataset's "
                            "preprocessing script.") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._cache is None:
            img = self.load_image(index)
        else:
            img = self._cache.get(index)
            if img is None:
                img = self._cache[index] = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.samples[index][1]


def example_groups(dataset: BinSplitDataset, pattern: str) -> list[str] | None:
    """The underlying example of each image of ``dataset`` (in its order), from ``pattern`` on the file stems;
    None without a pattern. An image the pattern does not match is its own example."""
    if not pattern:
        return None
    rule = re.compile(pattern)
    groups = []
    for path, label in dataset.samples:
        match = rule.match(Path(path).stem)
        groups.append(f"{label}/{match.group(1) if match else Path(path).stem}")
    return groups

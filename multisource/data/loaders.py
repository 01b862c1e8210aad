"""Build a dataset's bin/split datasets and data loaders with clear errors for missing data."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .card import CARD_NAME, card_fingerprint, list_images, read_card
from .datasets import DatasetInfo, card_facts, get_dataset
from .folder import BinSplitDataset, DataError
from .splits import SPLITS
from .packed import open_packed  # the fast path, used when a valid cache exists
from .transforms import DataConfig, make_transform

log = logging.getLogger(__name__)


@dataclass
class DatasetHandle:
    """A preprocessed dataset on disk: its registry entry, root folder and (authoritative) class list."""

    info: DatasetInfo
    root: Path
    classes: list[str]
    bins: list[str]
    card: dict | None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str | None:
        """Identifies this build's data (data/card.py ``card_fingerprint``); recorded with every model and result."""
        return card_fingerprint(self.card)

    @property
    def fix_hint(self) -> str:
        return f"Build it with: {self.info.build_command()} (or pass --data_root to the dataset's folder)."

    def check_bins(self, *bins: str) -> None:
        # "upstream" is the pretraining pool some datasets carry beside their bins (drifting digits).
        missing = [b for b in bins if b not in self.bins and not (b == "upstream" and (self.root / b).is_dir())]
        if missing:
            raise DataError(f"Unknown bin(s) {missing} for dataset {self.info.name}; its bins are {self.bins}.")
        absent = [b for b in bins if not (self.root / b).is_dir()]
        if absent:
            raise DataError(f"Bin folder(s) {[str(self.root / b) for b in absent]} missing. {self.fix_hint}")

    @property
    def native_size(self) -> int | None:
        """The images' own training size recorded by the importer (median shorter side), if known."""
        sizes = (self.card or {}).get("image_sizes") or {}
        return sizes.get("native_size") if isinstance(sizes.get("native_size"), int) else None

    def warn_upscale(self, size: int, model_name: str) -> None:
        """Say so when training at ``size`` upscales the images more than 2x (compute spent on no new detail)."""
        native = self.native_size
        if native and size > 2 * native:
            log.warning("%s trains at %d px, %.1fx this dataset's %d px images: about %.0fx the compute for no new "
                        "detail (pass --image_size %d to train at their own size).", model_name, size, size / native,
                        native, (size / native) ** 2, native)

    def split_count(self, bin_name: str, split: str) -> int:
        """Images in one bin's split: the card's count, or (no card) the files on disk."""
        entry = ((self.card or {}).get("bins") or {}).get(bin_name) or (self.card or {}).get(bin_name) or {}
        counted = ((entry.get("splits") or {}).get(split) or {}).get("count")
        if isinstance(counted, int):
            return counted
        folder = self.root / bin_name / split
        return sum(len(list_images(c)) for c in folder.iterdir() if c.is_dir()) if folder.is_dir() else 0

    def check_trainable(self, bins: list[str]) -> None:
        """Every bin a model trains on has train, val and test images: all problems in one message, before work.
        The bins themselves were checked where the run was planned (``check_bins``)."""
        problems = [f"{b} ({', '.join(s for s in SPLITS if self.split_count(b, s) == 0)} empty)" for b in bins
                    if any(self.split_count(b, s) == 0 for s in SPLITS)]
        if problems:
            raise DataError(f"Cannot train on {len(problems)} bin(s) of {self.info.name}: {'; '.join(problems)}. A model "
                            "trains on train, selects on val and is scored on test, so each needs images: rebuild the "
                            "dataset with wider bins or more images per class (a bin x class of at least 10 images "
                            "gives every split one), or leave those bins out (--bins).")

    def split(self, bin_name: str, split: str, transform=None) -> Dataset:
        """One bin's split. Its bin was checked once, where the run was planned (``check_bins``), not again for
        every split of every loader; a folder gone since is still one clear DataError (from the folder
        dataset)."""
        packed = open_packed(self, bin_name, split, transform)
        if packed is not None:
            return packed
        return BinSplitDataset(self.root, bin_name, split, self.classes, transform, fix_hint=self.fix_hint)


def open_dataset(name: str, data_root: str | Path | None = None) -> DatasetHandle:
    """Resolve a registered dataset's folder and class list; error early if it is not built."""
    info = get_dataset(name)
    root = Path(data_root).expanduser().resolve() if data_root else info.default_root()
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} for '{info.name}' does not exist. Build it with: "
                        f"{info.build_command()} (or pass --data_root to the dataset's folder).")
    card = read_card(root)
    if card:  # the built dataset is its card: its facts win over the registry's (kept for schema-1 cards)
        info = dataclasses.replace(info, **card_facts(card, root / CARD_NAME))
    return DatasetHandle(info=info, root=root, classes=list(info.classes), bins=list(info.bins), card=card)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """Deterministic shuffling from ``seed``; persistent workers when workers are used."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers, generator=generator,
        drop_last=drop_last and len(dataset) > batch_size, pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def split_loader(handle: DatasetHandle, bin_name: str, split: str, data_cfg: DataConfig, *, batch_size: int,
                 num_workers: int = 0, seed: int = 0, train: bool | None = None) -> DataLoader:
    """Loader for one bin's split; train transforms and shuffling for the train split unless told otherwise."""
    is_train = (split == "train") if train is None else train
    ds = handle.split(bin_name, split, make_transform(data_cfg, is_train))
    return split_dataset_loader(ds, batch_size=batch_size, train=is_train, num_workers=num_workers, seed=seed)


def split_dataset_loader(ds: Dataset, *, batch_size: int, train: bool, num_workers: int = 0,
                         seed: int = 0) -> DataLoader:
    """Loader for one split's dataset (possibly a label budget's subsample of it)."""
    # A training batch of a single image breaks BatchNorm in train mode: drop a last batch of exactly one.
    return make_loader(ds, batch_size=batch_size, train=train, num_workers=num_workers, seed=seed,
                       drop_last=train and len(ds) % batch_size == 1)

"""The dataset card: a machine-readable description of a preprocessed dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..utils.io import read_json, write_json
from .splits import SPLITS

CARD_NAME = "dataset_card.json"
# 2: the card holds what reading the dataset needs (bin_order, image_size, hflip, example_group), for built-in
# datasets as for imported ones; cards of schema 1 lack some of them and fall back to the registry's entry.
CARD_SCHEMA = 2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def file_list_checksum(relative_paths: Iterable[str]) -> str:
    """sha256 of the sorted relative paths (one per line): identifies a split's exact file list."""
    h = hashlib.sha256()
    for rel in sorted(relative_paths):
        h.update(rel.encode("utf-8") + b"\n")
    return h.hexdigest()


def list_images(folder: Path) -> list[Path]:
    """Sorted image files directly under ``folder`` (extensions matched case-insensitively)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def split_summary(root: Path, bin_name: str, split: str, classes: Iterable[str]) -> dict[str, Any]:
    """Counts per class and the file-list checksum of ``root/bin/split`` as it is on disk."""
    per_class: dict[str, int] = {}
    rels: list[str] = []
    for cls in classes:
        folder = root / bin_name / split / cls
        files = list_images(folder) if folder.is_dir() else []
        per_class[cls] = len(files)
        rels.extend(f"{bin_name}/{split}/{cls}/{p.name}" for p in files)
    return {"count": sum(per_class.values()), "per_class": per_class, "checksum": file_list_checksum(rels)}


def card_fingerprint(card: dict[str, Any] | None) -> str | None:
    """A short hash of what a model trained on this build saw: classes, bins and every split's file list
    (None without a card). A re-import with other data, bins or seed changes it."""
    if not card or not card.get("bins"):
        return None
    h = hashlib.sha256(repr(card.get("classes")).encode())
    for b, entry in card["bins"].items():
        for split, summary in sorted((entry.get("splits") or {}).items()):
            h.update(f"{b}/{split}/{summary.get('checksum')}".encode())
    return h.hexdigest()[:16]


def build_card(root: Path, *, dataset: str, classes: list[str], bins: list[str], seed: int,
               image_size: int | None = None, hflip: bool | None = None, example_group: str | None = None,
               extra: dict[str, Any] | None = None, bin_extra: dict[str, dict] | None = None) -> dict[str, Any]:
    """The card of the dataset built under ``root``: the facts every reader takes from it (classes, bins in
    time order, training image size, whether horizontal flips keep the meaning, which images render one
    example), each split's counts and file-list checksum, and the builder's ``extra`` details."""
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA,
        "dataset": dataset,
        "classes": list(classes),
        "label_order": {c: i for i, c in enumerate(classes)},
        "bin_order": list(bins),
        "bins": {},
        "seed": seed,
        "built_with": f"multisource {__version__}",
    }
    for key, value in (("image_size", image_size), ("hflip", hflip), ("example_group", example_group)):
        if value is not None:
            card[key] = value
    for b in bins:
        entry: dict[str, Any] = {"splits": {s: split_summary(root, b, s, classes) for s in SPLITS}}
        entry.update((bin_extra or {}).get(b, {}))
        card["bins"][b] = entry
    card.update(extra or {})
    return card


def write_card(root: Path, card: dict[str, Any]) -> Path:
    return write_json(root / CARD_NAME, card)


def read_card(root: Path) -> dict[str, Any] | None:
    path = Path(root) / CARD_NAME
    if not path.is_file():
        return None
    try:
        card = read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a valid dataset card ({type(exc).__name__}: {str(exc)[:80]}); rebuild the "
                         "dataset with its preprocessing script (--overwrite) or restore the file.") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path} is not a valid dataset card (a JSON object is expected); rebuild the dataset.")
    return card

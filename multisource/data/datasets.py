"""The dataset registry (how each built-in dataset is built and found) and the dataset cards (what a built
dataset is).

A built dataset is its card: its ``dataset_card.json`` says its classes, bins in time order, training image
size, whether flips keep an image's meaning and which images render one example (:func:`card_facts`), for
built-in datasets as for imported ones, and every reader takes those facts from it. A registered entry says
them too, for what happens before a build (a sweep's targets, a builder's input) and for folders built before
cards held them (card schema 1). ``get_dataset(PATH)`` reads the card of a preprocessed folder, so no code edit
is needed to use a new dataset.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import DATASETS_DIR, UnsafeName, name_problem, safe_name
from ..registry import Registry
from .card import CARD_NAME, read_card


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    dir_name: str
    bins: tuple[str, ...]
    classes: tuple[str, ...]
    image_size: int = 224
    bin_flag: str = "bin"  # the paper's flag name for a bin (--year_name, --subset_name)
    training_dir: str = ""  # the paper's baseline_training/<dir>/ for its wrapper scripts (default: the name)
    preprocess_script: str = ""
    hflip: bool = True  # horizontal flip is a valid augmentation (not for digits)
    description: str = ""
    extra: dict = field(default_factory=dict)
    root: Path | None = None  # set for a dataset opened from its card (--dataset PATH)
    # A regular expression on an image's file stem whose first group names the underlying example it renders
    # (several renderings of one test digit are not independent: the bootstrap resamples them together);
    # empty: every image is its own example.
    example_group: str = ""

    @property
    def scripts_dir(self) -> str:
        return self.training_dir or self.name

    @property
    def key(self) -> str:
        """What a config stores to find this dataset again: the registered name, or the card's folder."""
        return str(self.root) if self.root is not None else self.name

    def default_root(self) -> Path:
        return self.root if self.root is not None else DATASETS_DIR / self.dir_name

    def build_command(self) -> str:
        return f"python preprocessing/{self.preprocess_script}"


DATASETS: Registry[DatasetInfo] = Registry("dataset")

CLEAR10_CLASSES = (
    "baseball", "bus", "camera", "cosplay", "dress", "hockey", "laptop", "racing", "soccer", "sweater",
)
CLEAR100_30_CLASSES = (
    "airplane", "aquarium", "baseball", "beer", "boat", "bookstore", "bowling_ball", "bridge", "bus", "camera",
    "castle", "chocolate", "coins", "diving", "field_hockey", "food_truck", "football", "guitar", "hair_salon",
    "helicopter", "horse_riding", "motorcycle", "pet_store", "racing_car", "shopping_mall", "skyscraper",
    "soccer", "stadium", "train", "video_game",
)
CLEAR_BINS = ("year_1-2", "year_3-4", "year_5-6", "year_7-8", "year_9-10")

DATASETS.register("drift_digits", DatasetInfo(
    name="drift_digits", dir_name="DriftDigits", bins=("era_1", "era_2", "era_3", "era_4", "era_5"),
    classes=tuple(str(d) for d in range(10)), image_size=32, bin_flag="era_name",
    preprocess_script="drift_digits_preprocessing.py", hflip=False, example_group=r"^(d\d+)_r\d+$",
    description="Embedded offline benchmark: scikit-learn digits rendered with an era-dependent style.",
), aliases=("driftdigits", "digits"))
DATASETS.register("clear10", DatasetInfo(
    name="clear10", dir_name="CLEAR10", bins=CLEAR_BINS, classes=CLEAR10_CLASSES, image_size=224,
    bin_flag="year_name", preprocess_script="clear10_preprocessing.py",
    description="CLEAR-10 (10 object classes, buckets 1-10 paired into five two-year bins).",
), aliases=("clear-10",))
DATASETS.register("clear100", DatasetInfo(
    name="clear100", dir_name="CLEAR100_30classes", bins=CLEAR_BINS, classes=CLEAR100_30_CLASSES,
    image_size=224, bin_flag="year_name", preprocess_script="clear100_preprocessing.py",
    training_dir="clear100_30classes",
    description="CLEAR-100, 30-class subset, buckets 1-10 paired into five two-year bins.",
), aliases=("clear-100", "clear100_30classes"))
DATASETS.register("yearbook", DatasetInfo(
    name="yearbook", dir_name="Yearbook_Decades", bins=("before_1950s", "1950s_1960s", "1970s_1980s",
                                                        "1990s_and_later"),
    classes=("F", "M"), image_size=224, bin_flag="subset_name", preprocess_script="yearbook_preprocessing.py",
    description="Yearbook portraits 1905-2013 in four periods; binary gender classification.",
), aliases=("yearbook_decades",))


def _looks_like_path(name: str) -> bool:
    return os.sep in name or name.startswith((".", "~")) or Path(name).expanduser().is_dir()


_CARD_CACHE: dict[tuple[str, int], DatasetInfo] = {}


def dataset_from_card(folder: str | os.PathLike) -> DatasetInfo:
    """The dataset described by ``folder/dataset_card.json``: a built-in one (its registered entry, rooted
    there) or an imported one (name, bins in time order, classes, image size from the card)."""
    root = Path(folder).expanduser().resolve()
    card_path = root / CARD_NAME
    if not card_path.is_file():
        raise KeyError(f"{root} has no {CARD_NAME}, so it is not a dataset; import your images with python "
                       "preprocessing/import_dataset.py (--table or --folder), or pass a registered dataset "
                       f"({', '.join(DATASETS.list())}).")
    cache_key = (str(card_path), card_path.stat().st_mtime_ns)
    if cache_key in _CARD_CACHE:
        return _CARD_CACHE[cache_key]
    card = read_card(root) or {}
    name = str(card.get("dataset") or "")
    if name in DATASETS:
        info = dataclasses.replace(DATASETS.get(name), root=root, **card_facts(card, card_path))
    else:
        facts = card_facts(card, card_path)
        if not name or not facts.get("bins") or not facts.get("classes"):
            raise ValueError(f"{card_path} lacks 'dataset', 'bins' or 'classes'; re-import the dataset "
                             "(python preprocessing/import_dataset.py ... --overwrite).")
        safe_name(name, f"{card_path}: dataset name", _card_fix(card_path))
        info = DatasetInfo(**{"image_size": 224, **facts}, name=name, dir_name=root.name,
                           preprocess_script="import_dataset.py", root=root,
                           description=f"Imported dataset ({card.get('binning', 'named bins')}).")
    _CARD_CACHE[cache_key] = info
    return info


def _card_fix(card_path: Path) -> str:
    return f"fix {card_path} or re-import the dataset (python preprocessing/import_dataset.py ... --overwrite)"


def card_facts(card: dict, card_path: Path) -> dict:
    """The facts a reader takes from a dataset's card, as DatasetInfo fields (those the card states): classes,
    bins in time order, image size, hflip and example group. Each is checked here, once, where it is read: a
    hand-edited or hostile card is one clear error naming the file."""
    facts: dict = {}
    fix = _card_fix(card_path)
    bins = card.get("bin_order") or list(card.get("bins") or {})
    classes = card.get("classes")
    if bins or classes:
        check_card_names(card_path, card.get("dataset") or "dataset", list(bins) if isinstance(bins, tuple) else bins,
                         classes if classes is not None else [])
    if bins:
        facts["bins"] = tuple(bins)
    if classes:
        facts["classes"] = tuple(classes)
    size = card.get("image_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 8192:
            raise ValueError(f"{card_path}: image_size {size!r} is not a whole number of pixels in 8..8192; {fix}.")
        facts["image_size"] = size
    if card.get("hflip") is not None:
        if not isinstance(card["hflip"], bool):
            raise ValueError(f"{card_path}: hflip {card['hflip']!r} is not true or false; {fix}.")
        facts["hflip"] = card["hflip"]
    group = card.get("example_group")
    if group is not None:
        try:
            if not isinstance(group, str) or (group and re.compile(group).groups < 1):
                raise re.error("no group")
        except re.error:
            raise ValueError(f"{card_path}: example_group {group!r} is not a regular expression with a group; "
                             f"{fix}.") from None
        facts["example_group"] = group
    return facts


def check_card_names(card_path: Path, name: object, bins: object, classes: object) -> None:
    """A card's dataset name, bins and classes become folder names (results/<name>/..., <root>/<bin>/...): each must
    be one plain name, or a hand-edited or hostile card could write or read outside the chosen folders."""
    fix = _card_fix(card_path)
    if not isinstance(bins, list) or not isinstance(classes, list):
        raise ValueError(f"{card_path}: 'bins' and 'classes' must be lists of names; {fix}.")
    safe_name(name, f"{card_path}: dataset name", fix)
    for b in bins:
        problem = name_problem(b, bin_name=True)
        if problem:
            raise UnsafeName(f"{card_path}: bin {b!r} cannot be a folder name ({problem}); {fix}.")
    for c in classes:
        safe_name(c, f"{card_path}: class", fix)


def get_dataset(name: str) -> DatasetInfo:
    """A registered dataset by name or alias, or the dataset in a folder with a dataset card."""
    if name in DATASETS:
        return DATASETS.get(name)
    if _looks_like_path(str(name)):
        return dataset_from_card(name)
    try:
        return DATASETS.get(name)
    except KeyError as exc:
        raise KeyError(f"{exc.args[0][:-1]}, or the folder of a dataset with a {CARD_NAME} (e.g. "
                       "datasets/MyData).") from None


def list_datasets() -> list[str]:
    return DATASETS.list()

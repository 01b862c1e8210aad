"""Build the Yearbook dataset (Ginosar et al.) in four periods from its raw portraits (SPEC 2.3).

Raw layout: ``faces_aligned_small_mirrored_co_aligned_cropped_cleaned/{M,F}/<year>_<rest>.png``. The same
file name can occur in both ``M/`` and ``F/``, so every output file is named ``<gender>_<original name>``
and nothing is overwritten. Files whose name does not start with a 4-digit year and ``_`` cannot be
placed in a period; they are skipped and listed in the card, as are images that do not decode.

Labels (``--label``):

* ``gender`` (default, the paper's task): classes ``F``, ``M``; strata are period x gender.
* ``decade``: what the released code did, offered as an option only. Classes ``earlier_decade`` /
  ``later_decade``: a portrait is ``earlier_decade`` when its year is before its period's boundary year
  (``DECADE_BOUNDARIES``): 1930 for ``before_1950s`` (1900s-1920s vs 1930s-1940s: its five decades split
  after the median one), 1960, 1980, and 2000 for ``1990s_and_later`` (the 1990s vs the 2000s and later).
  Strata are period x decade class.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...config import check_choice
from ..card import IMAGE_EXTENSIONS, build_card, write_card
from ..datasets import get_dataset
from ..splits import split_stratum
from .raw import (Candidate, Placement, RawDataError, building, check_unique, copy_placements, default_workers,
                  make_layout, small_data_warnings, summarize_skipped, verify_images, write_manifests)

log = logging.getLogger(__name__)
RAW_FOLDER = "faces_aligned_small_mirrored_co_aligned_cropped_cleaned"
GENDERS = ("F", "M")
# (bin, first year included or None, first year excluded or None), in chronological order
PERIODS = (("before_1950s", None, 1950), ("1950s_1960s", 1950, 1970), ("1970s_1980s", 1970, 1990),
           ("1990s_and_later", 1990, None))
DECADE_BOUNDARIES = {"before_1950s": 1930, "1950s_1960s": 1960, "1970s_1980s": 1980, "1990s_and_later": 2000}
DECADE_CLASSES = ("earlier_decade", "later_decade")
LABELS = ("gender", "decade")
_YEAR = re.compile(r"^(\d{4})_")
YEAR_RANGE = (1900, 2100)  # a portrait year outside it is a misnamed file, not a time stamp


def period_of(year: int) -> str:
    for name, lo, hi in PERIODS:
        if (lo is None or year >= lo) and (hi is None or year < hi):
            return name
    raise AssertionError(year)  # PERIODS cover every year


def label_of(year: int, gender: str, label: str) -> str:
    if label == "gender":
        return gender
    return DECADE_CLASSES[0] if year < DECADE_BOUNDARIES[period_of(year)] else DECADE_CLASSES[1]


@dataclass
class YearbookSettings:
    """What a Yearbook build is asked for besides the shared flags (its command's own flags)."""

    label: str = field(default="gender", metadata={
        "help": "gender (F/M, the paper's task) or decade (earlier/later decade within the period, what the "
                "released code did)", "choices": LABELS})

    def __post_init__(self) -> None:
        check_choice(self, "label", LABELS)


def classes_for(label: str) -> list[str]:
    if label not in LABELS:
        raise ValueError(f"--label must be one of {', '.join(LABELS)}, got {label!r}.")
    return list(GENDERS if label == "gender" else DECADE_CLASSES)


def missing_raw_message(where: Path, problem: str) -> str:
    return (f"Yearbook raw data not found: {problem}. Download the Yearbook portraits of Ginosar et al. "
            f"(https://people.eecs.berkeley.edu/~shiry/projects/yearbooks/yearbooks.html), extract the {RAW_FOLDER}/ "
            f"folder (with M/ and F/ inside) into {where} or pass --source_dir to it.")


def locate_yearbook_root(source_dir: Path) -> Path:
    """The folder holding ``M/`` and ``F/``: ``source_dir`` itself or one sub-folder below it."""
    source_dir = Path(source_dir).expanduser().resolve()
    if not source_dir.is_dir():
        raise RawDataError(missing_raw_message(source_dir, f"{source_dir} does not exist"))

    def has_genders(p: Path) -> bool:
        return all((p / g).is_dir() for g in GENDERS)

    if has_genders(source_dir):
        return source_dir
    found = sorted(p for p in source_dir.iterdir() if p.is_dir() and has_genders(p))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise RawDataError(f"Several Yearbook folders under {source_dir}: {[str(p) for p in found]}; pass the one "
                           "to use with --source_dir.")
    for p in [source_dir] + sorted(q for q in source_dir.iterdir() if q.is_dir()):
        present = [g for g in GENDERS if (p / g).is_dir()]
        if present:  # half a download: say which folder is missing, not that both are
            missing = [g for g in GENDERS if g not in present]
            raise RawDataError(f"{p} has {present[0]}/ but no {missing[0]}/ folder; the Yearbook download holds both "
                               f"M/ and F/: extract {RAW_FOLDER}/ completely (or pass --source_dir to a full copy).")
    raise RawDataError(missing_raw_message(source_dir, f"no M/ and F/ folders in {source_dir}"))


def scan(root: Path) -> tuple[list[tuple[Candidate, str, int]], list[dict]]:
    """((candidate, gender, year) for every dated image, skipped records for undatable names)."""
    dated: list[tuple[Candidate, str, int]] = []
    skipped: list[dict] = []
    for gender in GENDERS:
        for p in sorted((root / gender).iterdir()):
            if not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = f"{gender}/{p.name}"
            m = _YEAR.match(p.name)
            if m is None:
                skipped.append({"path": rel, "reason": "file name does not start with a 4-digit year and '_'",
                                "bin": None})
                continue
            year = int(m.group(1))
            if not YEAR_RANGE[0] <= year <= YEAR_RANGE[1]:
                skipped.append({"path": rel, "reason": f"year {year} is outside {YEAR_RANGE[0]}-{YEAR_RANGE[1]}",
                                "bin": None})
                continue
            dated.append((Candidate(p, rel), gender, year))
    return dated, skipped


def plan(dated: list[tuple[Candidate, str, int]], valid: set[str], label: str, classes: list[str],
         seed: int) -> list[Placement]:
    """Split each period x class stratum (sorted by ``<gender>/<name>``) and name files ``<gender>_<name>``."""
    strata: dict[tuple[str, str], list[tuple[Candidate, str, int]]] = {}
    for c, gender, year in dated:
        if c.rel in valid:
            strata.setdefault((period_of(year), label_of(year, gender, label)), []).append((c, gender, year))
    placements: list[Placement] = []
    for (bin_name, cls), items in sorted(strata.items()):
        items.sort(key=lambda t: t[0].rel)
        for split, chosen in split_stratum(items, seed, stratum=f"{bin_name}/{cls}").items():
            for c, gender, year in chosen:
                placements.append(Placement(c.path, bin_name, split, cls, f"{gender}_{c.path.name}", {
                    "label": classes.index(cls), "gender": gender, "year": year, "source": c.rel}))
    return placements


def bin_details(bins: list[str], placements: list[Placement], skipped: list[dict]) -> dict[str, dict]:
    skipped_counts = summarize_skipped(skipped, bins)
    out: dict[str, dict] = {}
    for bin_name, lo, hi in PERIODS:
        mine = [p for p in placements if p.bin == bin_name]
        years = Counter(p.record["year"] for p in mine)
        out[bin_name] = {
            "period": {"first_year": lo, "last_year": hi - 1 if hi else None},
            "source_years": {"min": min(years) if years else None, "max": max(years) if years else None,
                             "per_year": {str(y): years[y] for y in sorted(years)}},
            "per_gender": {g: sum(1 for p in mine if p.record["gender"] == g) for g in GENDERS},
            "skipped_count": skipped_counts[bin_name],
            "manifest": f"{bin_name}/manifest.jsonl",
        }
    return out


def build_yearbook(source_dir: Path, output_dir: Path, *, label: str = "gender", seed: int = 42,
                   workers: int | None = None, overwrite: bool = False, cache_size: int = 0,
                   progress: bool = True) -> dict:
    """Build the four Yearbook periods from the raw portraits into ``output_dir``; returns the card."""
    info = get_dataset("yearbook")
    classes = classes_for(label)
    bins = list(info.bins)
    assert bins == [p[0] for p in PERIODS], "the registry's yearbook bins and PERIODS disagree"
    workers = workers or default_workers()
    root = locate_yearbook_root(Path(source_dir))
    dated, skipped = scan(root)
    if not dated:
        raise RawDataError(missing_raw_message(root, f"no dated portraits (<year>_*.png) in {root}/M or {root}/F"))
    with building(Path(output_dir), overwrite=overwrite, source_dir=root) as tmp:
        valid, unreadable = verify_images([c for c, _, _ in dated], workers=workers, progress=progress)
        year_of = {c.rel: y for c, _, y in dated}
        skipped += [{**s, "bin": period_of(year_of[s["path"]])} for s in unreadable]
        placements = plan(dated, {c.rel for c in valid}, label, classes, seed)
        check_unique(placements)
        make_layout(tmp, bins, classes)
        copy_placements(tmp, placements, workers=workers, progress=progress)
        write_manifests(tmp, placements)
        extra = {
            "source": {"dataset": "Yearbook (Ginosar et al.)", "folder": RAW_FOLDER},
            "label": label,
            "periods": {name: {"first_year": lo, "last_year": hi - 1 if hi else None} for name, lo, hi in PERIODS},
            "split_rule": "per period x class, over the images that decode: shuffle with the seed (stratum "
                          "'<bin>/<class>'), train = floor(0.8 n), val = floor(0.1 n), test = rest",
            "file_naming": "<gender>_<original file name> (M/ and F/ may share names), bytes copied unchanged",
            "skipped_count": len(skipped),
            "skipped": sorted(skipped, key=lambda s: s["path"]),
            "warnings": small_data_warnings(placements, bins),
        }
        for w in extra["warnings"]:
            log.warning("%s", w)
        if label == "decade":
            extra["decade_boundaries"] = {
                b: {"earlier_decade": f"year < {y}", "later_decade": f"year >= {y}"}
                for b, y in DECADE_BOUNDARIES.items()}
        card = build_card(tmp, dataset=info.name, classes=classes, bins=bins, seed=seed,
                          image_size=info.image_size, hflip=info.hflip, example_group=info.example_group,
                          extra=extra, bin_extra=bin_details(bins, placements, skipped))
        write_card(tmp, card)
        if cache_size:
            from .pack import pack_dataset  # torchvision: only when a cache is asked for (--help stays light)

            pack_dataset(tmp, cache_size, workers=workers, progress=progress)
    return card

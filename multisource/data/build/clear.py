"""Build CLEAR-10 and the 30-class CLEAR-100 subset from the CLEAR benchmark's raw download (SPEC 2.1-2.2).

Raw layout (the "train_image_only" release)::

    <raw>/labeled_images/<bucket>/<class>/<image>     buckets are integer folders (1..10; CLEAR-100 has 11)
    <raw>/labeled_metadata/<bucket>/<class>.json      per-image metadata (optional)
    <raw>/class_names.txt  or  <raw>/../class_names.txt

Rules: listings are sorted; the 10 (or 30) declared classes are kept (CLEAR-10's ``BACKGROUND`` and
CLEAR-100's other 70 classes are not); each bucket's class folder is split on its own with
``split_stratum`` (stratum ``"<bucket>/<class>"``, over the images that decode; unreadable ones are skipped
and listed in the card), then buckets 2k-1 and 2k are unioned into bin ``year_<2k-1>-<2k>``. Files are
copied byte for byte as ``b<bucket:02d>_<original name>``; each bin's ``manifest.jsonl`` keeps the
original path, bucket, split, class and the image's metadata entry (or null).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..card import build_card, list_images, write_card
from ..datasets import DatasetInfo, get_dataset
from ..splits import SPLITS, split_stratum
from .raw import (Candidate, Placement, RawDataError, building, check_unique, copy_placements, default_workers,
                  make_layout, small_data_warnings, summarize_skipped, verify_images, write_manifests)

log = logging.getLogger(__name__)
TITLES = {"clear10": "CLEAR-10", "clear100": "CLEAR-100"}
SPLIT_RULE = ("per raw bucket x class, over the images that decode: shuffle with the seed (stratum "
              "'<bucket>/<class>'), train = floor(0.8 n), val = floor(0.1 n), test = rest; the two buckets of a "
              "bin are then unioned")


def _norm(name: str) -> str:
    """Class names compare case-insensitively, with spaces and hyphens as underscores."""
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def bin_buckets(bin_name: str) -> list[int]:
    """``year_3-4`` -> [3, 4]."""
    m = re.fullmatch(r"year_(\d+)-(\d+)", bin_name)
    if not m:
        raise ValueError(f"CLEAR bin names look like year_1-2, got {bin_name!r}.")
    return list(range(int(m.group(1)), int(m.group(2)) + 1))


def missing_raw_message(name: str, where: Path, problem: str) -> str:
    title = TITLES[name]
    return (f"{title} raw data not found: {problem}. Download the {title} 'train_image_only' release of the CLEAR "
            f"benchmark (https://clear-benchmark.github.io), extract it to {where} (so that {where}/labeled_images/"
            f"<bucket>/<class>/ exists) or pass --source_dir to the extracted folder.")


def locate_clear_root(source_dir: Path, name: str) -> Path:
    """The folder holding ``labeled_images/``: ``source_dir`` itself or one sub-folder below it."""
    source_dir = Path(source_dir).expanduser().resolve()
    if not source_dir.is_dir():
        raise RawDataError(missing_raw_message(name, source_dir, f"{source_dir} does not exist"))
    if (source_dir / "labeled_images").is_dir():
        return source_dir
    found = sorted(p.parent for p in source_dir.glob("*/labeled_images") if p.is_dir())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise RawDataError(f"Several CLEAR releases under {source_dir}: {[str(p) for p in found]}; pass the one "
                           "to use with --source_dir.")
    raise RawDataError(missing_raw_message(name, source_dir, f"no labeled_images/ folder in {source_dir}"))


def numeric_folders(folder: Path) -> dict[int, Path]:
    """Integer-named sub-folders (``1``, ``2``, ... ``11``), keyed by their number."""
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.is_dir() and p.name.isdigit():
            if int(p.name) in out:
                raise RawDataError(f"Bucket folders {out[int(p.name)]} and {p} have the same number; keep one.")
            out[int(p.name)] = p
    return out


def read_class_names(root: Path) -> tuple[list[str] | None, str | None]:
    """Class names from ``class_names.txt`` in ``root`` or one level up (None if there is none)."""
    for path, label in ((root / "class_names.txt", "class_names.txt"),
                        (root.parent / "class_names.txt", "../class_names.txt")):
        if path.is_file():
            names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            return names, label
    return None, None


def match_classes(info: DatasetInfo, buckets: dict[int, Path], needed: list[int], root: Path) -> dict[str, str]:
    """Declared class -> raw folder name; a class absent from any needed bucket is an error naming it."""
    title = TITLES[info.name]
    missing_buckets = [b for b in needed if b not in buckets]
    if missing_buckets:
        raise RawDataError(f"{title} raw copy at {root} lacks bucket folder(s) {missing_buckets} under "
                           "labeled_images/; download the complete train_image_only release.")
    mapping: dict[str, str] = {}
    missing: dict[str, list[int]] = {}
    for cls in info.classes:
        for b in needed:
            folders = {_norm(p.name): p.name for p in sorted(buckets[b].iterdir()) if p.is_dir()}
            if _norm(cls) in folders:
                mapping.setdefault(cls, folders[_norm(cls)])
            else:
                missing.setdefault(cls, []).append(b)
    if missing:
        detail = "; ".join(f"{c} (bucket(s) {bs})" for c, bs in missing.items())
        raise RawDataError(f"{title} raw copy at {root} is missing class(es) {sorted(missing)}: {detail}. "
                           f"{title} needs exactly these classes: {', '.join(info.classes)}.")
    return mapping


def _metadata_index(data: Any) -> dict[str, Any]:
    """Index a metadata JSON by every key that can name an image: its key/ID and the basenames of paths."""
    index: dict[str, Any] = {}
    entries = list(data.items()) if isinstance(data, dict) else [(None, e) for e in data] if isinstance(data, list) else []
    for key, entry in entries:
        if key is not None:
            index.setdefault(str(key), entry)
        if isinstance(entry, dict):
            for k, v in entry.items():
                if isinstance(v, (str, int)) and (k.lower() in ("id", "image_id", "img_id") or
                                                  str(v).lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".gif"))):
                    index.setdefault(Path(str(v)).name, entry)
                    index.setdefault(Path(str(v)).stem, entry)
    return index


def load_metadata(root: Path, bucket_name: str, raw_cls: str) -> tuple[dict[str, Any], str | None]:
    """(index, problem) for ``labeled_metadata/<bucket>/<class>.json``; missing or broken files are not fatal."""
    path = root / "labeled_metadata" / bucket_name / f"{raw_cls}.json"
    if not path.is_file():
        return {}, None
    try:
        return _metadata_index(json.loads(path.read_text(encoding="utf-8"))), None
    except (OSError, ValueError) as exc:
        log.warning("Ignoring unreadable metadata %s (%s)", path, exc)
        return {}, f"labeled_metadata/{bucket_name}/{raw_cls}.json: {type(exc).__name__}"


@dataclass
class _Scan:
    candidates: dict[tuple[int, str], list[Candidate]]  # (bucket, declared class) -> sorted raw images
    bucket_names: dict[int, str]


def scan(root: Path, info: DatasetInfo, bins: list[str]) -> tuple[_Scan, dict[str, str], list[int]]:
    buckets = numeric_folders(root / "labeled_images")
    needed = [b for bin_name in bins for b in bin_buckets(bin_name)]
    mapping = match_classes(info, buckets, needed, root)
    candidates: dict[tuple[int, str], list[Candidate]] = {}
    for b in needed:
        for cls in info.classes:
            folder = buckets[b] / mapping[cls]
            candidates[(b, cls)] = [Candidate(p, p.relative_to(root).as_posix()) for p in list_images(folder)]
    unused = sorted(set(buckets) - set(needed))
    return _Scan(candidates, {b: buckets[b].name for b in buckets}), mapping, unused


def plan(root: Path, info: DatasetInfo, bins: list[str], found: _Scan, valid: set[str], mapping: dict[str, str],
         seed: int) -> tuple[list[Placement], list[str]]:
    """Split each bucket x class over its readable images and place them in the bucket's bin."""
    placements: list[Placement] = []
    meta_problems: list[str] = []
    for bin_name in bins:
        for b in bin_buckets(bin_name):
            for label, cls in enumerate(info.classes):
                items = [c for c in found.candidates[(b, cls)] if c.rel in valid]
                meta, problem = load_metadata(root, found.bucket_names[b], mapping[cls])
                meta_problems += [problem] if problem else []
                for split, chosen in split_stratum(items, seed, stratum=f"{b}/{cls}").items():
                    for c in chosen:
                        entry = meta.get(c.path.name, meta.get(c.path.stem))
                        placements.append(Placement(c.path, bin_name, split, cls, f"b{b:02d}_{c.path.name}", {
                            "label": label, "bucket": b, "source": c.rel, "metadata": entry}))
    return placements, meta_problems


def bin_details(bins: list[str], placements: list[Placement], skipped: list[dict]) -> dict[str, dict]:
    per_bin_skipped = summarize_skipped(skipped, bins)
    out: dict[str, dict] = {}
    for bin_name in bins:
        buckets = bin_buckets(bin_name)
        mine = [p for p in placements if p.bin == bin_name]
        out[bin_name] = {
            "source_buckets": buckets,
            "source_years": buckets,  # CLEAR counts its time buckets as years (hence bin names year_1-2, ...)
            "per_bucket": {str(b): {s: sum(1 for p in mine if p.record["bucket"] == b and p.split == s)
                                    for s in SPLITS} for b in buckets},
            "metadata_found": sum(1 for p in mine if p.record["metadata"] is not None),
            "skipped_count": per_bin_skipped[bin_name],
            "manifest": f"{bin_name}/manifest.jsonl",
        }
    return out


def build_clear(name: str, source_dir: Path, output_dir: Path, *, seed: int = 42, workers: int | None = None,
                overwrite: bool = False, cache_size: int = 0, progress: bool = True) -> dict:
    """Build ``clear10`` or ``clear100`` from the raw download into ``output_dir``; returns the card."""
    info = get_dataset(name)
    if info.name not in TITLES:
        raise ValueError(f"build_clear builds clear10 or clear100, not {name!r}.")
    workers = workers or default_workers()
    root = locate_clear_root(Path(source_dir), info.name)
    class_names, class_file = read_class_names(root)
    bins = list(info.bins)
    found, mapping, unused = scan(root, info, bins)
    bucket_of = {c.rel: b for (b, _), cs in found.candidates.items() for c in cs}
    all_candidates = sorted((c for cs in found.candidates.values() for c in cs), key=lambda c: c.rel)
    log.info("%s: %d candidate images in %d buckets x %d classes", TITLES[info.name], len(all_candidates),
             len(set(bucket_of.values())), len(info.classes))
    with building(Path(output_dir), overwrite=overwrite, source_dir=root) as tmp:
        valid, skipped = verify_images(all_candidates, workers=workers, progress=progress)
        for s in skipped:
            b = bucket_of[s["path"]]
            s["bin"] = next(x for x in bins if b in bin_buckets(x))
        placements, meta_problems = plan(root, info, bins, found, {c.rel for c in valid}, mapping, seed)
        check_unique(placements)
        make_layout(tmp, bins, list(info.classes))
        copy_placements(tmp, placements, workers=workers, progress=progress)
        write_manifests(tmp, placements)
        raw_classes = sorted({n for n in class_names or []} | {p.name for b in numeric_folders(
            root / "labeled_images").values() for p in b.iterdir() if p.is_dir()})
        extra = {
            "source": {"dataset": TITLES[info.name], "release": "train_image_only", "buckets_used":
                       sorted({b for x in bins for b in bin_buckets(x)}), "unused_buckets": unused,
                       "class_names_file": class_file, "raw_class_folders": mapping},
            "excluded_classes": [c for c in raw_classes if _norm(c) not in {_norm(k) for k in info.classes}],
            "split_rule": SPLIT_RULE,
            "file_naming": "b<bucket:02d>_<original file name>, bytes copied unchanged",
            "skipped_count": len(skipped),
            "skipped": sorted(skipped, key=lambda s: s["path"]),
            "metadata_problems": meta_problems,
            "warnings": small_data_warnings(placements, bins),
        }
        for w in extra["warnings"]:
            log.warning("%s", w)
        card = build_card(tmp, dataset=info.name, classes=list(info.classes), bins=bins, seed=seed,
                          image_size=info.image_size, hflip=info.hflip, example_group=info.example_group,
                          extra=extra, bin_extra=bin_details(bins, placements, skipped))
        write_card(tmp, card)
        if cache_size:
            from .pack import pack_dataset  # torchvision: only when a cache is asked for

            pack_dataset(tmp, cache_size, workers=workers, progress=progress)
    return card


def build_clear10(source_dir: Path, output_dir: Path, **options) -> dict:
    """CLEAR-10's builder, as its registry entry names it (``build_clear`` with the name)."""
    return build_clear("clear10", source_dir, output_dir, **options)


def build_clear100(source_dir: Path, output_dir: Path, **options) -> dict:
    """CLEAR-100's (30 classes) builder, as its registry entry names it (``build_clear`` with the name)."""
    return build_clear("clear100", source_dir, output_dir, **options)

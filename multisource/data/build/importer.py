"""Import the user's own time-stamped images, from a table or a folder tree, into the standard layout + card.

A table (CSV, TSV, Parquet or JSON Lines) has one row per image: its path (relative to ``image_root`` or
absolute), its label, and a time stamp or a bin name. A folder tree is ``<root>/<bin>/<class>/<image>``. Either
way the rows are binned (by time, or by the given bin names in the given order), every image is checked (it
exists and decodes; its content hash finds the same image in two bins), each bin x class stratum is split by
the rule every dataset uses, and the files are copied (or linked) into ``<bin>/{train,val,test}/<class>/``
with a per-bin manifest (time stamp and source row of every image) and a ``dataset_card.json`` that makes the
folder a dataset any command accepts (``--dataset PATH``). The dataset is built beside its final place and
moved in only when complete: a failure leaves nothing behind and never touches an existing dataset.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import shutil
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ...config import check_seed
from ...paths import UPSTREAM, name_problem
from ...utils.seed import derive_seed
from ..card import IMAGE_EXTENSIONS, build_card, write_card
from ..datasets import DATASETS
from ..splits import SPLITS, split_stratum
from .raw import (Placement, RawDataError, building, default_workers, make_layout, parallel_map, small_data_warnings,
                  write_manifests)
from .timebins import BinRule, assign_bins, natural_key, order_named_bins, parse_bin_rule, parse_timestamps

log = logging.getLogger(__name__)
LINKS = ("copy", "hardlink", "symlink")
MIN_STRATUM = 10  # the smallest stratum whose split has a train, a val and a test image (8/1/1)
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                 ".ndjson": "jsonl"}


@dataclass
class ImportConfig:
    """What to import and how to bin and split it (paths and parallelism are arguments of the builders)."""

    name: str = ""  # the dataset's name (results go under it); default: the output folder's name
    bin_by: str | None = None  # a time bin rule (timebins.RULES); None: the bin column / the folder tree's bins
    bins: tuple[str, ...] = ()  # bin order for named bins (default: sorted names)
    classes: tuple[str, ...] = ()  # label order (default: sorted; numerically when every label is a number)
    path_column: str = "path"
    label_column: str = "label"
    time_column: str = "timestamp"
    time_format: str = "auto"  # timebins.TIME_FORMATS: how the time column's numbers read (auto refuses guesses)
    bin_column: str = "bin"
    seed: int = 42
    link: str = "copy"
    strict: bool = False  # refuse missing or unreadable images instead of skipping and listing them
    drop_small: bool = False  # drop (and list) strata too small to split instead of refusing
    image_size: int | None = None  # the training size recorded in the card; None: the images' own (median) size
    # A pretraining pool for the tiny models (every source then starts from it): none, earliest (the earliest bin
    # becomes the pool: neither a source nor a target) or fraction:F (a stratified share F of every bin's images,
    # so the pool has seen every period).
    upstream: str = "none"
    hflip: bool = True  # horizontal flip is a valid augmentation for these images

    def __post_init__(self) -> None:
        self.bins = tuple(unicodedata.normalize("NFC", v) for v in self.bins)
        self.classes = tuple(unicodedata.normalize("NFC", v) for v in self.classes)
        if self.link not in LINKS:
            raise ValueError(f"--link {self.link!r} is not valid; choose one of {', '.join(LINKS)}.")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or not 8 <= self.image_size <= 8192):
            raise ValueError(f"--image_size must be a whole number of pixels in 8..8192, got {self.image_size!r}.")
        self.upstream_fraction = upstream_rule(self.upstream)
        check_seed(self)
        for flag, values in (("--bins", self.bins), ("--classes", self.classes)):
            if len(set(values)) != len(values):
                raise ValueError(f"{flag} names a value twice: {list(values)}.")
        self.rule: BinRule | None = parse_bin_rule(self.bin_by) if self.bin_by else None


def upstream_rule(text: str) -> float | None:
    """``--upstream``: None for none or earliest, F for fraction:F (0 < F <= 0.5)."""
    if text in ("none", "earliest"):
        return None
    kind, _, value = text.partition(":")
    try:
        fraction = float(value)
    except ValueError:
        fraction = float("nan")
    if kind != "fraction" or not 0 < fraction <= 0.5:
        raise ValueError(f"--upstream {text!r} is not valid; use none, earliest, or fraction:F with 0 < F <= 0.5 "
                         "(e.g. fraction:0.15).")
    return fraction


def split_off_upstream(rows: pd.DataFrame, bins: list[str], cfg: ImportConfig) -> list[str]:
    """Move the upstream pool's rows to bin ``upstream`` (in place); returns the bins that remain."""
    if cfg.upstream == "earliest":
        rows.loc[rows["bin"] == bins[0], "bin"] = UPSTREAM
        return bins[1:]
    if cfg.upstream_fraction is not None:
        for (b, cls), stratum in rows.groupby(["bin", "label"], sort=True):
            order = list(stratum.sort_values("source").index)
            random.Random(derive_seed(cfg.seed, "upstream", b, cls)).shuffle(order)
            rows.loc[order[:int(round(cfg.upstream_fraction * len(order)))], "bin"] = UPSTREAM
    return bins


def _nfc(values: pd.Series) -> pd.Series:
    """Class and bin names in one Unicode form (NFC): an accented name typed on one system and read from a
    folder on another (NFD) is one class, as it prints the same."""
    return values.map(lambda v: unicodedata.normalize("NFC", v))


def _check_names(values: pd.Series, rows: pd.Series, what: str, flag: str) -> None:
    seen: dict[str, str] = {}
    for value in sorted(set(values)):
        other = seen.setdefault(value.casefold(), value)
        if other != value:
            raise ValueError(f"{what}s {other!r} and {value!r} differ only in letter case, so they would share one "
                             f"folder on a case-insensitive file system; rename one of them ({flag}).")
    for value, row in zip(values, rows):
        problem = name_problem(value, bin_name=what.startswith("Bin"))
        if problem:
            raise ValueError(f"{what} {value!r} at row {row} cannot be a folder name ({problem}); rename it in the "
                             f"table (or pick another column with {flag}).")


# ---- reading the rows ------------------------------------------------------------------------------------

def read_table(path: Path) -> pd.DataFrame:
    """The table with every column as text (time stamps are parsed later, per column)."""
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"Cannot read {path}: unknown table format '{path.suffix}'; use .csv, .tsv, .parquet or "
                         ".jsonl.")
    if not path.is_file():
        raise FileNotFoundError(f"Table {path} does not exist; pass the path of your CSV / Parquet / JSON Lines "
                                "file with --table.")
    try:
        if fmt in ("csv", "tsv"):
            frame = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ValueError(f"Cannot read {path} as {fmt} ({type(exc).__name__}: {str(exc)[:120]}).") from None
    return frame


def _text(column: pd.Series) -> pd.Series:
    """Values as stripped text; missing values become ''."""
    return column.map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).strip())


def rows_from_table(frame: pd.DataFrame, cfg: ImportConfig, image_root: Path) -> pd.DataFrame:
    """Standard columns: row (1-based), path (absolute), source (as written), label, time, bin."""
    need = [cfg.path_column, cfg.label_column]
    flags = {cfg.path_column: "--path_column", cfg.label_column: "--label_column", cfg.time_column: "--time_column",
             cfg.bin_column: "--bin_column"}
    timed = cfg.rule is not None
    need.append(cfg.time_column if timed else cfg.bin_column)
    missing = [c for c in need if c not in frame.columns]
    if missing:
        hint = "" if timed else " (or bin by time with --bin_by year|quarter|month|years:N|edges:...|quantiles:N)"
        raise ValueError(f"The table has no column(s) {missing} (columns: {list(frame.columns)}); rename them with "
                         f"{', '.join(flags[c] for c in missing)}{hint}.")
    if frame.empty:
        raise ValueError("The table has no rows.")
    rows = pd.DataFrame({"row": range(1, len(frame) + 1), "source": _text(frame[cfg.path_column]).to_numpy(),
                         "label": _nfc(_text(frame[cfg.label_column])).to_numpy()})
    for col, what in (("source", "image path"), ("label", "label")):
        empty = rows[rows[col] == ""]
        if len(empty):
            raise ValueError(f"Empty {what} at row {int(empty['row'].iloc[0])} ({len(empty)} such rows); fill it "
                             "in or drop the row.")
    rows["path"] = [Path(s) if os.path.isabs(s) else image_root / s for s in rows["source"]]
    if cfg.time_column in frame.columns:
        rows["time"] = parse_timestamps(frame[cfg.time_column].reset_index(drop=True), cfg.time_column,
                                        cfg.time_format).to_numpy()
    else:
        rows["time"] = pd.NaT
    if not timed:
        rows["bin"] = _nfc(_text(frame[cfg.bin_column])).to_numpy()
        _check_names(rows["bin"], rows["row"], "Bin", "--bin_column")
    _check_names(rows["label"], rows["row"], "Label", "--label_column")
    resolved = pd.Series([str(p.resolve()) for p in rows["path"]])
    dup = resolved.duplicated(keep=False)
    if dup.any():
        first = rows["row"][dup].tolist()[:2]
        raise ValueError(f"Rows {first[0]} and {first[1]} name the same image ({rows['source'][dup].iloc[0]}); "
                         f"each image must appear once ({int(dup.sum())} rows are repeats); remove the repeats.")
    return rows


def rows_from_folder(root: Path) -> tuple[pd.DataFrame, int]:
    """Rows of a ``<root>/<bin>/<class>/<image>`` tree (sorted), and how many non-image files were ignored."""
    if not root.is_dir():
        raise FileNotFoundError(f"Folder {root} does not exist; pass the root of a <bin>/<class>/<image> tree "
                                "with --folder.")
    records, ignored = [], 0
    for bin_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        ignored += sum(1 for p in bin_dir.iterdir() if p.is_file())  # files beside the class folders
        for cls_dir in sorted(p for p in bin_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(cls_dir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    records.append({"source": f"{bin_dir.name}/{cls_dir.name}/{f.name}", "path": f,
                                    "label": cls_dir.name, "bin": bin_dir.name})
                else:  # other files, and anything in sub-folders of a class folder
                    ignored += 1 if f.is_file() else sum(1 for q in f.rglob("*") if q.is_file())
    if not records:
        raise ValueError(f"No images found in {root}: expected <bin>/<class>/<image> "
                         f"({', '.join(IMAGE_EXTENSIONS)}).")
    rows = pd.DataFrame(records)
    rows.insert(0, "row", range(1, len(rows) + 1))
    rows["time"] = pd.NaT
    rows["label"], rows["bin"] = _nfc(rows["label"]), _nfc(rows["bin"])
    _check_names(rows["label"], rows["row"], "Class folder", "renaming the folder")
    _check_names(rows["bin"], rows["row"], "Bin folder", "renaming the folder")
    return rows, ignored


# ---- bins, images, strata --------------------------------------------------------------------------------

def bin_rows(rows: pd.DataFrame, cfg: ImportConfig) -> list[dict[str, Any]]:
    """Set ``rows['bin']`` (time rules) and return the bins in time order with their time ranges."""
    if cfg.rule is not None:
        rows["bin"], bins = assign_bins(pd.Series(rows["time"]), cfg.rule)
        return bins
    order = order_named_bins(rows["bin"].tolist(), cfg.bins)
    out = []
    for name in order:
        times = pd.Series(rows.loc[rows["bin"] == name, "time"]).dropna()
        out.append({"name": name, "count": int((rows["bin"] == name).sum()),
                    "first": times.min().isoformat() if len(times) else None,
                    "last": times.max().isoformat() if len(times) else None})
    if not cfg.bins:
        log.info("Bins in natural name order: %s (pass --bins to give another order)", order)
    return out


def inspect_image(path: Path) -> tuple[str | None, str | None, tuple[int, int] | None]:
    """(problem, sha256 of the bytes, (width, height)): (None, digest, size) when the file exists, has an image
    extension the loaders read and fully decodes."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return (f"extension '{path.suffix}' is not one the loaders read ({', '.join(IMAGE_EXTENSIONS)}); convert "
                "the image"), None, None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "file not found", None, None
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc})", None, None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            size = img.convert("RGB").size
    except Exception as exc:  # any failure to decode means: the image is unusable; say why
        return f"not a readable image ({type(exc).__name__}: {str(exc)[:80]})", None, None
    return None, hashlib.sha256(data).hexdigest(), size


def image_sizes(sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """The images' size distribution, and the native training size: the median shorter side (what a resize of the
    shorter side to that size leaves unscaled for most images)."""
    w, h = np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])
    short = np.minimum(w, h)
    describe = lambda a: {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())}  # noqa: E731
    return {"width": describe(w), "height": describe(h), "shorter_side": describe(short),
            "native_size": min(8192, max(8, int(np.median(short))))}


def target_problems(placements: Sequence[Placement], bins: Sequence[str]) -> list[str]:
    """Bins that cannot be a target: a split with fewer than two classes measures nothing a classifier learned."""
    problems = []
    for b in bins:
        thin = [f"{s} has {n} class{'es' if n != 1 else ''}" for s in SPLITS
                if (n := len({p.cls for p in placements if p.bin == b and p.split == s})) < 2]
        if thin:
            problems.append(f"{b} ({', '.join(thin)})")
    return problems


def class_order(labels: Sequence[str], given: Sequence[str] = ()) -> list[str]:
    present = sorted(set(labels))
    if given:
        unknown = [c for c in present if c not in given]
        if unknown:
            raise ValueError(f"Labels {unknown} are in the data but not in --classes {list(given)}; list every "
                             "class (or leave --classes out).")
        return list(given)
    return sorted(present, key=natural_key)


def plan_strata(rows: pd.DataFrame, bins: list[str], classes: list[str], cfg: ImportConfig
                ) -> tuple[list[Placement], list[dict]]:
    """Split every bin x class stratum (rows sorted by their source path); strata under MIN_STRATUM images
    are refused, or dropped and listed with ``drop_small``."""
    small, placements = [], []
    for b in bins:
        for cls in classes:
            stratum = rows[(rows["bin"] == b) & (rows["label"] == cls)].sort_values("source")
            if 0 < len(stratum) < MIN_STRATUM:
                small.append({"bin": b, "class": cls, "images": len(stratum)})
                continue
            names = _output_names(stratum)
            records = list(stratum.itertuples(index=False))
            for split, chosen in split_stratum(records, cfg.seed, stratum=f"{b}/{cls}").items():
                for r in chosen:
                    time = None if pd.isna(r.time) else pd.Timestamp(r.time).isoformat()
                    placements.append(Placement(Path(r.path), b, split, cls, names[r.source], {
                        "label": classes.index(cls), "row": int(r.row), "source": r.source, "timestamp": time,
                        "sha256": r.sha256}))
    if small and not cfg.drop_small:
        listed = ", ".join(f"{s['bin']}/{s['class']} ({s['images']})" for s in small[:8])
        raise ValueError(f"{len(small)} bin x class stratum(s) have fewer than {MIN_STRATUM} images, too few for a "
                         f"train/val/test split: {listed}{' ...' if len(small) > 8 else ''}. Use wider bins "
                         "(e.g. --bin_by years:2), add images, or pass --drop_small to leave them out.")
    return placements, small


def _output_names(stratum: pd.DataFrame) -> dict[str, str]:
    """The source file's name, made unique within the stratum by a hash of its source path when needed."""
    base = {s: Path(s).name for s in stratum["source"]}
    counts = pd.Series(list(base.values())).str.lower().value_counts()
    out = {}
    for s, name in base.items():
        if counts[name.lower()] > 1:
            p = Path(name)
            name = f"{p.stem}_{hashlib.sha1(s.encode('utf-8')).hexdigest()[:10]}{p.suffix}"
        out[s] = name
    return out


def duplicate_report(placements: Sequence[Placement]) -> dict[str, list]:
    """The same image content in two bins (or two splits of one bin): a leak worth knowing about."""
    by_digest: dict[str, list[Placement]] = {}
    for p in placements:
        by_digest.setdefault(p.record["sha256"], []).append(p)
    cross_bin, cross_split = [], []
    for digest, group in sorted(by_digest.items()):
        if len(group) < 2:
            continue
        entry = {"sha256": digest, "images": sorted(f"{p.bin}/{p.rel}" for p in group)}
        if len({p.bin for p in group}) > 1:
            cross_bin.append(entry)
        elif len({p.split for p in group}) > 1:
            cross_split.append(entry)
    return {"across_bins": cross_bin, "across_splits": cross_split}


def place_files(root: Path, placements: Sequence[Placement], link: str, *, workers: int, progress: bool) -> None:
    for folder in sorted({root / p.bin / p.split / p.cls for p in placements}):
        folder.mkdir(parents=True, exist_ok=True)

    def place(p: Placement) -> None:
        dest = root / p.bin / p.rel
        if link == "copy":
            shutil.copyfile(p.src, dest)
        elif link == "symlink":
            os.symlink(p.src.resolve(), dest)
        else:
            try:
                os.link(p.src, dest)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot hard-link {p.src} into {root.parent} ({exc.strerror}); hard links "
                                         "need one file system: use --link copy or --link symlink") from None

    parallel_map(place, placements, workers=workers, desc=f"Placing images ({link})", progress=progress)


# ---- the whole import ------------------------------------------------------------------------------------

def dataset_name(cfg: ImportConfig, output_dir: Path) -> str:
    name = cfg.name or output_dir.name
    problem = name_problem(name)
    if problem:
        raise ValueError(f"Dataset name {name!r} cannot be a folder name ({problem}); pass --name.")
    if name in DATASETS:
        raise ValueError(f"Dataset name {name!r} is a built-in dataset's name, so results would mix with it; pass "
                         "--name with another name.")
    return name


def import_rows(rows: pd.DataFrame, output_dir: Path, cfg: ImportConfig, *, source: dict[str, Any],
                source_dir: Path | None = None, workers: int | None = None, overwrite: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Bin, check, split and place ``rows`` (standard columns) into ``output_dir``; returns the card."""
    output_dir = Path(output_dir).resolve()
    name = dataset_name(cfg, output_dir)
    workers = workers or default_workers()
    bins_meta = bin_rows(rows, cfg)
    with building(output_dir, overwrite=overwrite, source_dir=source_dir) as tmp:
        checked = parallel_map(inspect_image, list(rows["path"]), workers=workers, desc="Checking images",
                               progress=progress)
        rows["problem"] = [c[0] for c in checked]
        rows["sha256"] = [c[1] for c in checked]
        rows["size"] = [c[2] for c in checked]
        bad = rows[rows["problem"].notna()]
        skipped = [{"row": int(r.row), "path": r.source, "bin": r.bin, "reason": r.problem}
                   for r in bad.itertuples(index=False)]
        if skipped and cfg.strict:
            first = skipped[0]
            raise RawDataError(f"{len(skipped)} image(s) are missing or unreadable, e.g. row {first['row']} "
                               f"{first['path']}: {first['reason']}. Fix them, or drop --strict to skip and list "
                               "them in the card.")
        for s in skipped[:20]:
            log.warning("Skipping row %d %s: %s", s["row"], s["path"], s["reason"])
        good = rows[rows["problem"].isna()]
        if good.empty:
            raise RawDataError(f"None of the {len(rows)} images could be read (e.g. {skipped[0]['path']}: "
                               f"{skipped[0]['reason']}); check --image_root.")
        good = good.copy()
        bins = [b["name"] for b in bins_meta if (good["bin"] == b["name"]).any()]
        bins = split_off_upstream(good, bins, cfg)
        classes = class_order(good["label"].tolist(), cfg.classes)
        pooled = [UPSTREAM] if (good["bin"] == UPSTREAM).any() else []
        placements, small = plan_strata(good, pooled + bins, classes, cfg)
        bins = [b for b in bins if any(p.bin == b for p in placements)]
        if len(bins) < 2:
            raise ValueError(f"Only {len(bins)} bin(s) hold images ({bins}){' after --drop_small' if small else ''}; a "
                             "temporal dataset needs at least 2. Use bins that hold more images each (wider bins, "
                             "e.g. --bin_by years:2, or fewer quantiles)" + (", or --upstream none" if pooled else "")
                             + ".")
        thin = target_problems(placements, bins)
        if thin:
            raise ValueError(f"{len(thin)} bin(s) cannot be a target: {'; '.join(thin[:6])}. Every split of a bin needs "
                             "images of at least two classes; use wider bins (e.g. --bin_by years:2) or add images.")
        sizes = image_sizes([s for s in good["size"] if s is not None])
        make_layout(tmp, pooled + bins, classes)
        place_files(tmp, placements, cfg.link, workers=workers, progress=progress)
        write_manifests(tmp, placements)
        card = build_card(tmp, dataset=name, classes=classes, bins=bins, seed=cfg.seed,
                          image_size=cfg.image_size or sizes["native_size"], hflip=cfg.hflip, example_group="",
                          extra=card_extra(cfg, source, bins, classes, placements, skipped, small, sizes),
                          bin_extra=bin_extra(bins_meta, bins, skipped))
        if pooled:
            card[UPSTREAM] = {**build_card(tmp, dataset=name, classes=classes, bins=[UPSTREAM], seed=cfg.seed)["bins"][
                UPSTREAM], "rule": cfg.upstream}
        write_card(tmp, card)
    return card


def bin_extra(bins_meta: list[dict], bins: list[str], skipped: list[dict]) -> dict[str, dict]:
    out = {}
    for b in bins_meta:
        if b["name"] in bins:
            out[b["name"]] = {"time_range": {"first": b.get("first"), "last": b.get("last")},
                              "bounds": {"start": b.get("start"), "end_exclusive": b.get("end_exclusive")},
                              "skipped_count": sum(s["bin"] == b["name"] for s in skipped),
                              "manifest": f"{b['name']}/manifest.jsonl"}
    return out


def card_extra(cfg: ImportConfig, source: dict, bins: list[str], classes: list[str], placements: list[Placement],
               skipped: list[dict], small: list[dict], sizes: dict[str, Any]) -> dict[str, Any]:
    warnings = small_data_warnings(placements, bins)
    for cls in classes:
        absent = [b for b in bins if not any(p.bin == b and p.cls == cls for p in placements)]
        if absent:
            warnings.append(f"class '{cls}' has no images in bin(s) {absent} (metrics treat absent classes as such)")
    dups = duplicate_report(placements)
    if dups["across_bins"]:
        warnings.append(f"{len(dups['across_bins'])} image(s) have the same content in two or more bins "
                        "(see 'duplicates')")
    if dups["across_splits"]:
        warnings.append(f"{len(dups['across_splits'])} image(s) have the same content in two splits of one bin "
                        "(see 'duplicates')")
    if small:
        warnings.append(f"{len(small)} stratum(s) under {MIN_STRATUM} images left out (see 'dropped_strata')")
    for w in warnings:  # once, at debug level: the card holds them and the CLI prints them (not twice)
        log.debug("%s", w)
    return {
        "source": source,
        "import": {k: v for k, v in asdict(cfg).items() if k not in ("name",)},
        "binning": str(cfg.rule) if cfg.rule else "named bins",
        "image_sizes": sizes,
        "upstream_rule": cfg.upstream,
        "split_rule": "per bin x class, over the images that decode, sorted by source path: shuffle with the seed "
                      "(stratum '<bin>/<class>'), train = floor(0.8 n), val = floor(0.1 n), test = rest",
        "file_naming": "the source file name (with a hash of its source path when two in a stratum share it); "
                       f"files {'copied unchanged' if cfg.link == 'copy' else cfg.link + 'ed'}",
        "skipped_count": len(skipped),
        "skipped": sorted(skipped, key=lambda s: s["row"]),
        "dropped_strata": small,
        "duplicates": dups,
        "warnings": warnings,
    }


def import_table(table: Path, output_dir: Path, cfg: ImportConfig, *, image_root: Path | None = None,
                 workers: int | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Import a CSV / TSV / Parquet / JSON Lines table of images into ``output_dir``; returns the card."""
    table = Path(table).expanduser().resolve()
    image_root = Path(image_root).expanduser().resolve() if image_root else table.parent
    rows = rows_from_table(read_table(table), cfg, image_root)
    columns = {"path": cfg.path_column, "label": cfg.label_column,
               ("timestamp" if cfg.rule else "bin"): cfg.time_column if cfg.rule else cfg.bin_column}
    source = {"kind": "table", "table": str(table), "image_root": str(image_root), "rows": len(rows),
              "columns": columns}
    return import_rows(rows, output_dir, cfg, source=source, source_dir=image_root, workers=workers,
                       overwrite=overwrite, progress=progress)


def import_folder(root: Path, output_dir: Path, cfg: ImportConfig, *, workers: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Import a ``<root>/<bin>/<class>/<image>`` tree into ``output_dir``; returns the card."""
    if cfg.rule is not None:
        raise ValueError("--bin_by needs time stamps, which a folder tree does not have; its bins are its folders "
                         "(give their order with --bins).")
    root = Path(root).expanduser().resolve()
    rows, ignored = rows_from_folder(root)
    source = {"kind": "folder", "folder": str(root), "rows": len(rows), "non_image_files_ignored": ignored}
    return import_rows(rows, output_dir, cfg, source=source, source_dir=root, workers=workers, overwrite=overwrite,
                       progress=progress)

"""Shared machinery for building a dataset from a raw download (CLEAR-10, CLEAR-100, Yearbook).

A builder plans *placements* (raw file -> ``<bin>/<split>/<class>/<new name>``); this module checks that
every candidate image decodes, copies the files byte for byte (in parallel, with a progress bar), writes
a per-bin ``manifest.jsonl`` and builds the whole dataset in a temporary folder that is moved into place
only once it is complete, so a crash never leaves a half-written bin behind.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from PIL import Image

from ...paths import UPSTREAM
from ...utils.io import current_umask, read_json, write_text
from ...utils.progress import progress_bar
from ..card import CARD_NAME
from ..errors import DataError
from ..splits import SPLITS

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
MANIFEST_NAME = "manifest.jsonl"


class RawDataError(DataError):
    """The raw download is missing or incomplete; the message says what to download and where."""


@dataclass(frozen=True)
class Candidate:
    """One raw image file: its path and its path relative to the raw root (used in cards/manifests)."""

    path: Path
    rel: str


@dataclass
class Placement:
    """Where a verified raw image goes: ``<bin>/<split>/<cls>/<name>``, plus its manifest record."""

    src: Path
    bin: str
    split: str
    cls: str
    name: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def rel(self) -> str:
        return f"{self.split}/{self.cls}/{self.name}"


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int, desc: str,
                 progress: bool = True, unit: str = "img") -> list[R]:
    """``[fn(x) for x in items]`` in input order, on a thread pool when ``workers > 1``.

    Threads suffice: Pillow releases the GIL while decoding and resizing, and copying is I/O.
    """
    bar = progress_bar(total=len(items), desc=desc, unit=unit, enabled=progress, leave=False, dynamic_ncols=True)
    results: list[Any] = [None] * len(items)
    try:
        if workers <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                bar.update()
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update()
            finally:  # on an error or Ctrl-C, drop the queued work instead of finishing it
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results


def render_in_processes(fn: Callable[..., int], tasks: Sequence[tuple], *, workers: int, total: int, desc: str,
                        unit: str, progress: bool = True, chunksize: int = 1) -> None:
    """``fn(*task)`` for every task, in ``workers`` processes (in this one for 1), the progress bar advanced by what
    each call returns (out of ``total``). For the generated benchmarks' renderers: drawing is Python and numpy
    work that holds the GIL, so processes, not threads. Forked before the bar starts a thread, they need nothing
    this process imported since (no torch work yet); a failure cancels the tasks not yet started."""
    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ProcessPoolExecutor(min(workers, os.cpu_count() or 1), mp_context=ctx)
        counts: Iterator[int] = pool.map(fn, *zip(*tasks), chunksize=chunksize)
    else:
        counts = (fn(*task) for task in tasks)
    bar = progress_bar(total=total, desc=desc, unit=unit, leave=False, enabled=progress)
    try:
        for n in counts:
            bar.update(n)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def image_problem(candidate: Candidate) -> str | None:
    """None if the file decodes fully as an image, else a short, machine-independent reason."""
    try:
        with Image.open(candidate.path) as img:
            img.verify()  # structure and checksums (e.g. PNG CRCs)
        with Image.open(candidate.path) as img:
            img.convert("RGB")  # full decode: catches truncated data that verify() misses
    except Exception as exc:  # any failure to read means: skip the file and say why
        msg = str(exc).replace(str(candidate.path), candidate.rel) or type(exc).__name__
        return f"{type(exc).__name__}: {msg}"
    return None


def verify_images(candidates: Sequence[Candidate], *, workers: int, progress: bool,
                  desc: str = "Checking images") -> tuple[list[Candidate], list[dict]]:
    """Split candidates into those that decode and ``[{path, reason}]`` for those that do not."""
    problems = parallel_map(image_problem, candidates, workers=workers, desc=desc, progress=progress)
    valid = [c for c, p in zip(candidates, problems) if p is None]
    skipped = [{"path": c.rel, "reason": p} for c, p in zip(candidates, problems) if p is not None]
    for s in skipped:
        log.warning("Skipping unreadable image %s (%s)", s["path"], s["reason"])
    return valid, skipped


def make_layout(root: Path, bins: Sequence[str], classes: Sequence[str]) -> None:
    """Every ``<bin>/<split>/<class>/`` folder, even one a small stratum leaves empty (e.g. no val image)."""
    for b in bins:
        for split in SPLITS:
            for cls in classes:
                (root / b / split / cls).mkdir(parents=True, exist_ok=True)


def copy_placements(root: Path, placements: Sequence[Placement], *, workers: int, progress: bool) -> None:
    """Copy every placed file as-is (no re-encoding) under ``root``."""
    for folder in sorted({root / p.bin / p.split / p.cls for p in placements}):
        folder.mkdir(parents=True, exist_ok=True)
    parallel_map(lambda p: shutil.copyfile(p.src, root / p.bin / p.rel), placements, workers=workers,
                 desc="Copying images", progress=progress)


SMALL_TEST = 20  # fewer test images than this in a bin: each one moves its accuracy by more than 5 points


def small_data_warnings(placements: Sequence[Placement], bins: Sequence[str]) -> list[str]:
    """The one small-data rule every builder states: a bin with an empty split cannot train a model (it selects on
    val) or be scored; a split with fewer than two classes cannot make a bin a target; fewer than SMALL_TEST test
    images resolve accuracy only coarsely (what one image is worth is said)."""
    out = []
    for b in bins:
        counts = {s: sum(p.bin == b and p.split == s for p in placements) for s in SPLITS}
        empty = [s for s, n in counts.items() if n == 0]
        if empty:
            out.append(f"bin {b} has no {' or '.join(empty)} images: no model can be trained, selected or scored on "
                       "it (more images per class fill every split)")
            continue
        thin = [s for s in SPLITS if len({p.cls for p in placements if p.bin == b and p.split == s}) < 2]
        if thin:
            out.append(f"bin {b} cannot be a target: its {', '.join(thin)} split(s) hold fewer than two classes")
        if counts["test"] < SMALL_TEST:
            out.append(f"bin {b} has {counts['test']} test images: one image is {100 / counts['test']:.1f} accuracy "
                       "points, so differences between methods on it below that cannot be seen (more images per "
                       "bin resolve more)")
    return out


def write_manifests(root: Path, placements: Sequence[Placement]) -> None:
    """Per bin, ``manifest.jsonl``: one JSON record per image, sorted by its path within the bin."""
    by_bin: dict[str, list[Placement]] = {}
    for p in placements:
        by_bin.setdefault(p.bin, []).append(p)
    for b, items in by_bin.items():
        lines = [json.dumps({"file": p.rel, "split": p.split, "class": p.cls, **p.record}, sort_keys=True)
                 for p in sorted(items, key=lambda p: p.rel)]
        write_text(root / b / MANIFEST_NAME, "\n".join(lines) + "\n")


def check_unique(placements: Sequence[Placement]) -> None:
    """Two raw files must never land on the same output path (it would silently lose one)."""
    seen: dict[str, Path] = {}
    for p in placements:
        key = f"{p.bin}/{p.rel}".lower()  # case-insensitive file systems collide on case too
        if key in seen:
            raise RawDataError(f"Raw files {seen[key]} and {p.src} would both be written to {p.bin}/{p.rel}; "
                               "rename one of them in the raw folder.")
        seen[key] = p.src


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_output_dir(output_dir: Path, *, overwrite: bool, source_dir: Path | None = None) -> None:
    """``output_dir`` may be built into: absent, empty, or (with ``overwrite``) a dataset this project built and
    nothing else. A folder of the user's own files is never replaced, whatever the flags say."""
    if source_dir is not None and _is_within(source_dir, output_dir):
        raise ValueError(f"The output folder {output_dir} contains the raw data {source_dir}; choose another "
                         "--output_dir (rebuilding would delete the raw download).")
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder; choose another --output_dir.")
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{output_dir} already exists and is not empty; pass --overwrite to rebuild it "
                              "or choose another --output_dir.")
    problem = not_a_built_dataset(output_dir)
    if problem:
        raise FileExistsError(f"--overwrite replaces only a dataset this project built, and {output_dir} {problem}; "
                              "nothing was changed. Choose another (new or empty) --output_dir, or move those files "
                              "away first.")


def not_a_built_dataset(folder: Path) -> str | None:
    """Why ``folder`` is not (only) a dataset this project built, in words; None if it is: it has the card our
    builders write, and beside it only the card's bins and the upstream pool."""
    card_path = folder / CARD_NAME
    try:
        card = read_json(card_path) if card_path.is_file() else None
    except (OSError, ValueError):
        card = None
    built = isinstance(card, dict) and str(card.get("built_with", "")).startswith("multisource")
    entries = sorted(p.name for p in folder.iterdir())
    if not built:
        listed = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        return f"has no {CARD_NAME} written by it (it holds {len(entries)} other entries: {listed})"
    known = {CARD_NAME, UPSTREAM, *(card.get("bins") or {})}
    foreign = [e for e in entries if e not in known]
    if foreign:
        listed = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        return f"also holds {len(foreign)} entries that are not part of the dataset ({listed})"
    return None


@contextmanager
def building(output_dir: Path, *, overwrite: bool, source_dir: Path | None = None) -> Iterator[Path]:
    """Yield a new temporary folder beside ``output_dir``; on success it replaces ``output_dir``.

    On any error the temporary folder is removed and an existing ``output_dir`` is left untouched. Only folders
    this function made are ever removed (see :func:`check_output_dir`)."""
    output_dir = Path(output_dir).resolve()
    check_output_dir(output_dir, overwrite=overwrite, source_dir=source_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.building-", dir=output_dir.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private (0700); the dataset is read by others too
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    if output_dir.exists():
        output_dir.rename(old / output_dir.name)
    tmp.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)


def summarize_skipped(skipped: Sequence[dict], bins: Sequence[str]) -> dict[str, int]:
    """Count skipped files per bin (entries without a bin, e.g. undatable names, count as ``unassigned``)."""
    counts = {b: 0 for b in bins}
    counts["unassigned"] = 0
    for s in skipped:
        key = s.get("bin") or "unassigned"
        counts[key] = counts.get(key, 0) + 1
    return counts

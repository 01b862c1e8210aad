"""CLIs that build the real datasets from their raw downloads: CLEAR-10, CLEAR-100 (30 classes), Yearbook.

Defaults resolve against the project root, so ``cd preprocessing && python clear10_preprocessing.py``
works as in the paper's README: raw data from ``<project>/datasets/raw/<name>``, output to
``<project>/datasets/<DATASET_DIR>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..data.datasets import get_dataset
from ..paths import DATASETS_DIR, resolve
from .common import run_main, setup_logging

RAW_DIRS = {"clear10": "clear10", "clear100": "clear100", "yearbook": "yearbook"}


def default_raw_dir(name: str) -> Path:
    return DATASETS_DIR / "raw" / RAW_DIRS[name]


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    info = get_dataset(name)
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--source_dir", default=None,
                   help=f"the raw download (default: <project>/datasets/raw/{RAW_DIRS[name]})")
    p.add_argument("--output_dir", default=None, help=f"default: <project>/datasets/{info.dir_name}")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads that check, copy and pack images (default: CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--cache_size", type=int, default=0,
                   help="also write a packed pixel cache with short side SIZE (e.g. 256; default 0 = none)")
    p.add_argument("--cache_only", action="store_true",
                   help="only (re)write the packed cache of an already built --output_dir")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--verbose", action="store_true")
    return p


def _summary(title: str, out: Path, card: dict) -> None:
    print(f"Built {title} in {out}")
    for b, e in card["bins"].items():
        c = {s: v["count"] for s, v in e["splits"].items()}
        print(f"  {b:<16} train {c['train']:>6}, val {c['val']:>5}, test {c['test']:>5}"
              f"   (skipped {e.get('skipped_count', 0)})")
    if card.get("skipped_count"):
        print(f"  {card['skipped_count']} file(s) skipped; see 'skipped' in {out / 'dataset_card.json'}")


def _run(name: str, title: str, args: argparse.Namespace, build: Callable[[Path, Path], dict]) -> int:
    setup_logging(args.verbose)

    def main() -> None:
        # The library is imported here, when work starts (see cli/common.py).
        from ..data.packed import pack_dataset
        from ..data.raw import default_workers

        out = resolve(args.output_dir, DATASETS_DIR / get_dataset(name).dir_name)
        args.workers = default_workers() if args.workers is None else args.workers
        if args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}.")
        if args.cache_size and args.cache_size < 8:
            raise ValueError(f"--cache_size must be 0 (no cache) or at least 8 pixels, got {args.cache_size}.")
        if args.cache_only:
            if not args.cache_size:
                raise ValueError("--cache_only needs --cache_size SIZE (e.g. 256).")
            packed = pack_dataset(out, args.cache_size, workers=args.workers, progress=args.progress)
            total = sum(v for splits in packed.values() for v in splits.values())
            print(f"Packed {title} in {out}: {total / 2**30:.2f} GiB of pixels at short side {args.cache_size}")
            return
        source = resolve(args.source_dir, default_raw_dir(name))
        card = build(source, out)
        _summary(title, out, card)
        if args.cache_size:
            print(f"  packed cache: short side {args.cache_size} px (<bin>/<split>.packed.npy)")

    return run_main(main, "--output_dir")


def _clear_main(name: str, title: str, argv: list[str] | None) -> int:
    p = _parser(name, f"Build {title} from the CLEAR benchmark's train_image_only download: five two-year bins "
                      "with stratified train/val/test splits.")
    args = p.parse_args(argv)

    def build(source: Path, out: Path) -> dict:
        from ..data.clear import build_clear

        return build_clear(name, source, out, seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                           cache_size=args.cache_size, progress=args.progress)

    return _run(name, title, args, build)


def clear10_main(argv: list[str] | None = None) -> int:
    return _clear_main("clear10", "CLEAR-10", argv)


def clear100_main(argv: list[str] | None = None) -> int:
    return _clear_main("clear100", "CLEAR-100 (30 classes)", argv)


def yearbook_main(argv: list[str] | None = None) -> int:
    p = _parser("yearbook", "Build Yearbook (Ginosar et al.) in four periods with stratified train/val/test "
                            "splits; binary gender classification by default.")
    p.add_argument("--label", choices=("gender", "decade"), default="gender",
                   help="gender (F/M, the paper's task; default) or decade (earlier/later decade within the "
                        "period, what the released code did)")
    args = p.parse_args(argv)

    def build(source: Path, out: Path) -> dict:
        from ..data.yearbook import build_yearbook

        return build_yearbook(source, out, label=args.label, seed=args.seed, workers=args.workers,
                              overwrite=args.overwrite, cache_size=args.cache_size, progress=args.progress)

    return _run("yearbook", "Yearbook", args, build)

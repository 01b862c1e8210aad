"""The command that builds a registered dataset, for every built-in dataset alike: ``multisource preprocess NAME``
and the generated ``preprocessing/<name>_preprocessing.py`` call :func:`build_main`.

What a dataset is built with comes from its registry entry (``data/datasets.py``): its build function and, when
it has settings, their class, whose fields are the command's flags (with their ``help`` metadata) and, for an
embedded benchmark, a settings file's ``data:`` section. Two kinds:

* an embedded benchmark (``embedded=True``: drifting digits, drifting glyphs) is generated offline:
  ``build(output_dir, settings, *, overwrite, progress)``;
* a dataset from a raw download (CLEAR-10, CLEAR-100, Yearbook) takes ``--source_dir`` (default
  ``<project>/datasets/raw/<name>``) and the shared flags below:
  ``build(source_dir, output_dir, *, seed, workers, overwrite, cache_size, progress, **settings)``.

Defaults resolve against the project root, so ``cd preprocessing && python clear10_preprocessing.py`` works as in
the paper's README. The library is imported when work starts (see cli/common.py), so ``--help`` prints at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from ..data.datasets import DATASETS, DatasetInfo
from ..data.build.embedded import load
from ..paths import DATASETS_DIR, resolve
from .common import run_main, setup_logging

# flags every embedded build takes besides its settings' fields; not passed on to its settings class
_NOT_SETTINGS = ("config", "verbose", "output_dir", "overwrite", "progress")


def add_settings_flags(p: argparse.ArgumentParser, settings_cls: type) -> None:
    """One flag per field of ``settings_cls`` (plus the aliases in its ``flags`` metadata), help from its ``help``
    metadata and choices from its ``choices``; values stay text until the settings loader converts and checks
    them. A field named like one of the command's own flags is the registration's mistake, said as such."""
    taken = {o for action in p._actions for o in action.option_strings}
    for f in dataclasses.fields(settings_cls):
        names = [*f.metadata.get("flags", ()), f"--{f.name}"]
        clash = [n for n in names if n in taken]
        if clash:
            raise SystemExit(f"error: {settings_cls.__name__}.{f.name} is also the build command's own flag "
                             f"{clash[0]}; rename the field (or its 'flags' alias) in the dataset's settings class.")
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        text = f"{f.metadata.get('help', f.name.replace('_', ' '))} (default {default})".replace("%", "%%")
        p.add_argument(*names, dest=f.name, default=None, choices=f.metadata.get("choices"), help=text)


def build_main(argv: list[str] | None = None, *, dataset: str) -> int:
    """Build the registered ``dataset`` from the command line ``argv``."""
    info = DATASETS.get(dataset)
    return (_embedded_main if info.embedded else _raw_main)(info, argv)


def _embedded_main(info: DatasetInfo, argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(description=f"Build {info.title or info.name}: {info.description}")
    p.add_argument("--output_dir", default=None, help=f"default: <project>/datasets/{info.dir_name}")
    add_settings_flags(p, load(info.build_settings))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--config", default=None, help="settings file; its top level and data: section apply")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> None:
        from ..config import Layer, build

        settings_cls, builder = load(info.build_settings), load(info.builder)
        out = resolve(args.output_dir, DATASETS_DIR / info.dir_name)
        flags = Layer({k: v for k, v in vars(args).items() if v is not None and k not in _NOT_SETTINGS}, flag=True)
        if args.config:  # the settings loader checks the whole file (it imports every stage: torch, the methods)
            from ..experiment.settings import read_settings, resolve_data

            cfg = resolve_data(read_settings(args.config), flags, dataset=info.name)
        else:
            cfg = build(settings_cls, flags)
        start = time.perf_counter()
        card = builder(out, cfg, overwrite=args.overwrite, progress=args.progress)
        print(f"Built {info.title or info.name} in {out} ({len(card['bins'])} bins, {len(card['classes'])} classes, "
              f"{time.perf_counter() - start:.0f} s)")
        _print_counts(card)

    return run_main(main, "--output_dir")


def _raw_main(info: DatasetInfo, argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(description=f"Build {info.title or info.name} from its raw download: "
                                            f"{info.description}")
    p.add_argument("--source_dir", default=None,
                   help=f"the raw download (default: <project>/datasets/raw/{info.name})")
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
    settings_cls = load(info.build_settings) if info.build_settings else None
    if settings_cls is not None:
        add_settings_flags(p, settings_cls)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> None:
        from ..config import Layer, build
        from ..data.build.pack import pack_dataset
        from ..data.build.raw import default_workers

        out = resolve(args.output_dir, DATASETS_DIR / info.dir_name)
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
            print(f"Packed {info.title or info.name} in {out}: {total / 2**30:.2f} GiB of pixels at short side "
                  f"{args.cache_size}")
            return
        settings = {}
        if settings_cls is not None:
            given = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings_cls)}
            settings = dataclasses.asdict(build(settings_cls, Layer({k: v for k, v in given.items() if v is not None},
                                                                    flag=True)))
        source = resolve(args.source_dir, DATASETS_DIR / "raw" / info.name)
        card = load(info.builder)(source, out, seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                                  cache_size=args.cache_size, progress=args.progress, **settings)
        print(f"Built {info.title or info.name} in {out}")
        _print_counts(card)
        if card.get("skipped_count"):
            print(f"  {card['skipped_count']} file(s) skipped; see 'skipped' in {out / 'dataset_card.json'}")
        if args.cache_size:
            print(f"  packed cache: short side {args.cache_size} px (<bin>/<split>.packed.npy)")

    return run_main(main, "--output_dir")


def _print_counts(card: dict) -> None:
    entries = {**({"upstream": card["upstream"]} if "upstream" in card else {}), **card["bins"]}
    for b, entry in entries.items():
        c = {s: v["count"] for s, v in entry["splits"].items()}
        skipped = f"   (skipped {entry['skipped_count']})" if entry.get("skipped_count") else ""
        print(f"  {b}: train {c['train']}, val {c['val']}, test {c['test']}{skipped}")

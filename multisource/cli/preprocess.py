"""The commands that build the embedded benchmarks (drifting digits, drifting glyphs) offline. Settings: flags <
the ``data:`` section (and top level) of ``--config``; the build's class and function come from
``data/embedded.py``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..paths import DATASETS_DIR
from .common import run_main, setup_logging

# flags every embedded build takes besides its own; those not passed on to its settings class last
_NOT_SETTINGS = ("config", "verbose", "output_dir", "overwrite", "progress")


def _parser(description: str, folder: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--output_dir", default=None, help=f"default: <project>/datasets/{folder}")
    p.add_argument("--image_size", default=None, help="default 32")
    p.add_argument("--seed", default=None, help="default 42 (same seed and options, same bytes)")
    return p


def _build_main(p: argparse.ArgumentParser, argv: list[str] | None, dataset: str, folder: str) -> int:
    """Parse the shared flags, resolve the settings once, build, and print the card's counts."""
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--config", default=None, help="settings file; its top level and data: section apply")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> None:
        # The library is imported here, when work starts (see cli/common.py).
        from ..config import Layer, build
        from ..data.embedded import embedded_build

        embedded = embedded_build(dataset)
        out = Path(args.output_dir).resolve() if args.output_dir else DATASETS_DIR / folder
        flags = Layer({k: v for k, v in vars(args).items() if v is not None and k not in _NOT_SETTINGS}, flag=True)
        if args.config:  # the settings loader checks the whole file (it imports every stage: torch, the methods)
            from ..experiment.settings import read_settings, resolve_data

            cfg = resolve_data(read_settings(args.config), flags, dataset=dataset)
        else:
            cfg = build(embedded.config_cls, flags)
        start = time.perf_counter()
        card = embedded.build(out, cfg, overwrite=args.overwrite, progress=args.progress)
        name = dataset.replace("_", " ").replace("drift", "drifting")
        print(f"Built {name} in {out} ({len(card['bins'])} eras, {len(card['classes'])} classes, "
              f"{time.perf_counter() - start:.0f} s)")
        for b, entry in {"upstream": card["upstream"], **card["bins"]}.items():
            c = {s: v["count"] for s, v in entry["splits"].items()}
            print(f"  {b}: train {c['train']}, val {c['val']}, test {c['test']}")

    return run_main(main, "--output_dir")


def drift_digits_main(argv: list[str] | None = None) -> int:
    p = _parser("Build the drifting-digits benchmark (offline, from scikit-learn).", "DriftDigits")
    p.add_argument("--train_renders", default=None, help="renders per training instance (default 3)")
    p.add_argument("--eval_renders", default=None, help="renders per val/test instance (default 3)")
    return _build_main(p, argv, "drift_digits", "DriftDigits")


def drift_glyphs_main(argv: list[str] | None = None) -> int:
    p = _parser("Build the drifting-glyphs benchmark (offline, from matplotlib's fonts): letters whose style "
                "drifts over --bins eras, every image its own draw.", "DriftGlyphs")
    p.add_argument("--bins", "--num_bins", dest="num_bins", default=None, help="number of eras (default 6, at most 64)")
    p.add_argument("--characters", default=None, help="one class per character (default: A-Z)")
    p.add_argument("--train_per_class", default=None, help="train images per class and era (default 40)")
    p.add_argument("--val_per_class", default=None, help="val images per class and era (default 10)")
    p.add_argument("--test_per_class", default=None,
                   help="test images per class and era (default 77: 2,002 test images per era with 26 classes)")
    p.add_argument("--upstream_per_class", default=None,
                   help="upstream (pretraining) train images per class (default 80)")
    p.add_argument("--workers", default=None, help="rendering processes (default 2; the bytes do not depend on it)")
    return _build_main(p, argv, "drift_glyphs", "DriftGlyphs")

"""CLI for building the embedded drifting-digits benchmark (settings: flags < ``data:`` of ``--config``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import DATASETS_DIR
from .common import run_main, setup_logging


def drift_digits_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the drifting-digits benchmark (offline, from scikit-learn).")
    p.add_argument("--output_dir", default=None, help="default: <project>/datasets/DriftDigits")
    p.add_argument("--image_size", default=None, help="default 32")
    p.add_argument("--seed", default=None, help="default 42")
    p.add_argument("--train_renders", default=None, help="renders per training instance (default 3)")
    p.add_argument("--eval_renders", default=None, help="renders per val/test instance (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--config", default=None, help="settings file; its top level and data: section apply")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> None:
        # The library is imported here, when work starts (see cli/common.py).
        from ..data.drift_digits import build_drift_digits
        from ..experiment.settings import cli_layer, read_settings, resolve_data

        out = Path(args.output_dir).resolve() if args.output_dir else DATASETS_DIR / "DriftDigits"
        cli = cli_layer(args, exclude=("config", "verbose", "output_dir", "overwrite", "progress"))
        cfg = resolve_data(read_settings(args.config), cli, dataset="drift_digits")
        card = build_drift_digits(out, cfg, overwrite=args.overwrite, progress=args.progress)
        counts = {b: {s: v["count"] for s, v in e["splits"].items()} for b, e in card["bins"].items()}
        print(f"Built drifting digits in {out}")
        for b, c in counts.items():
            print(f"  {b}: train {c['train']}, val {c['val']}, test {c['test']}")

    return run_main(main, "--output_dir")


def drift_glyphs_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the drifting-glyphs benchmark (offline, from matplotlib's fonts): "
                                            "letters whose style drifts over --bins eras, every image its own draw.")
    p.add_argument("--output_dir", default=None, help="default: <project>/datasets/DriftGlyphs")
    p.add_argument("--bins", "--num_bins", dest="num_bins", default=None, help="number of eras (default 6, at most 64)")
    p.add_argument("--image_size", default=None, help="default 32")
    p.add_argument("--seed", default=None, help="default 42 (same seed and options, same bytes)")
    p.add_argument("--characters", default=None, help="one class per character (default: A-Z)")
    p.add_argument("--train_per_class", default=None, help="train images per class and era (default 40)")
    p.add_argument("--val_per_class", default=None, help="val images per class and era (default 10)")
    p.add_argument("--test_per_class", default=None,
                   help="test images per class and era (default 77: 2,002 test images per era with 26 classes)")
    p.add_argument("--upstream_per_class", default=None,
                   help="upstream (pretraining) train images per class (default 80)")
    p.add_argument("--workers", default=None, help="rendering processes (default 2; the bytes do not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--config", default=None, help="settings file; its top level and data: section apply")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> None:
        import time

        from ..config import Layer, build
        from ..data.drift_glyphs import DriftGlyphsConfig, build_drift_glyphs

        out = Path(args.output_dir).resolve() if args.output_dir else DATASETS_DIR / "DriftGlyphs"
        flags = {k: v for k, v in vars(args).items()
                 if v is not None and k not in ("config", "verbose", "output_dir", "overwrite", "progress")}
        if args.config:  # the settings loader checks the whole file (it imports every stage: torch, the methods)
            from ..experiment.settings import read_settings, resolve_data

            cfg = resolve_data(read_settings(args.config), Layer(flags, flag=True), dataset="drift_glyphs")
        else:
            cfg = build(DriftGlyphsConfig, Layer(flags, flag=True))
        start = time.perf_counter()
        card = build_drift_glyphs(out, cfg, overwrite=args.overwrite, progress=args.progress)
        counts = {b: {s: v["count"] for s, v in e["splits"].items()} for b, e in card["bins"].items()}
        print(f"Built drifting glyphs in {out} ({len(counts)} eras, {len(card['classes'])} classes, "
              f"{time.perf_counter() - start:.0f} s)")
        up = card["upstream"]["splits"]
        print(f"  upstream: train {up['train']['count']}, val {up['val']['count']}, test {up['test']['count']}")
        for b, c in counts.items():
            print(f"  {b}: train {c['train']}, val {c['val']}, test {c['test']}")

    return run_main(main, "--output_dir")

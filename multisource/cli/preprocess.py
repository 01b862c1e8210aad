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
        cfg = resolve_data(read_settings(args.config), cli)
        card = build_drift_digits(out, cfg, overwrite=args.overwrite, progress=args.progress)
        counts = {b: {s: v["count"] for s, v in e["splits"].items()} for b, e in card["bins"].items()}
        print(f"Built drifting digits in {out}")
        for b, c in counts.items():
            print(f"  {b}: train {c['train']}, val {c['val']}, test {c['test']}")

    return run_main(main, "--output_dir")

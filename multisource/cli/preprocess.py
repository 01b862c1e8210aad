"""CLI for building the embedded drifting-digits benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import DATASETS_DIR
from .common import run_main, setup_logging


def drift_digits_main(argv: list[str] | None = None) -> int:
    from ..data.drift_digits import DriftDigitsConfig, build_drift_digits

    p = argparse.ArgumentParser(description="Build the drifting-digits benchmark (offline, from scikit-learn).")
    p.add_argument("--output_dir", default=None, help="default: <project>/datasets/DriftDigits")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train_renders", type=int, default=DriftDigitsConfig.train_renders)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> None:
        out = Path(args.output_dir).resolve() if args.output_dir else DATASETS_DIR / "DriftDigits"
        cfg = DriftDigitsConfig(image_size=args.image_size, seed=args.seed, train_renders=args.train_renders)
        card = build_drift_digits(out, cfg, overwrite=args.overwrite)
        counts = {b: {s: v["count"] for s, v in e["splits"].items()} for b, e in card["bins"].items()}
        print(f"Built drifting digits in {out}")
        for b, c in counts.items():
            print(f"  {b}: train {c['train']}, val {c['val']}, test {c['test']}")

    return run_main(main)

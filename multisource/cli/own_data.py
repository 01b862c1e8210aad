"""CLIs for the user's own data: import a table or a folder tree as a dataset, and the drift report.

    python preprocessing/import_dataset.py --table images.csv --image_root DIR --output_dir datasets/MyData \
        --bin_by year
    python preprocessing/import_dataset.py --folder TREE --bins 2019 2020 2021 --output_dir datasets/MyData
    python experiments/drift_report.py --dataset datasets/MyData --model resnet-50

The library is imported inside each command's ``main``, when work starts (see cli/common.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_run_options, run_main, setup_logging


def import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Import your own time-stamped images (a table, or a <bin>/<class>/<image> "
                                            "folder tree) as a time-binned dataset: stratified train/val/test splits "
                                            "per bin x class, per-bin manifests and a dataset_card.json. Use the "
                                            "output folder as --dataset PATH in every command.")
    src = p.add_argument_group("what to import (one of)")
    what = src.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", help="CSV, TSV, Parquet or JSON Lines file, one row per image")
    what.add_argument("--folder", help="a <bin>/<class>/<image> folder tree")
    p.add_argument("--image_root", default=None,
                   help="folder that the table's relative image paths start from (default: the table's folder)")
    p.add_argument("--output_dir", required=True, help="where to build the dataset (e.g. datasets/MyData)")
    p.add_argument("--name", default=None, help="the dataset's name; results go under results/<name>/ (default: the "
                                              "output folder's name)")
    t = p.add_argument_group("columns and bins")
    t.add_argument("--path_column", default=None, help="default: path")
    t.add_argument("--label_column", default=None, help="default: label")
    t.add_argument("--time_column", default=None,
                   help="ISO dates or datetimes, years, or Unix seconds (default column: timestamp)")
    t.add_argument("--time_format", default=None, choices=("auto", "iso", "year", "unix", "excel"),
                   help="how the time column reads: auto (default: ISO text, 4-digit years, or Unix seconds from "
                        "1973 on), iso, year, unix (seconds), excel (serial days since 1899-12-30)")
    t.add_argument("--bin_column", default=None, help="explicit bin names, used when --bin_by is not given")
    t.add_argument("--bin_by", default=None,
                   help="bin by time: year, quarter, month, years:N, edges:1990,2000,2010 (years or ISO dates) or "
                        "quantiles:N (equal-count bins); bins are named by their time range")
    t.add_argument("--bins", nargs="+", default=None,
                   help="the order of named bins (bin column or folder tree); default: sorted names")
    t.add_argument("--classes", nargs="+", default=None,
                   help="the label order (default: sorted; numerically when every label is a number)")
    o = p.add_argument_group("options")
    o.add_argument("--seed", default=None, help="split seed (default 42)")
    o.add_argument("--link", choices=("copy", "hardlink", "symlink"), default=None,
                   help="copy the images (default) or link them")
    o.add_argument("--strict", action="store_true", default=None,
                   help="refuse missing or unreadable images (default: skip them and list them in the card)")
    o.add_argument("--drop_small", action="store_true", default=None,
                   help="leave out bin x class strata under 10 images (default: refuse)")
    o.add_argument("--image_size", default=None,
                   help="training image size recorded in the card (default: the images' own size, the median "
                        "shorter side)")
    o.add_argument("--upstream", default=None,
                   help="a pretraining pool every source model starts from: none (default; the tiny models then "
                        "start from one shared random initialisation), earliest (the earliest bin becomes the pool: "
                        "neither a source nor a target) or fraction:F (a stratified share F of every bin's images, "
                        "so the pool has seen every period)")
    o.add_argument("--no_hflip", dest="hflip", action="store_false", default=None,
                   help="horizontal flips change the meaning of these images (text, digits)")
    o.add_argument("--workers", type=int, default=None, help="threads that check and copy images (default: CPUs, "
                                                             "at most 8)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    o.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")
    o.add_argument("--config", default=None, help="settings file; its top level and import: section apply "
                                                  "(flags override it)")
    o.add_argument("--verbose", action="store_true")
    return p


def import_main(argv: list[str] | None = None) -> int:
    args = import_parser().parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        from ..config import Layer, build
        from ..data.build.importer import ImportConfig, import_folder, import_table
        from ..paths import UPSTREAM

        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}.")
        not_settings = ("config", "verbose", "table", "folder", "image_root", "output_dir", "workers", "overwrite",
                        "progress")
        cli = Layer({k: v for k, v in vars(args).items() if v is not None and k not in not_settings}, flag=True)
        if args.config:  # the whole settings grammar (it loads every stage's classes, torch included: seconds)
            from ..experiment.settings import read_settings, resolve_import

            cfg = resolve_import(read_settings(args.config), cli)
        else:  # the flags alone, converted and checked by the same build()
            cfg = build(ImportConfig, cli)
        out = Path(args.output_dir).expanduser().resolve()
        common = {"workers": args.workers, "overwrite": args.overwrite, "progress": args.progress}
        if args.table:
            card = import_table(Path(args.table), out, cfg, image_root=args.image_root and Path(args.image_root),
                                **common)
        else:
            card = import_folder(Path(args.folder), out, cfg, **common)
        print(f"Imported {card['dataset']} into {out} ({len(card['classes'])} classes, binning: {card['binning']})")
        for b, e in card["bins"].items():
            c = {s: v["count"] for s, v in e["splits"].items()}
            r = e.get("time_range") or {}
            span = f"  {r['first']} .. {r['last']}" if r.get("first") else ""
            print(f"  {b:<24} train {c['train']:>6}, val {c['val']:>5}, test {c['test']:>5}{span}")
        sizes = card["image_sizes"]["shorter_side"]
        print(f"  images: shorter side {sizes['min']}-{sizes['max']} px (median {sizes['median']}); models train at "
              f"{card['image_size']} px unless --image_size says otherwise")
        if UPSTREAM in card:
            print(f"  upstream pool ({card[UPSTREAM]['rule']}): train {card[UPSTREAM]['splits']['train']['count']}, "
                  f"val {card[UPSTREAM]['splits']['val']['count']} (every source model starts from a model "
                  "pretrained on it)")
        if card["skipped_count"]:
            print(f"  {card['skipped_count']} image(s) skipped (missing or unreadable); see 'skipped' in the card")
        for w in card["warnings"]:
            print(f"  warning: {w}")
        print(f"Use it as: --dataset {out}")
        return 0

    return run_main(main, "--output_dir")


def drift_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate every bin's source model on every bin's test split: the drift "
                                            "matrix (JSON, CSV, Markdown), a heatmap and CLEAR's in-domain, "
                                            "next-domain, forward and backward transfer.")
    p.add_argument("--dataset", required=True, help="a registered dataset or an imported dataset's folder")
    p.add_argument("--model", "--model_name", dest="model", required=True, help="model name or alias")
    p.add_argument("--bins", nargs="+", default=None, help="bins to include (default: all, in time order)")
    p.add_argument("--batch_size", type=int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--no_progress", dest="progress", action="store_false", default=None, help="no progress bar")
    add_run_options(p)
    args = p.parse_args(argv)
    setup_logging(bool(args.verbose))

    def main() -> int:
        from ..data.loaders import open_dataset
        from ..experiment.drift import write_drift_report
        from ..experiment.settings import cli_layer, read_settings, resolve_options
        from ..models.factory import resolve_model

        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}.")
        opts = resolve_options(read_settings(args.config),
                               cli_layer(args, exclude=("config", "verbose", "dataset", "model", "bins",
                                                        "batch_size")))
        handle = open_dataset(args.dataset, opts.data_root)
        paths = write_drift_report(handle, resolve_model(args.model).name, opts, args.bins,
                                   batch_size=args.batch_size)
        print(paths["md"].read_text(encoding="utf-8"))
        print("Written:\n" + "\n".join(f"  {q}" for q in paths.values()))
        return 0

    return run_main(main)

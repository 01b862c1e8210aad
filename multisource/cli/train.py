"""CLIs for source training: one bin, all bins, and upstream pretraining."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import build, pick
from ..data.datasets import get_dataset
from ..data.loaders import open_dataset
from ..models.factory import resolve_model
from ..training.bins import train_all_bins
from ..training.source import RunOptions, SourceTrainConfig, train_source
from .common import add_run_options, config_layers, run_main, setup_logging

log = logging.getLogger(__name__)


def add_train_arguments(p: argparse.ArgumentParser, dataset: str | None) -> None:
    if dataset is None:
        p.add_argument("--dataset", default=None, help="registered dataset (drift_digits, clear10, clear100, yearbook)")
    p.add_argument("--model_name", "--model", dest="model_name", default=None,
                   help="model name or alias (e.g. mobilevit-xxs, resnet-50, tiny-resnet)")
    p.add_argument("--max_epochs", "--epochs", dest="max_epochs", type=int, default=None, help="default 15")
    p.add_argument("--batch_size", type=int, default=None, help="default 32")
    p.add_argument("--learning_rate", "--lr", dest="learning_rate", type=float, default=None,
                   help="backbone learning rate (default: the model's recommended rate)")
    p.add_argument("--weight_decay", type=float, default=None)
    p.add_argument("--image_size", type=int, default=None, help="default: the dataset's (224; 32 for digits)")
    p.add_argument("--seed", type=int, default=None, help="default 42")
    p.add_argument("--weights", default=None, help="pretrained weights file to start from")
    p.add_argument("--no-pretrained", "--no_pretrained", dest="pretrained", action="store_false", default=None,
                   help="start from random weights")
    g = p.add_argument_group("hardware (Lightning)")
    g.add_argument("--accelerator", default=None, help="auto, cpu, gpu")
    g.add_argument("--devices", default=None, help="auto, N, or a list such as 0,1")
    g.add_argument("--num_nodes", type=int, default=None)
    g.add_argument("--strategy", default=None, help="auto, ddp, ddp_spawn, ... (Lightning strategies)")
    g.add_argument("--device", default=None, help="cpu or cuda (shorthand for --accelerator)")
    add_run_options(p)


def _configs(args: argparse.Namespace, dataset: str | None, bin_name: str | None) -> tuple[SourceTrainConfig, RunOptions]:
    file_values, cli = config_layers(args)
    if cli.get("device"):
        cli["accelerator"] = {"cuda": "gpu"}.get(cli["device"], cli["device"])
    if isinstance(cli.get("devices"), str) and cli["devices"].isdigit():
        cli["devices"] = int(cli["devices"])
    fixed = {"dataset": dataset} if dataset else {}
    if bin_name:
        fixed["bin"] = bin_name
    cfg = build(SourceTrainConfig, pick(file_values, SourceTrainConfig), pick(cli, SourceTrainConfig), fixed)
    opts = build(RunOptions, pick(file_values, RunOptions), pick(cli, RunOptions))
    return cfg, opts


def train_baseline_main(argv: list[str] | None = None, *, dataset: str | None = None,
                        bin_flags: tuple[str, ...] = ("--bin",)) -> int:
    info = get_dataset(dataset) if dataset else None
    p = argparse.ArgumentParser(description=f"Train one source model on one time bin"
                                            f"{' of ' + info.name if info else ''}.")
    add_train_arguments(p, dataset)
    p.add_argument(*bin_flags, dest="bin", required=True, help="the time bin to train on")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        cfg, opts = _configs(args, dataset, args.bin)
        report = train_source(cfg, opts)
        if report:
            print(f"{report['model']} on {report['dataset']}/{report['bin']}: val acc {report['val_accuracy']:.4f}, "
                  f"test acc {report['test_accuracy']:.4f} -> {report['checkpoint']}")
        return 0

    return run_main(main)


def train_all_main(argv: list[str] | None = None, *, dataset: str | None = None) -> int:
    p = argparse.ArgumentParser(description="Train one source model per time bin; complete bins are skipped.")
    add_train_arguments(p, dataset)
    p.add_argument("--bins", nargs="+", default=None, help="bins to train (default: all, in chronological order)")
    p.add_argument("--force", action="store_true", help="re-train bins whose checkpoint is complete")
    p.add_argument("--workers", type=int, default=1, help="bins trained in parallel processes on this machine "
                                                          "(CPU; on GPUs use --devices/--strategy instead)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        cfg, opts = _configs(args, dataset, None)
        handle = open_dataset(cfg.dataset, opts.data_root)
        bins = args.bins or handle.bins
        handle.check_bins(*bins)
        results = train_all_bins(cfg, opts, bins, force=args.force, workers=args.workers)
        print(f"\nSource models ({resolve_model(cfg.model_name).name} on {handle.info.name}):")
        for b, r in results.items():
            print(f"  {b:<18} {r['status']:<8} {r.get('detail', '')}")
        failed = [b for b, r in results.items() if r["status"] == "failed"]
        if failed:
            print(f"{len(failed)} bin(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0

    return run_main(main)


def pretrain_upstream_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Pretrain a tiny model on a dataset's upstream pool (its 'pretrained "
                                            "weights'); done automatically on first use.")
    add_train_arguments(p, None)
    p.add_argument("--force", action="store_true", help="pretrain again even if the checkpoint exists")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        from ..training.upstream import UPSTREAM_EPOCHS, ensure_upstream

        cfg, opts = _configs(args, None, None)
        handle = open_dataset(cfg.dataset, opts.data_root)
        path = ensure_upstream(handle, cfg, opts, force=args.force, epochs=args.max_epochs or UPSTREAM_EPOCHS)
        print(f"Upstream weights for {resolve_model(cfg.model_name).name}: {path}")
        return 0

    return run_main(main)


def download_weights_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Download a paper model's ImageNet weights into the local Hugging Face "
                                            "cache (the only command that uses the network).")
    p.add_argument("--model_name", "--model", dest="model_name", nargs="+", required=True)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        from ..models.factory import download_pretrained

        for name in args.model_name:
            print(f"{resolve_model(name).name}: {download_pretrained(name)}")
        return 0

    return run_main(main)

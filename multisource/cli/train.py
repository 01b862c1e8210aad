"""CLIs for source training: one bin, all bins, upstream pretraining, and the weights download.

The library is imported inside each command's ``main``, when work starts (see cli/common.py).
"""

from __future__ import annotations

import argparse
import sys

from ..data.datasets import get_dataset, list_datasets
from .common import add_executor_options, add_run_options, run_main, setup_logging


def add_train_arguments(p: argparse.ArgumentParser, dataset: str | None) -> None:
    if dataset is None:
        p.add_argument("--dataset", default=None, help=f"registered dataset ({', '.join(list_datasets())}) or an "
                                                          "imported dataset's folder")
    p.add_argument("--model_name", "--model", dest="model_name", default=None,
                   help="model name or alias (e.g. mobilevit-xxs, resnet-50, tiny-resnet)")
    p.add_argument("--max_epochs", "--epochs", dest="max_epochs", default=None, help="default 15")
    p.add_argument("--batch_size", default=None, help="default 32")
    p.add_argument("--learning_rate", "--lr", dest="learning_rate", default=None,
                   help="backbone learning rate (default: the model's recommended rate)")
    p.add_argument("--weight_decay", default=None, help="default 0.01")
    p.add_argument("--image_size", default=None, help="default: the dataset's (224; 32 for digits)")
    p.add_argument("--seed", default=None, help="default 42")
    p.add_argument("--weights", default=None, help="pretrained weights file to start from")
    p.add_argument("--no-pretrained", "--no_pretrained", dest="pretrained", action="store_false", default=None,
                   help="start from random weights")
    g = p.add_argument_group("hardware (Lightning)")
    g.add_argument("--accelerator", dest="device", default=None, help="auto, cpu or gpu (the same as --device)")
    g.add_argument("--devices", default=None, help="auto, N, or a list such as 0,1")
    g.add_argument("--num_nodes", default=None)
    g.add_argument("--strategy", default=None, help="auto, ddp, ddp_spawn, ... (Lightning strategies)")
    g.add_argument("--batch_augment", action="store_true", default=None,
                   help="colour jitter and normalisation of train batches as tensor ops on the device (for a GPU)")
    add_run_options(p)


def _resolve(args: argparse.Namespace, fixed: dict):
    from ..experiment.settings import cli_layer, read_settings, resolve_training

    cli = cli_layer(args, exclude=("config", "verbose", "bins", "force"))
    return resolve_training(read_settings(args.config), cli, fixed)


def train_baseline_main(argv: list[str] | None = None, *, dataset: str | None = None) -> int:
    info = get_dataset(dataset) if dataset else None
    p = argparse.ArgumentParser(description=f"Train one source model on one time bin"
                                            f"{' of ' + info.name if info else ''}.")
    add_train_arguments(p, dataset)
    bin_flags = (f"--{info.bin_flag}", "--bin") if info and info.bin_flag != "bin" else ("--bin",)
    p.add_argument(*bin_flags, dest="bin", required=True, help="the time bin to train on")
    args = p.parse_args(argv)
    setup_logging(bool(args.verbose))

    def main() -> int:
        from ..training.all_bins import plan_sources, run_source_job

        cfg, opts = _resolve(args, {"dataset": dataset} if dataset else {})
        handle = plan_sources(cfg, opts, [cfg.bin]).handle
        outcome = run_source_job(cfg, opts, handle, None, raise_errors=True)
        if outcome.status == "claimed":
            print(f"{cfg.bin}: {outcome.detail} ({outcome.checkpoint}); nothing was done. Wait for it, or choose "
                  "another --checkpoint_dir.", file=sys.stderr)
            return 1
        if outcome.test_accuracy is not None:  # (a secondary rank of a distributed run reports nothing)
            print(f"{cfg.model_name} on {handle.info.name}/{cfg.bin}: val acc {outcome.val_accuracy:.4f}, "
                  f"test acc {outcome.test_accuracy:.4f} -> {outcome.checkpoint}")
        return 0

    return run_main(main)


def train_all_main(argv: list[str] | None = None, *, dataset: str | None = None) -> int:
    p = argparse.ArgumentParser(description="Train one source model per time bin; complete bins are skipped.")
    add_train_arguments(p, dataset)
    p.add_argument("--bins", nargs="+", default=None, help="bins to train (default: all, in chronological order)")
    p.add_argument("--force", action="store_true", help="re-train bins whose checkpoint is complete")
    add_executor_options(p)
    args = p.parse_args(argv)
    setup_logging(bool(args.verbose))

    def main() -> int:
        from ..training.all_bins import plan_sources, train_all_bins

        cfg, opts = _resolve(args, {"dataset": dataset} if dataset else {})
        plan = plan_sources(cfg, opts, args.bins)
        handle = plan.handle
        results = train_all_bins(cfg, opts, handle, list(plan.bins), force=args.force)
        print(f"\nSource models ({cfg.model_name} on {handle.info.name}):")
        for b, r in results.items():
            print(f"  {b:<18} {r.status:<8} {r.detail}")
        failed = [b for b, r in results.items() if r.status == "failed"]
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
    setup_logging(bool(args.verbose))

    def main() -> int:
        from ..training.all_bins import plan_sources
        from ..training.upstream import UPSTREAM_EPOCHS, ensure_upstream

        cfg, opts = _resolve(args, {})
        handle = plan_sources(cfg, opts, []).handle  # the upstream pool, no bin
        epochs = cfg.max_epochs if args.max_epochs is not None else UPSTREAM_EPOCHS
        path = ensure_upstream(handle, cfg, opts, force=args.force, epochs=epochs)
        print(f"Upstream weights for {cfg.model_name}: {path}")
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
        from ..models.factory import download_pretrained, resolve_model

        for name in args.model_name:
            print(f"{resolve_model(name).name}: {download_pretrained(name)}")
        return 0

    return run_main(main)

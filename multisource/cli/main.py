"""The ``multisource`` console command: one entry point with a subcommand per generic entry script.

    multisource preprocess drift_digits|drift_glyphs|clear10|clear100|yearbook [flags]
    multisource train | train-all | pretrain-upstream | download-weights [flags]
    multisource run | sweep | summarize | demo [flags]
    multisource import | drift-report [flags]
    multisource generate [--check]

Each subcommand takes exactly the flags of the script it stands for (``multisource sweep --help``).
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

from ..data.datasets import DATASETS
from . import demo, experiment, generated, own_data, preprocess, sweep, train


def preprocess_commands() -> dict[str, Callable[[list[str]], int]]:
    """`multisource preprocess NAME`: every registered dataset that names its builder (read when the command
    runs, so a dataset registered by a plugin is there too)."""
    return {name: functools.partial(preprocess.build_main, dataset=name) for name in DATASETS.registered()
            if DATASETS.get(name).builder}


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (train.train_baseline_main, "train one source model on one bin"),
    "train-all": (train.train_all_main, "train one source model per bin (complete ones skipped)"),
    "pretrain-upstream": (train.pretrain_upstream_main, "pretrain a tiny model on the upstream pool"),
    "download-weights": (train.download_weights_main, "download ImageNet weights (the only network command)"),
    "run": (experiment.experiment_main, "one experiment (--method M --target T ...)"),
    "sweep": (sweep.sweep_main, "leave-one-bin-out sweep with summaries"),
    "summarize": (sweep.summarize_main, "rebuild summaries from metrics.json files"),
    "import": (own_data.import_main, "import your own images (a table or a folder tree) as a dataset"),
    "drift-report": (own_data.drift_main, "every source model on every bin's test split"),
    "demo": (demo.demo_main, "the end-to-end demo on drifting digits"),
    "generate": (generated.generate_main, "write the wrapper scripts and flag table from the registries"),
}


def usage() -> str:
    lines = ["usage: multisource COMMAND [flags]   (multisource COMMAND --help for its flags)", "", "commands:",
             f"  {'preprocess NAME':<18} build a dataset: {', '.join(preprocess_commands())}"]
    lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "preprocess":
        builds = preprocess_commands()
        if not rest or rest[0] not in builds:
            print(f"error: multisource preprocess needs a dataset: {', '.join(builds)}.", file=sys.stderr)
            return 2
        sys.argv = [f"multisource preprocess {rest[0]}", *rest[1:]]
        return builds[rest[0]](rest[1:])
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'.\n{usage()}", file=sys.stderr)
        return 2
    sys.argv = [f"multisource {command}", *rest]  # argparse names the subcommand in its usage line
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    raise SystemExit(main())

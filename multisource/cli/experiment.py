"""CLI for one experiment: ``run_<method>_experiment.py --dataset D --target T --sources ... --model M``.

Method hyper-parameters become flags generated from the method flag table (itself generated from each
method's config dataclass), so a new method or option needs no CLI change. Flag values are converted by the
settings loader, exactly like values in a settings file.
"""

from __future__ import annotations

import argparse

from ..data.datasets import list_datasets
from .common import add_run_options, run_main, setup_logging
from .generated import load_flag_table


def add_method_flags(p: argparse.ArgumentParser, methods: list[str], title: str) -> dict[str, list[str]]:
    """One flag per hyper-parameter of ``methods`` (``--field``; booleans get ``--field/--no-field``);
    returns flag name -> the methods that have it."""
    table = load_flag_table()
    g = p.add_argument_group(title)
    owners: dict[str, list[str]] = {}
    for method in methods:
        for f in table[method]["fields"]:
            if f["name"] not in owners:
                flag = f"--{f['name']}"
                if f["type"] == "bool":
                    g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                   help=f"default {f['default']}")
                elif f["type"].startswith("tuple"):  # e.g. --lambdas 0.25 0.5 1.0
                    item = f["type"][len("tuple["):].split(",")[0].strip().upper()
                    g.add_argument(flag, default=None, nargs="+", metavar=item,
                                   help=f"default {' '.join(map(str, f['default']))}")
                else:
                    g.add_argument(flag, default=None, metavar=f["type"].upper().replace(" ", ""),
                                   help=f"default {f['default']}")
            owners.setdefault(f["name"], []).append(method)
    return owners


def add_shared_experiment_flags(p: argparse.ArgumentParser) -> None:
    """Flags of one experiment that a sweep passes on to each of its experiments."""
    p.add_argument("--protocol", default=None,
                   help="which bins are a target's sources: leave-one-out (default, every other bin), past (only "
                        "earlier bins), window:N (the N latest earlier bins) or stream (bins one at a time: the model "
                        "deployed for the bin before and that bin's source model only)")
    p.add_argument("--tag", default=None,
                   help="name these settings as a variant of the method: results under <method>@<tag>/, its own "
                        "row <method>[<tag>] in the comparison, paired with every other row")
    p.add_argument("--seed", default=None, help="base seed (default 42); trial k derives its own")
    p.add_argument("--batch_size", default=None, help="default 32")
    p.add_argument("--image_size", default=None, help="default: the dataset's")
    p.add_argument("--overwrite", action="store_true", default=None, help="re-run finished experiments")
    p.add_argument("--allow_mixed_starts", action="store_true", default=None,
                   help="run a method that combines parameters on sources fine-tuned from different starts "
                        "(refused otherwise; recorded in the result)")
    p.add_argument("--no-save-model", "--no_save_model", dest="save_model", action="store_false", default=None,
                   help="do not write the final model")
    p.add_argument("--batch_augment", action="store_true", default=None,
                   help="colour jitter and normalisation of the target's train batches as tensor ops on the device, "
                        "per batch (for a GPU; the same augmentation distribution)")
    add_run_options(p)


def build_parser(method: str | None, table: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"Run one {method or 'method'} experiment on a target bin.")
    if method is None:
        p.add_argument("--method", required=True, choices=sorted(table))
    p.add_argument("--dataset", default=None, help=f"{', '.join(list_datasets())}, or the folder of an imported "
                                                   "dataset (with its dataset_card.json)")
    p.add_argument("--model", "--model_name", dest="model", default=None, help="model name or alias")
    p.add_argument("--target", default=None, help="target bin (held out)")
    p.add_argument("--sources", nargs="+", default=None, help="source bins (default: the protocol's)")
    p.add_argument("--trial", default=None, help="trial number k >= 1 (default 1)")
    p.add_argument("--target_fraction", default=None, metavar="F",
                   help="label budget: use this share (0 < F <= 1) of the target's train and val images, a "
                        "stratified seeded subsample, the same for every method of a trial (default 1; results "
                        "under budgets/fraction-F/)")
    add_shared_experiment_flags(p)
    return p


def experiment_main(argv: list[str] | None = None, *, method: str | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=method)
    known, _ = pre.parse_known_args(argv)
    table = load_flag_table()
    p = build_parser(method, table)
    chosen = known.method if method is None else method
    owners = add_method_flags(p, [chosen], f"{chosen} hyper-parameters") if chosen in table else {}
    args = p.parse_args(argv)
    setup_logging(bool(args.verbose))

    def main() -> int:
        # The library is imported here, when work starts (see cli/common.py).
        from ..experiment.runner import run_experiment
        from ..experiment.settings import cli_layer, read_settings, resolve_experiment, resolve_method_config
        from ..methods import reference_method

        cli = cli_layer(args, exclude=("config", "verbose", "method"))
        file = read_settings(args.config)
        cfg, opts = resolve_experiment(file, cli, chosen, set(owners))
        # A ``matched`` budget follows the reference method's settings in the same file, as in a sweep.
        r = run_experiment(cfg, opts, reference_config=resolve_method_config(file, reference_method()))
        print(f"{r.method} {r.dataset}/{r.model} target {r.target} trial {r.trial}: test acc {r.test.accuracy:.4f} "
              f"(macro F1 {r.test.f1_macro:.4f}), peak memory {r.memory.peak_bytes / 2**20:.0f} MiB, "
              f"max models resident {r.memory.max_models_resident}, time {r.time.total_s:.1f}s")
        return 0

    return run_main(main)

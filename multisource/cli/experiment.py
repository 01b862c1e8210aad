"""CLI for one experiment: ``run_<method>_experiment.py --dataset D --target T --sources ... --model M``.

Method hyper-parameters become flags generated from the method's config dataclass, so a new method or
option needs no CLI change.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..config import build, pick
from .common import add_run_options, config_layers, run_main, setup_logging


def add_method_flags(p: argparse.ArgumentParser, config_cls: type, title: str) -> list[str]:
    """One flag per config field (``--field``); booleans get ``--field/--no-field``."""
    g = p.add_argument_group(title)
    names = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = f"--{f.name}"
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default {default}")
        else:
            typ = type(default) if default is not None and not isinstance(default, (tuple, list)) else str
            if f.name == "lora_alpha":
                typ = float
            g.add_argument(flag, type=typ, default=None, help=f"default {default}")
        names.append(f.name)
    return names


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None, help="drift_digits, clear10, clear100, yearbook")
    p.add_argument("--model", "--model_name", dest="model", default=None, help="model name or alias")
    p.add_argument("--target", default=None, help="target bin (held out)")
    p.add_argument("--sources", nargs="+", default=None, help="source bins (default: every other bin)")
    p.add_argument("--trial", type=int, default=None, help="trial number k >= 1 (default 1)")
    add_shared_experiment_flags(p)


def add_shared_experiment_flags(p: argparse.ArgumentParser) -> None:
    """Flags of one experiment that a sweep passes on to each of its experiments."""
    p.add_argument("--seed", type=int, default=None, help="base seed (default 42); trial k derives its own")
    p.add_argument("--batch_size", type=int, default=None, help="default 32")
    p.add_argument("--image_size", type=int, default=None, help="default: the dataset's")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--overwrite", action="store_true", default=None, help="re-run finished experiments")
    p.add_argument("--no-save-model", "--no_save_model", dest="save_model", action="store_false", default=None,
                   help="do not write the final model")
    add_run_options(p)


def experiment_main(argv: list[str] | None = None, *, method: str | None = None) -> int:
    from ..methods import get_method, list_methods

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=method)
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(description=f"Run one {method or 'method'} experiment on a target bin.")
    if method is None:
        p.add_argument("--method", required=True, choices=list_methods())
    add_experiment_arguments(p)
    chosen = known.method if method is None else method
    method_fields = add_method_flags(p, get_method(chosen).config_cls, f"{chosen} hyper-parameters") \
        if chosen in list_methods() else []
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        report = run_from_args(args, chosen, method_fields)
        t = report["test"]
        print(f"{report['method']} {report['dataset']}/{report['model']} target {report['target']} "
              f"trial {report['trial']}: test acc {t['accuracy']:.4f} (macro F1 {t['f1_macro']:.4f}), "
              f"peak memory {report['memory']['peak_bytes'] / 2**20:.0f} MiB, "
              f"max models resident {report['memory']['max_models_resident']}, time {report['time']['total_s']:.1f}s")
        return 0

    return run_main(main)


def run_from_args(args: argparse.Namespace, method: str, method_fields: list[str]) -> dict[str, Any]:
    from ..experiment.config import ExperimentConfig, ExperimentOptions
    from ..experiment.runner import run_experiment

    file_values, cli = config_layers(args)
    method_cfg = {**(file_values.get("method_config") or {}), **pick(file_values, _fields(method_fields)),
                  **{k: cli[k] for k in method_fields if k in cli}}
    exp_cli = {k: v for k, v in cli.items() if k not in method_fields}
    cfg = build(ExperimentConfig, pick(file_values, ExperimentConfig), pick(exp_cli, ExperimentConfig),
                {"method": method, "method_config": method_cfg})
    opts = build(ExperimentOptions, pick(file_values, ExperimentOptions), pick(exp_cli, ExperimentOptions))
    return run_experiment(cfg, opts)


def _fields(names: list[str]) -> type:
    return dataclasses.make_dataclass("_MethodFields", [(n, Any, None) for n in names])

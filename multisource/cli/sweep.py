"""CLI for sweeps and summaries: ``run_all.py``, the paper's ``run_all_<method>_<dataset>.py`` and ``summarize.py``.

Settings come from (lowest first) dataclass defaults, a ``--config`` YAML file, then command-line flags. In the
file, method hyper-parameters go either at the top level (applied to every method that has the field) or under
``methods: {grasp: {learning_rate: 1.0e-3}, ...}`` (one method); a flag applies to every selected method that
has the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..config import ConfigError, build, pick
from .common import config_layers, run_main, setup_logging
from .experiment import add_method_flags, add_shared_experiment_flags

FILE_ONLY_KEYS = ("model", "models", "methods", "source_training")
SECTIONS = ("sweep", "run")


def method_fields(methods: list[str]) -> dict[str, list[str]]:
    """Hyper-parameter name -> the methods (of ``methods``) whose config has it."""
    from ..methods import get_method

    owners: dict[str, list[str]] = {}
    for m in methods:
        for f in dataclasses.fields(get_method(m).config_cls):
            owners.setdefault(f.name, []).append(get_method(m).name)
    return owners


def _union_config(methods: list[str]) -> type:
    """A dataclass with every hyper-parameter of ``methods`` once (the first method's default), for the flags."""
    from ..methods import get_method

    fields: dict[str, Any] = {}
    for m in methods:
        for f in dataclasses.fields(get_method(m).config_cls):
            default = None if f.default is dataclasses.MISSING else f.default
            fields.setdefault(f.name, (f.name, Any, dataclasses.field(default=default)))
    return dataclasses.make_dataclass("MethodFlags", list(fields.values()))


def build_parser(method: str | None = None, dataset: str | None = None) -> argparse.ArgumentParser:
    from ..methods import list_methods

    what = f"{method} " if method else ""
    p = argparse.ArgumentParser(description=f"Leave-one-bin-out {what}sweep{' on ' + dataset if dataset else ''}: "
                                            "every target x trial (x method x model); finished experiments are "
                                            "skipped, failures recorded, summaries written at the end.")
    if dataset is None:
        p.add_argument("--dataset", default=None, help="drift_digits (default), clear10, clear100, yearbook")
    p.add_argument("--model", "--model_name", "--models", dest="models", nargs="+", default=None,
                   help="model name(s) or aliases (default tiny-resnet)")
    if method is None:
        p.add_argument("--methods", nargs="+", default=None, help="default: ensemble fusion grasp pearl")
    p.add_argument("--targets", nargs="+", default=None, help="target bins (default: every bin)")
    p.add_argument("--num_trials", type=int, default=None, help="trials per target (default 3)")
    add_shared_experiment_flags(p)
    g = p.add_argument_group("execution")
    g.add_argument("--executor", choices=("local", "ray"), default=None, help="local (default) or ray")
    g.add_argument("--workers", type=int, default=None,
                   help="local: run N experiments at once in N processes; ray: CPUs of a local Ray instance")
    g.add_argument("--ray_address", default=None, help="address of an existing Ray cluster (e.g. auto)")
    g.add_argument("--ray_cpus_per_task", type=int, default=None, help="CPUs (torch threads) per Ray task (1)")
    g.add_argument("--train_missing", action="store_true", default=None,
                   help="train missing source checkpoints before the sweep (otherwise: list them and stop)")
    g.add_argument("--no_summary", dest="summarize", action="store_false", default=None,
                   help="do not write summaries at the end")
    g.add_argument("--dry_run", action="store_true", help="list the experiments and their state; run nothing")
    chosen = [method] if method else list_methods()
    add_method_flags(p, _union_config(chosen), "method hyper-parameters (each applies to every selected method "
                                               "that has it)")
    return p


def flatten_sections(values: dict) -> dict:
    """Accept a sectioned file too (``sweep:``, ``run:``, ``sources:``, ``data:``, as configs/demo.yaml has):
    sweep and run keys count as top-level keys, ``sources`` is the source training of --train_missing and
    ``data`` (how the dataset is built) is not a sweep setting."""
    out = {k: v for k, v in values.items() if k not in SECTIONS + ("sources", "data")}
    for section in SECTIONS:
        out.update(values.get(section) or {})
    if isinstance(values.get("sources"), dict):
        out.setdefault("source_training", values["sources"])
    return out


def configs_from_args(args: argparse.Namespace, method: str | None = None, dataset: str | None = None):
    """(SweepConfig, ExperimentOptions, SweepOptions) from --config and the flags."""
    from ..experiment.config import ExperimentOptions
    from ..experiment.sweep import PAPER_METHODS, SweepConfig, SweepOptions
    from ..methods import get_method, list_methods

    file_values, cli = config_layers(args)
    file_values = flatten_sections(file_values)
    owners = method_fields(list_methods())
    known = {f.name for cls in (SweepConfig, ExperimentOptions, SweepOptions) for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - known - set(owners) - set(FILE_ONLY_KEYS))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {args.config}. Valid: sweep and run settings "
                          f"({', '.join(sorted(known))}), 'methods', 'model', 'source_training' or a method "
                          f"hyper-parameter ({', '.join(sorted(owners))}).")
    file_methods = file_values.get("methods")
    per_method = {get_method(m).name: dict(v or {}) for m, v in {
        **(file_values.get("method_configs") or {}), **(file_methods if isinstance(file_methods, dict) else {})
    }.items()}
    listed = list(file_methods) if isinstance(file_methods, dict) else file_methods
    methods = [method] if method else (cli.get("methods") or listed or list(PAPER_METHODS))
    methods = [get_method(m).name for m in ([methods] if isinstance(methods, str) else methods)]
    flags = {k: v for k, v in cli.items() if k in owners}
    stray = [k for k in flags if not set(owners[k]) & set(methods)]
    if stray:
        owning = sorted({m for k in stray for m in owners[k]})
        raise ConfigError(f"Flag(s) {['--' + k for k in stray]} apply to {owning}, which this sweep does not run "
                          f"(methods: {methods}).")
    configs = {}
    for m in methods:
        mine = set(method_fields([m]))
        shared = {k: v for k, v in file_values.items() if k in mine}
        configs[m] = {**shared, **per_method.get(m, {}), **{k: v for k, v in flags.items() if k in mine}}
    models = cli.get("models") or file_values.get("models") or file_values.get("model")
    fixed = {"methods": tuple(methods), "method_configs": configs,
             "source_training": file_values.get("source_training") or {}}
    if models:
        fixed["models"] = models
    if dataset:
        fixed["dataset"] = dataset
    sweep_cfg = build(SweepConfig, pick(file_values, SweepConfig), pick(cli, SweepConfig), fixed)
    options = build(ExperimentOptions, pick(file_values, ExperimentOptions), pick(cli, ExperimentOptions))
    sweep_opts = build(SweepOptions, pick(file_values, SweepOptions), pick(cli, SweepOptions))
    return sweep_cfg, options, sweep_opts


def _progress(job, outcome, n: int, total: int) -> None:
    head = f"[{n}/{total}] {job.label}:"
    if outcome.status == "failed":
        from ..experiment.sweep import failure_paths

        print(f"{head} FAILED {outcome.error_type}: {outcome.message} (traceback: {failure_paths(job.out_dir)[1]})",
              flush=True)
    elif outcome.status == "finished":
        print(f"{head} test acc {outcome.test_accuracy:.4f} ({outcome.time_s:.1f} s)", flush=True)
    else:
        print(f"{head} {outcome.status}", flush=True)


def print_result(result) -> None:
    from ..experiment.sweep import failure_paths

    print(f"\n{len(result.outcomes)} experiments: {len(result.finished)} finished now, {len(result.skipped)} "
          f"already finished (skipped), {len(result.failed)} failed.")
    for o in result.failed:
        print(f"  FAILED {o.model} {o.method} {o.target} trial {o.trial}: {o.error_type}: {o.message}\n"
              f"         traceback: {failure_paths(Path(o.out_dir))[1]}", file=sys.stderr)
    for model, paths in result.summaries.items():
        md = paths.get("comparison_md")
        print(f"\nSummaries for {model}: {md.parent if md else '-'}")
        if md:
            print(md.read_text(encoding="utf-8"))


def sweep_main(argv: list[str] | None = None, *, method: str | None = None, dataset: str | None = None) -> int:
    """Entry point of run_all.py (method/dataset None) and of the paper-named wrappers (both fixed)."""
    args = build_parser(method, dataset).parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        from ..experiment.sweep import SweepError, describe_plan, missing_checkpoints, plan_jobs, run_sweep

        config, options, sweep = configs_from_args(args, method, dataset)
        if args.dry_run:
            jobs = plan_jobs(config, options)
            print(f"{len(jobs)} experiments ({config.dataset}; models {list(config.models)}; methods "
                  f"{list(config.methods)}; {config.num_trials} trial(s)):\n{describe_plan(jobs)}")
            for model, items in missing_checkpoints(config, options, jobs).items():
                print(f"missing source checkpoints for {model}: {[b for b, _ in items]}")
            return 0
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # `kill` acts as Ctrl-C
        try:
            result = run_sweep(config, options, sweep, progress=_progress)
        except SweepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("Interrupted: finished experiments are kept and nothing half-written is left; run the same "
                  "command again to continue.", file=sys.stderr)
            return 130
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        print_result(result)
        return 1 if result.failed else 0

    return run_main(main)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def summarize_main(argv: list[str] | None = None) -> int:
    """Rebuild the summaries of (dataset, model) from whatever metrics.json files exist."""
    p = argparse.ArgumentParser(description="Rebuild JSON/Markdown/CSV summaries and plots from the "
                                            "per-experiment metrics.json files.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", "--model_name", "--models", dest="models", nargs="+", required=True)
    p.add_argument("--results_dir", default=None, help="results root (default: <project>/results)")
    p.add_argument("--no_plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        from ..experiment.config import ExperimentOptions
        from ..experiment.summary import write_summaries

        root = ExperimentOptions(results_dir=args.results_dir).results_path()
        for model in args.models:
            paths = write_summaries(root, args.dataset, model, plots=args.plots)
            print(paths["comparison_md"].read_text(encoding="utf-8"))
            print("Written:\n" + "\n".join(f"  {p}" for p in paths.values()))
        return 0

    return run_main(main)

"""CLI for sweeps and summaries: ``run_all.py``, the paper's ``run_all_<method>_<dataset>.py`` and ``summarize.py``.

Settings come from (lowest first) dataclass defaults, a ``--config`` settings file, then command-line flags
(see :mod:`multisource.experiment.settings`); a method flag applies to every selected method that has the field.
The library is imported inside each command's ``main``, when work starts (see cli/common.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from ..data.datasets import list_datasets
from .common import add_executor_options, run_main, setup_logging
from .experiment import add_method_flags, add_shared_experiment_flags
from .generated import load_flag_table


def build_parser(method: str | None = None, dataset: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The sweep parser and, for each method flag, the methods that have it."""
    table = load_flag_table()
    what = f"{method} " if method else ""
    p = argparse.ArgumentParser(description=f"Leave-one-bin-out {what}sweep{' on ' + dataset if dataset else ''}: "
                                            "every target x trial (x method x model); finished experiments are "
                                            "skipped, failures recorded, summaries written at the end.")
    if dataset is None:
        p.add_argument("--dataset", default=None, help=f"{', '.join(list_datasets())} (default drift_digits), or "
                                                       "the folder of an imported dataset")
    p.add_argument("--model", "--model_name", "--models", dest="models", nargs="+", default=None,
                   help="model name(s) or aliases (default tiny-resnet)")
    if method is None:
        p.add_argument("--methods", nargs="+", default=None, choices=sorted(table),
                       help="default: ensemble fusion grasp pearl target_only source_finetune")
    p.add_argument("--targets", nargs="+", default=None,
                   help="target bins, 'all' (default: every bin) or 'newest' (the last bin in time order)")
    p.add_argument("--num_trials", default=None, help="trials per target (default 3)")
    p.add_argument("--target_fractions", "--target_fraction", dest="target_fractions", nargs="+", default=None,
                   metavar="F", help="label budgets: run every experiment at each share of the target's train and "
                                     "val images (e.g. 0.05 0.25 1; default 1) and write the data-efficiency "
                                     "summary over them")
    p.add_argument("--num_sources", nargs="+", default=None, metavar="K",
                   help="the number of sources as an axis: run every target with its K nearest earlier bins as "
                        "sources for each K (e.g. 1 2 4 8 12) and write protocols/num_sources.{md,csv,json,png,pdf}: "
                        "accuracy and models resident against K")
    add_shared_experiment_flags(p)
    add_executor_options(p)
    g = p.add_argument_group("sweep")
    g.add_argument("--train_missing", action="store_true", default=None,
                   help="train missing source checkpoints before the sweep (otherwise: list them and stop)")
    g.add_argument("--no_summary", dest="summarize", action="store_false", default=None,
                   help="do not write summaries at the end")
    g.add_argument("--dry_run", action="store_true", help="list the experiments and their state; run nothing")
    g.add_argument("--save_model", dest="save_model", action="store_true", default=None,
                   help="write each experiment's final model (default for sweeps: not written; no summary reads "
                        "them, and each is a full model)")
    owners = add_method_flags(p, [method] if method else sorted(table),
                              "method hyper-parameters (each applies to every selected method that has it)")
    return p, owners


class SweepProgress:
    """One line per experiment as it ends, with done / failed / remaining and an ETA, and a line every
    ``interval_s`` while experiments run (so a sweep under nohup or SLURM is never silent for long)."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s, self.t0, self.last = interval_s, time.monotonic(), time.monotonic()
        self.done = self.failed = 0
        self.total: int | None = None
        self.stop = threading.Event()
        threading.Thread(target=self._beat, name="sweep-progress", daemon=True).start()

    def counts(self) -> str:
        elapsed = time.monotonic() - self.t0
        if self.total is None:
            return f"{_clock(elapsed)} elapsed, no experiment has ended yet"
        ended = self.done + self.failed
        remaining = (self.total or 0) - ended
        eta = f"ETA {_clock(elapsed / ended * remaining)}" if ended and remaining else "ETA after the first result"
        return (f"{self.done} done, {self.failed} failed, {remaining} remaining, {_clock(elapsed)} elapsed"
                + (f", {eta}" if remaining else ""))

    def __call__(self, job, outcome, n: int, total: int) -> None:
        from ..failures import failure_paths

        self.total, self.last = total, time.monotonic()
        head = f"[{n}/{total}] {job.label}:"
        if outcome.status == "failed":
            self.failed += 1
            line = (f"{head} FAILED {outcome.error_type}: {outcome.message} (traceback: "
                    f"{failure_paths(job.out_dir)[1]})")
        else:
            self.done += 1
            line = (f"{head} test acc {outcome.test_accuracy:.4f} ({outcome.time_s:.1f} s)"
                    if outcome.status == "finished" else f"{head} {outcome.status}")
        print(f"{line} | {self.counts()}", flush=True)

    def _beat(self) -> None:
        while not self.stop.wait(5.0):
            if time.monotonic() - self.last >= self.interval_s:
                self.last = time.monotonic()
                print(f"... still running: {self.counts()}", flush=True)

    def close(self) -> None:
        self.stop.set()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def print_result(result) -> None:
    from ..failures import failure_paths

    print(f"\n{len(result.outcomes)} experiments: {len(result.finished)} finished now, {len(result.skipped)} "
          f"already finished (skipped), {len(result.failed)} failed.")
    for target, why in result.skipped_targets.items():
        print(f"  target {target} not run: {why}")
    for o in result.failed:
        print(f"  FAILED {o.model} {o.method} {o.target} trial {o.trial}: {o.error_type}: {o.message}\n"
              f"         traceback: {failure_paths(Path(o.out_dir))[1]}", file=sys.stderr)
    for model, paths in result.summaries.items():
        if paths.get("num_sources_md"):  # a K axis: each K's comparison in its folder, the summary over K here
            folders = sorted({str(p.parent) for name, p in paths.items() if name.endswith("/comparison_md")})
            print(f"\nSummaries for {model}: {paths['num_sources_md'].parent} (each K's: " + ", ".join(folders) + ")")
            print(paths["num_sources_md"].read_text(encoding="utf-8"))
            continue
        md = paths.get("comparison_md")
        print(f"\nSummaries for {model}: {md.parent if md else '-'}")
        for name in ("comparison_md", "data_efficiency_md", "stream_md"):
            if paths.get(name):
                print(paths[name].read_text(encoding="utf-8"))


def sweep_main(argv: list[str] | None = None, *, method: str | None = None, dataset: str | None = None) -> int:
    """Entry point of run_all.py (method/dataset None) and of the paper-named wrappers (both fixed)."""
    parser, owners = build_parser(method, dataset)
    args = parser.parse_args(argv)
    setup_logging(bool(args.verbose))

    def main() -> int:
        from ..experiment.settings import cli_layer, read_settings, resolve_sweep
        from ..experiment.sweep import SweepError, describe_plan, missing_checkpoints, plan_sweep, run_sweep
        from ..methods import get_method
        from ..paths import split_label

        cli = cli_layer(args, exclude=("config", "verbose", "dry_run"))
        config, opts = resolve_sweep(read_settings(args.config), cli, method=method, dataset=dataset,
                                     method_flags=owners)
        plan = plan_sweep(config, opts)
        if args.dry_run:
            once = [m for m in plan.method_configs if get_method(split_label(m)[0]).deterministic]
            print(f"{len(plan.jobs)} experiments ({plan.handle.info.name}, protocol "
                  f"{', '.join(config.protocols())}; models "
                  f"{list(config.models)}; methods {list(plan.method_configs)}; {config.num_trials} trial(s)"
                  + (f", {', '.join(once)} once per target: deterministic" if once else "")
                  + f"):\n{describe_plan(plan.jobs)}")
            for model, items in missing_checkpoints(plan, plan.jobs).items():
                print(f"missing source checkpoints for {model}: {[b for b, _ in items]}")
            return 0
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # `kill` acts as Ctrl-C
        progress = SweepProgress()
        try:
            result = run_sweep(plan, opts, progress=progress)
        except SweepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("Interrupted: finished experiments are kept and nothing half-written is left; run the same "
                  "command again to continue.", file=sys.stderr)
            return 130
        finally:
            progress.close()
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
    p.add_argument("--dataset", required=True, help="a registered dataset or an imported dataset's folder")
    p.add_argument("--protocol", default="leave-one-out",
                   help="the protocol whose results to summarize (leave-one-out, past, window:N, stream)")
    p.add_argument("--protocols", nargs="+", default=None, metavar="PROTOCOL",
                   help="put these protocols side by side (e.g. leave-one-out past): each method's accuracy under "
                        "each and the difference to the first, paired on the same test examples")
    p.add_argument("--num_sources", nargs="+", type=int, default=None, metavar="K",
                   help="rebuild the summary against the number of sources from a --num_sources sweep's results "
                        "(each K's comparison and protocols/num_sources.*)")
    p.add_argument("--model", "--model_name", "--models", dest="models", nargs="+", required=True)
    p.add_argument("--results_dir", default=None, help="results root (default: <project>/results)")
    p.add_argument("--no_plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.add_argument("--config", default=None, help="settings file; its run: section's results_dir applies")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def main() -> int:
        from ..experiment.settings import cli_layer, read_settings, resolve_options
        from ..experiment.efficiency import budgets_on_disk, write_data_efficiency
        from ..experiment.protocols import STREAM, canonical_protocol
        from ..experiment.stream import write_stream_summary
        from ..experiment.summary import _dataset_name, collect, write_summaries
        from ..models.factory import resolve_model
        from ..paths import budget_folder
        from ..utils.io import read_json

        opts = resolve_options(read_settings(args.config), cli_layer(args, exclude=("config", "verbose", "dataset",
                                                                                    "protocol", "protocols", "models",
                                                                                    "plots", "num_sources")))
        root, protocol = opts.results_path(), canonical_protocol(args.protocol)
        if args.num_sources:
            from ..experiment.num_sources import write_num_sources

            for model in args.models:
                for k in sorted(set(args.num_sources)):
                    if collect(root, _dataset_name(args.dataset), resolve_model(model).name, f"window:{k}"):
                        write_summaries(root, args.dataset, model, plots=args.plots, protocol=f"window:{k}")
                paths = write_num_sources(root, args.dataset, model, args.num_sources, plots=args.plots)
                print(paths["num_sources_md"].read_text(encoding="utf-8"))
                print("Written:\n" + "\n".join(f"  {p}" for p in paths.values()))
            return 0
        if args.protocols:
            from ..experiment.side_by_side import write_side_by_side

            for model in args.models:
                for each in args.protocols:
                    write_summaries(root, args.dataset, model, plots=args.plots, protocol=each)
                paths = write_side_by_side(root, args.dataset, model, args.protocols)
                print(paths["protocols_md"].read_text(encoding="utf-8"))
                print("Written:\n" + "\n".join(f"  {p}" for p in paths.values()))
            return 0
        for model in args.models:
            # every label budget on disk gets its summaries; with budgets below 1, the data-efficiency summary
            budgets = budgets_on_disk(root, _dataset_name(args.dataset), resolve_model(model).name, protocol) or [1.0]
            paths: dict = {}
            for fraction in budgets:  # the whole target's under their plain names, the others' prefixed
                written = write_summaries(root, args.dataset, model, plots=args.plots, protocol=protocol,
                                          fraction=fraction)
                prefix = "" if fraction == budgets[-1] else f"{budget_folder(fraction)}/"
                paths.update({prefix + name: p for name, p in written.items()})
            if budgets != [1.0]:
                paths.update(write_data_efficiency(root, args.dataset, model, protocol, plots=args.plots))
                print(paths["data_efficiency_md"].read_text(encoding="utf-8"))
            if protocol == STREAM:
                paths.update(write_stream_summary(root, args.dataset, model, plots=args.plots, fraction=budgets[-1]))
                print(paths["stream_md"].read_text(encoding="utf-8"))
            print(paths["comparison_md"].read_text(encoding="utf-8"))
            print("Written:\n" + "\n".join(f"  {p}" for p in paths.values()))
            damaged = [f for name, p in paths.items() if p.suffix == ".json" and p.parent.name == "summaries"
                       and p.stem not in ("comparison", "data_efficiency")
                       for f in read_json(p).get("failed", [])
                       if f.get("error_type") in ("UnreadableResult", "InvalidResult")]
            for f in damaged:  # counted as failed in the summaries; said here too, never hidden
                if f["error_type"] == "InvalidResult":
                    print(f"invalid result (counted as failed, not averaged): {f['message']}", file=sys.stderr)
                else:
                    print(f"unreadable result (counted as failed): {f['record_file']}", file=sys.stderr)
        return 0

    return run_main(main)

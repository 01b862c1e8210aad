"""Leave-one-bin-out sweeps: every target x trial x method x model, resumable and failure-tolerant.

A sweep is a deterministic list of experiments (model, method, target in bin order, trial). Finished ones
(a valid metrics.json) are skipped, so an interrupted sweep continues where it stopped; a failing one is
recorded beside its folder (``trial_<k>.failed.json`` + ``trial_<k>.traceback.txt``) and the others go on.
Results are read back from the metrics.json files, so every executor gives the same summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, check_choice, check_range
from ..data.datasets import get_dataset
from ..data.loaders import DatasetHandle, open_dataset
from ..methods import get_method
from ..methods.api import make_config
from ..models.factory import resolve_model
from ..utils.io import read_json, write_json, write_text
from .config import ExperimentConfig, ExperimentOptions
from .executors import EXECUTORS, Outcome, make_executor
from .runner import METRICS_FILE, is_finished, output_dir

log = logging.getLogger(__name__)
PAPER_METHODS = ("ensemble", "fusion", "grasp", "pearl")


class MissingSourceCheckpoints(FileNotFoundError):
    """Source checkpoints a sweep needs do not exist (the message says how to train them)."""


class SweepError(RuntimeError):
    """The sweep could not start (e.g. training a missing source model failed)."""


@dataclass
class SweepConfig:
    """What a sweep runs. ``method_configs`` maps a method to its hyper-parameters (its config's fields)."""

    dataset: str = "drift_digits"
    models: tuple[str, ...] = ("tiny-resnet",)
    methods: tuple[str, ...] = PAPER_METHODS
    targets: tuple[str, ...] = ()  # default: every bin of the dataset
    num_trials: int = 3
    seed: int = 42  # trial k derives its own seed from this one (the runner does, via trial_seed)
    batch_size: int = 32
    image_size: int | None = None
    method_configs: dict[str, dict] = field(default_factory=dict)
    source_training: dict = field(default_factory=dict)  # SourceTrainConfig fields for --train_missing

    def __post_init__(self) -> None:
        info = get_dataset(self.dataset)
        self.dataset = info.name
        self.models = _as_tuple(self.models)
        self.methods = tuple(get_method(m).name for m in _as_tuple(self.methods))
        self.targets = _as_tuple(self.targets)
        check_range(self, "num_trials", 1)
        check_range(self, "batch_size", 1)
        for name in ("models", "methods", "targets"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"SweepConfig.{name} lists a value twice: {list(values)}.")
        if not self.models or not self.methods:
            raise ConfigError("A sweep needs at least one model and one method (--model, --methods).")
        for m in self.models:
            resolve_model(m)  # unknown names fail now, not after hours of other experiments
        unknown = [t for t in self.targets if t not in info.bins]
        if unknown:
            raise ConfigError(f"--targets {unknown} are not bins of {info.name}; its bins are {list(info.bins)}.")
        if self.source_training:
            from ..training.source import SourceTrainConfig

            unknown = sorted(set(self.source_training) - {f.name for f in dataclasses.fields(SourceTrainConfig)})
            if unknown:
                raise ConfigError(f"Unknown source_training field(s) {unknown}; valid: SourceTrainConfig's fields.")
        configs = {}
        for method, values in (self.method_configs or {}).items():
            spec = get_method(method)
            values = coerce_numbers(spec.config_cls, dict(values or {}))
            make_config(spec.name, values)  # unknown fields or bad values fail before any work
            configs[spec.name] = values
        self.method_configs = configs

    def method_config(self, method: str) -> dict:
        return dict(self.method_configs.get(get_method(method).name, {}))


@dataclass
class SweepOptions:
    """How a sweep runs (where the per-experiment 'how' is an ExperimentOptions)."""

    executor: str = "local"
    workers: int = 1  # local: >1 runs that many processes; ray: CPUs of a local Ray instance (default: all)
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001", ...)
    ray_cpus_per_task: int = 1
    train_missing: bool = False
    summarize: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "executor", EXECUTORS)
        check_range(self, "workers", 1)
        check_range(self, "ray_cpus_per_task", 1)


@dataclass(frozen=True)
class Job:
    config: ExperimentConfig
    out_dir: Path

    @property
    def label(self) -> str:
        c = self.config
        return f"{c.model} {c.method} {c.target} trial {c.trial}"


@dataclass
class SweepResult:
    outcomes: list[Outcome]
    summaries: dict[str, dict[str, Path]] = field(default_factory=dict)  # model -> {name: path}
    logs: list[Path] = field(default_factory=list)

    def _with(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def finished(self) -> list[Outcome]:
        return self._with("finished")

    @property
    def skipped(self) -> list[Outcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[Outcome]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def coerce_numbers(config_cls: type, values: dict) -> dict:
    """YAML reads ``1e-3`` as a string (it wants ``1.0e-3``); turn such strings into the field's number type."""
    types = {f.name: str(f.type) for f in dataclasses.fields(config_cls)}
    out = dict(values)
    for k, v in values.items():
        if isinstance(v, str) and k in types:
            for typ in (int, float):
                if typ.__name__ in types[k]:
                    try:
                        out[k] = typ(v)
                        break
                    except ValueError:
                        continue
    return out


def plan_jobs(config: SweepConfig, options: ExperimentOptions, handle: DatasetHandle | None = None) -> list[Job]:
    """Every experiment of the sweep in a fixed order: model, method, target (bin order), trial."""
    handle = handle or open_dataset(config.dataset, options.data_root)
    targets = [b for b in handle.bins if b in config.targets] if config.targets else list(handle.bins)
    handle.check_bins(*(config.targets or targets))
    jobs = []
    for model in config.models:
        for method in config.methods:
            for target in targets:
                sources = tuple(b for b in handle.bins if b != target)  # chronological
                for trial in range(1, config.num_trials + 1):
                    cfg = ExperimentConfig(dataset=config.dataset, model=model, method=method, target=target,
                                           sources=sources, trial=trial, seed=config.seed,
                                           batch_size=config.batch_size, image_size=config.image_size,
                                           method_config=config.method_config(method))
                    jobs.append(Job(cfg, output_dir(cfg, options)))
    return jobs


def config_mismatch(job: Job, image_size: int) -> str | None:
    """Why a finished experiment's recorded config differs from the one asked for (None when it matches)."""
    try:
        rec = read_json(job.out_dir / METRICS_FILE)["config"]
    except (OSError, ValueError, KeyError):
        return None
    c = job.config
    wanted = {"method_config": dataclasses.asdict(make_config(c.method, c.method_config)), "base_seed": c.seed,
              "batch_size": c.batch_size, "image_size": c.image_size or image_size, "sources": sorted(c.sources)}
    found = {**{k: rec.get(k) for k in wanted}, "sources": sorted(rec.get("sources") or [])}
    wanted = json.loads(json.dumps(wanted))
    mc_found, mc_wanted = found.pop("method_config") or {}, wanted.pop("method_config")
    found.update({f"method_config.{k}": mc_found.get(k) for k in set(mc_found) | set(mc_wanted)})
    wanted.update({f"method_config.{k}": mc_wanted.get(k) for k in set(mc_found) | set(mc_wanted)})
    diffs = [f"{k}: found {found[k]!r}, asked for {wanted[k]!r}" for k in sorted(wanted) if found[k] != wanted[k]]
    return "; ".join(diffs) or None


def missing_checkpoints(config: SweepConfig, options: ExperimentOptions, jobs: list[Job]) -> dict[str, list]:
    """Source checkpoints the pending jobs need that do not exist, per model: [(bin, path), ...]."""
    from ..training.source import RunOptions, SourceTrainConfig, source_checkpoint_path

    ropts = RunOptions(results_dir=options.results_dir, checkpoint_dir=options.checkpoint_dir)
    missing: dict[str, list] = {}
    for model in config.models:
        needed = {b for j in jobs if j.config.model == model for b in j.config.sources}
        for b in sorted(needed, key=list(get_dataset(config.dataset).bins).index):
            path = source_checkpoint_path(SourceTrainConfig(dataset=config.dataset, bin=b, model_name=model), ropts)
            if not path.is_file():
                missing.setdefault(model, []).append((b, path))
    return missing


def train_command(dataset: str, model: str, options: ExperimentOptions, bins: list[str]) -> str:
    cmd = f"python baseline_training/train_all_subsets.py --dataset {dataset} --model_name {model}"
    for flag in ("data_root", "results_dir", "checkpoint_dir"):
        if getattr(options, flag):
            cmd += f" --{flag} {getattr(options, flag)}"
    return cmd + f" --bins {' '.join(bins)}"


def ensure_checkpoints(config: SweepConfig, options: ExperimentOptions, train_missing: bool,
                       jobs: list[Job]) -> list[str]:
    """Train missing source checkpoints (``train_missing``) or raise listing them and the command to train them."""
    missing = missing_checkpoints(config, options, jobs)
    if not missing:
        return []
    if not train_missing:
        lines = [f"Missing source checkpoints for {config.dataset}:"]
        for model, items in missing.items():
            lines += [f"  {resolve_model(model).name} {b}: {p}" for b, p in items]
            lines.append(f"  train them with: {train_command(config.dataset, model, options, [b for b, _ in items])}")
        lines.append("or re-run this sweep with --train_missing (or pass --checkpoint_dir to existing ones).")
        raise MissingSourceCheckpoints("\n".join(lines))
    return _train_missing(config, options, missing)


def _train_missing(config: SweepConfig, options: ExperimentOptions, missing: dict[str, list]) -> list[str]:
    from ..training.bins import train_all_bins
    from ..config import build
    from ..training.source import PRECISIONS, RunOptions, SourceTrainConfig

    accelerator = {"cuda": "gpu", "cpu": "cpu"}.get(options.device, "auto")
    ropts = RunOptions(accelerator=accelerator, num_workers=options.num_workers, data_root=options.data_root,
                       results_dir=options.results_dir, checkpoint_dir=options.checkpoint_dir, progress=False,
                       precision=options.precision if options.precision in PRECISIONS else "auto")
    trained = []
    for model, items in missing.items():
        tcfg = build(SourceTrainConfig, {"image_size": config.image_size, "seed": config.seed},
                     coerce_numbers(SourceTrainConfig, config.source_training),
                     {"dataset": config.dataset, "model_name": model})
        bins = [b for b, _ in items]
        log.info("Training missing source checkpoints for %s: %s", model, bins)
        results = train_all_bins(tcfg, ropts, bins)
        failed = {b: r["detail"] for b, r in results.items() if r["status"] == "failed"}
        if failed:
            raise SweepError(f"Training source models failed, so the sweep did not start: {failed}. Fix the "
                               f"cause and re-run, or train them with: "
                               f"{train_command(config.dataset, model, options, list(failed))}")
        trained += [f"{model}/{b}" for b in bins]
    return trained


def failure_paths(out_dir: Path) -> tuple[Path, Path]:
    """Where a failed experiment is recorded: beside its (absent) folder, never inside it."""
    return out_dir.with_name(f"{out_dir.name}.failed.json"), out_dir.with_name(f"{out_dir.name}.traceback.txt")


def record_outcome(job: Job, outcome: Outcome) -> None:
    """Write a failure record, or remove a stale one once the experiment has finished."""
    record, tb = failure_paths(job.out_dir)
    if outcome.status != "failed":
        record.unlink(missing_ok=True)
        tb.unlink(missing_ok=True)
        return
    write_text(tb, outcome.traceback or "")
    write_json(record, {"status": "failed", "error_type": outcome.error_type, "message": outcome.message,
                        "traceback_file": tb.name, "time_s": outcome.time_s,
                        "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "config": dataclasses.asdict(job.config)})


def remove_stale_staging(out_dir: Path) -> None:
    """Staging folders left by a killed run of this machine (its process is gone) are removed."""
    for p in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def split_finished(jobs: list[Job], overwrite: bool, image_size: int) -> tuple[list[Job], list[Job]]:
    """(finished, to run). A finished experiment run with other settings is an error, not a silent skip."""
    done = [] if overwrite else [j for j in jobs if is_finished(j.out_dir)]
    conflicts = [f"  {j.out_dir}: {why}" for j in done if (why := config_mismatch(j, image_size))]
    if conflicts:
        raise ConfigError("Finished experiments were run with a different configuration than this sweep asks "
                          "for:\n" + "\n".join(conflicts[:20]) + "\nPass --overwrite to re-run them, or use "
                          "another --results_dir.")
    done_ids = {id(j) for j in done}
    return done, [j for j in jobs if id(j) not in done_ids]


def run_sweep(config: SweepConfig, options: ExperimentOptions | None = None, sweep: SweepOptions | None = None,
              progress: Callable[[Job, Outcome, int, int], None] | None = None) -> SweepResult:
    """Run every experiment of ``config`` that has not finished yet, then write the summaries."""
    options = options or ExperimentOptions()
    sweep = sweep or SweepOptions()
    if options.checkpoint_dir and len(config.models) > 1:
        raise ConfigError(f"--checkpoint_dir holds one model's checkpoints, but this sweep runs {list(config.models)};"
                          " run one model per sweep or use the default checkpoint locations.")
    handle = open_dataset(config.dataset, options.data_root)
    jobs = plan_jobs(config, options, handle)
    done, pending = split_finished(jobs, options.overwrite, handle.info.image_size)
    ensure_checkpoints(config, options, sweep.train_missing, pending)
    outcomes = {id(j): Outcome.for_config(j.config, "skipped", j.out_dir) for j in done}
    for j in done:
        record_outcome(j, outcomes[id(j)])
    log.info("Sweep %s: %d experiments, %d already finished, %d to run (%s executor)", config.dataset, len(jobs),
             len(done), len(pending), sweep.executor)
    started = datetime.now(timezone.utc)
    try:
        if sweep.executor == "local":
            for j in pending:
                remove_stale_staging(j.out_dir)
        with make_executor(sweep.executor, sweep.workers, sweep.ray_address, sweep.ray_cpus_per_task) as ex:
            for n, outcome in enumerate(ex.run([(i, j.config, options) for i, j in enumerate(pending)]), 1):
                job = pending[outcome.index]
                record_outcome(job, outcome)
                outcomes[id(job)] = outcome
                if progress:
                    progress(job, outcome, n, len(pending))
    finally:
        result = SweepResult([outcomes[id(j)] for j in jobs if id(j) in outcomes])
        result.logs = write_sweep_logs(config, options, sweep, jobs, outcomes, started)
    if sweep.summarize:
        from .summary import write_summaries

        for model in config.models:
            result.summaries[model] = write_summaries(options.results_path(), config.dataset, model)
    return result


def write_sweep_logs(config: SweepConfig, options: ExperimentOptions, sweep: SweepOptions, jobs: list[Job],
                     outcomes: dict, started: datetime) -> list[Path]:
    """One JSON per model under results/<dataset>/<model>/sweeps/: what was asked for and what happened."""
    stamp = started.strftime("%Y%m%d-%H%M%S")
    paths = []
    for model in config.models:
        name = resolve_model(model).name
        mine = [j for j in jobs if j.config.model == model]
        entries = [{**(dataclasses.asdict(outcomes[id(j)]) if id(j) in outcomes else {"status": "not run"}),
                    "out_dir": str(j.out_dir)} for j in mine]
        for e in entries:
            e.pop("traceback", None)  # kept in the traceback file beside the experiment
        counts = {s: sum(e["status"] == s for e in entries) for s in ("finished", "skipped", "failed", "not run")}
        path = options.results_path() / config.dataset / name / "sweeps" / f"sweep-{stamp}-{os.getpid()}.json"
        write_json(path, {"started_at": started.isoformat(timespec="seconds"),
                          "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "counts": counts, "config": dataclasses.asdict(config),
                          "options": dataclasses.asdict(options), "sweep_options": dataclasses.asdict(sweep),
                          "experiments": entries})
        paths.append(path)
    return paths


def describe_plan(jobs: list[Job]) -> str:
    """One line per experiment with its state (finished / to run), for --dry_run."""
    lines = []
    for j in jobs:
        state = "finished" if is_finished(j.out_dir) else ("failed before" if failure_paths(j.out_dir)[0].exists()
                                                            else "to run")
        lines.append(f"  {j.label:<48} {state}")
    return "\n".join(lines)

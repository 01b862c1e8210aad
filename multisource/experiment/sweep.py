"""Leave-one-bin-out sweeps: every target x trial x method x model, resumable and failure-tolerant.

A sweep is resolved once into a :class:`SweepPlan`: a deterministic list of experiment plans (model, method,
target in bin order, trial), with the dataset opened once and each method's config built once. Finished
experiments (a valid metrics.json) are skipped, so an interrupted sweep continues where it stopped; a failing
one is recorded beside its folder (``trial_<k>.failed.json`` + ``trial_<k>.traceback.txt``) and the others go
on. Results are read back from the metrics.json files, so every executor gives the same summary.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError, build, check_range, check_seed
from ..data.datasets import get_dataset
from ..data.loaders import DatasetHandle, open_dataset
from ..executors import make_executor
from ..methods import get_method, reference_method
from ..methods.base import PAPER_METHODS, default_methods  # noqa: F401  (PAPER_METHODS: bench scripts)
from ..methods.inputs import make_config
from ..models.factory import resolve_model
from ..options import ExperimentOptions, RunOptions, SweepOptions
from ..paths import budget_folder, model_results_dir, split_label, tag_problem, variant_label
from ..training.all_bins import SourceOutcome, train_all_bins
from ..training.fit import SourceTrainConfig
from ..utils.io import read_json, write_json, write_text
from .config import ExperimentConfig, fraction_problem
from .efficiency import write_data_efficiency
from .num_sources import write_num_sources
from ..claims import STALE_AFTER_S, claim_path, claimed_elsewhere, remove_if_stale
from ..failures import clear_failure, failure_paths, write_failure
from .jobs import Outcome, execute
from .plan import ExperimentPlan, check_checkpoints, plan_experiment
from .protocols import DEFAULT_PROTOCOL, STREAM, canonical_protocol, protocol_sources
from .stream import stream_methods, stream_targets, write_stream_summary
from .record import read_record
from .runner import is_finished
from .summary import write_summaries

log = logging.getLogger(__name__)
# The stages of a sweep in the order they run, declared here once: the sources a pending experiment needs
# (with --train_missing; the upstream start is made on their first use), the experiments, the summaries. The
# demo is this sweep with --train_missing after building its data.
STAGES = ("sources", "experiments", "summaries")
StageCallback = Callable[[str, Any], None]
# A sweep without a method list runs every method that does not say why not (methods.default_methods): the
# paper's four and the reference rows every comparison needs.
DEFAULT_METHODS = default_methods()


class MissingSourceCheckpoints(FileNotFoundError):
    """Source checkpoints a sweep needs do not exist (the message says how to train them)."""


class SweepError(RuntimeError):
    """The sweep could not start (e.g. training a missing source model failed)."""


@dataclass
class SweepConfig:
    """What a sweep runs. ``method_configs`` maps a method to its config (a built dataclass, or a mapping of
    its fields); ``source_training`` holds SourceTrainConfig fields for ``--train_missing``. Names are made
    canonical on construction."""

    dataset: str = "drift_digits"
    models: tuple[str, ...] = ("tiny-resnet",)
    methods: tuple[str, ...] = field(default_factory=default_methods)
    targets: tuple[str, ...] = ()  # default: every bin of the dataset
    protocol: str = DEFAULT_PROTOCOL  # which bins are a target's sources (experiment/protocols.py)
    num_trials: int = 3
    seed: int = 42  # trial k derives its own seed from this one
    batch_size: int = 32
    image_size: int | None = None
    allow_mixed_starts: bool = False  # see ExperimentConfig
    tag: str = ""  # names this sweep's methods as variants (ExperimentConfig.tag): <method>[<tag>] rows
    # Label budgets (ExperimentConfig.target_fraction): every experiment at each share of the target's train and
    # val images, kept apart on disk, and a data-efficiency summary over them.
    target_fractions: tuple[float, ...] = (1.0,)
    # The number of sources as an axis: for each K, every target with its K nearest earlier bins as sources
    # (protocol window:K, results kept apart per K), and the num_sources summary of accuracy and models resident
    # against K. Empty: the protocol alone.
    num_sources: tuple[int, ...] = ()
    method_configs: dict[str, Any] = field(default_factory=dict)
    source_training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dataset = get_dataset(self.dataset).key
        self.protocol = canonical_protocol(self.protocol)
        self.models = tuple(resolve_model(m).name for m in _as_tuple(self.models))
        labels = [split_label(m) for m in _as_tuple(self.methods)]  # grasp[nearest]: a variant of grasp
        self.methods = tuple(variant_label(get_method(m).name, t) for m, t in labels)
        for _, t in labels:
            if t and (problem := tag_problem(t)):
                raise ConfigError(f"Variant tag {t!r}: {problem}.", field="methods")
        if self.tag and any(t for _, t in labels):
            raise ConfigError(f"--tag {self.tag!r} names every method of the sweep as one variant, but the methods "
                              f"already name variants ({', '.join(m for m in self.methods if '[' in m)}); use one "
                              "or the other.", field="tag")
        self.targets = _as_tuple(self.targets)
        if self.tag and (problem := tag_problem(self.tag)):
            raise ConfigError(f"--tag {self.tag!r}: {problem}.", field="tag")
        self.target_fractions = tuple(_as_tuple(self.target_fractions)) or (1.0,)
        for f in self.target_fractions:
            if problem := fraction_problem(f):
                raise ConfigError(f"--target_fractions {f!r}: {problem}.", field="target_fractions")
        self.target_fractions = tuple(sorted(float(f) for f in self.target_fractions))
        self.num_sources = tuple(_as_tuple(self.num_sources))
        for k in self.num_sources:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(f"--num_sources {k!r} is not a number of sources; give whole numbers >= 1 "
                                  "(e.g. 1 2 4 8).", field="num_sources")
        if self.num_sources and (self.protocol.startswith("window:") or self.protocol == STREAM):
            raise ConfigError(f"--num_sources {list(self.num_sources)} sets each K's sources (the K nearest earlier "
                              f"bins, window:K); drop --protocol {self.protocol}.", field="num_sources")
        check_range(self, "num_trials", 1)
        check_seed(self)
        check_range(self, "batch_size", 1)
        if self.image_size is not None:
            check_range(self, "image_size", 8)
        for name in ("models", "methods", "targets", "target_fractions", "num_sources"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"SweepConfig.{name} lists a value twice: {list(values)}.")
        if not self.models or not self.methods:
            raise ConfigError("A sweep needs at least one model and one method (--model, --methods).")
        info = get_dataset(self.dataset)
        if info.bins_from_build and info.root is None:  # its bins are the build's: resolved by plan_sweep
            self.targets = resolve_targets(self.targets, None)
            unknown = []
        else:
            bins = info.bins
            self.targets = resolve_targets(self.targets, bins)
            unknown = [t for t in self.targets if t not in bins]
        if unknown:
            raise ConfigError(f"targets {unknown} are not bins of {get_dataset(self.dataset).name}; its bins are "
                              f"{list(bins)}. Name some of them, or use 'all' or 'newest'.", "targets")
        self.method_configs = {variant_label(get_method(split_label(m)[0]).name, split_label(m)[1]): v
                               for m, v in (self.method_configs or {}).items()}
        self.num_sources = tuple(sorted(self.num_sources))

    def protocols(self) -> tuple[str, ...]:
        """The protocols the sweep runs: window:K for each K of the num_sources axis, else its one protocol."""
        return tuple(f"window:{k}" for k in self.num_sources) or (self.protocol,)


TARGET_WORDS = {"all": "every bin", "newest": "the newest bin (the deployable question)"}


def resolve_targets(targets: tuple[str, ...], bins: Sequence[str] | None) -> tuple[str, ...]:
    """``all`` (every bin, also the default) and ``newest`` (the last bin in time order) as bin names; with
    ``bins`` None (not known before the dataset is opened) ``newest`` stays a word."""
    if len(targets) == 1 and targets[0] in TARGET_WORDS:
        return () if targets[0] == "all" else (bins[-1],) if bins is not None else targets
    words = [t for t in targets if t in TARGET_WORDS]
    if words:
        raise ConfigError(f"targets {list(targets)} mix {words} with bin names; use one word alone or bin names.",
                          "targets")
    return targets


@dataclass
class SweepPlan:
    """A sweep resolved once: the dataset opened, method configs built, every experiment planned."""

    config: SweepConfig
    handle: DatasetHandle
    method_configs: dict[str, Any]
    jobs: list[ExperimentPlan]
    skipped_targets: dict[str, str] = field(default_factory=dict)  # target -> why it has no experiments


@dataclass
class SweepResult:
    outcomes: list[Outcome]
    summaries: dict[str, dict[str, Path]] = field(default_factory=dict)  # model -> {name: path}
    logs: list[Path] = field(default_factory=list)
    skipped_targets: dict[str, str] = field(default_factory=dict)

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


def plan_sweep(config: SweepConfig, opts: RunOptions) -> SweepPlan:
    """Every experiment of the sweep in a fixed order: model, method, target (bin order), trial."""
    if opts.checkpoint_dir and len(config.models) > 1:
        raise ConfigError(f"--checkpoint_dir holds one model's checkpoints, but this sweep runs {list(config.models)};"
                          " run one model per sweep or use the default checkpoint locations.")
    handle = open_dataset(config.dataset, opts.data_root)
    wanted = resolve_targets(config.targets, handle.bins)  # "newest" of a dataset whose bins are the build's
    handle.check_bins(*(wanted or handle.bins))  # present in this build of the dataset
    targets = [b for b in handle.bins if b in wanted] if wanted else list(handle.bins)
    method_configs = {m: make_config(split_label(m)[0], config.method_configs.get(m)) for m in config.methods}
    if config.protocol == STREAM:  # a bin's model continues the previous bin's: the stream runs from its start
        targets = stream_targets(handle.bins, targets)
        method_configs = stream_methods(method_configs, defaulted=config.methods == default_methods())
    reference = reference_method()  # a ``matched`` budget follows this sweep's reference config
    reference_config = method_configs.get(reference) or make_config(reference, config.method_configs.get(reference))
    # chronological sources per (protocol, target); a K the target's past cannot fill is skipped, not run short
    sources_of, skipped = {}, {}
    for protocol in config.protocols():
        for t in targets:
            sources = tuple(protocol_sources(handle.bins, t, protocol))
            k = int(protocol.split(":")[1]) if config.num_sources else None
            if k is not None and len(sources) < k:
                skipped[f"{t} (K={k})"] = f"only {len(sources)} bin(s) before {t}, fewer than --num_sources K={k}"
            elif not sources:
                skipped[t] = f"no bins before {t} (the first bin) under --protocol {protocol}"
            else:
                sources_of[protocol, t] = sources
    for t, why in skipped.items():
        log.info("Target %s skipped: %s", t, why)
    once = [m for m in method_configs if get_method(split_label(m)[0]).deterministic and config.num_trials > 1]
    if once:
        log.info("%s draw no random numbers: one run per target (not %d identical trials).", ", ".join(once),
                 config.num_trials)
    jobs = []
    for model, protocol, fraction, method in itertools.product(config.models, config.protocols(),
                                                               config.target_fractions, method_configs):
        trials = 1 if method in once else config.num_trials
        for target in (t for t in targets if (protocol, t) in sources_of):
            for trial in range(1, trials + 1):
                base, variant = split_label(method)
                cfg = ExperimentConfig(dataset=config.dataset, model=model, method=base, target=target,
                                       sources=sources_of[protocol, target], protocol=protocol, trial=trial,
                                       seed=config.seed, batch_size=config.batch_size, image_size=config.image_size,
                                       allow_mixed_starts=config.allow_mixed_starts, tag=variant or config.tag,
                                       target_fraction=fraction)
                jobs.append(plan_experiment(cfg, opts, handle, method_configs[method], reference_config))
    if not jobs:
        change = "smaller --num_sources" if config.num_sources else "another --protocol"
        raise ConfigError(f"No experiments to run: {'; '.join(skipped.values())}. Choose later --targets or "
                          f"{change}.")
    return SweepPlan(config, handle, method_configs, jobs, skipped)


def config_mismatch(job: ExperimentPlan) -> str | None:
    """Why a finished experiment's recorded config differs from the one asked for (None when it matches)."""
    try:
        record = read_record(job.out_dir)
    except (OSError, ValueError):
        return None
    c, rec = job.config, record.config
    wanted = {"method_config": dataclasses.asdict(job.method_config), "base_seed": c.seed,
              "batch_size": c.batch_size, "image_size": job.image_size, "sources": sorted(job.sources),
              "target_fraction": c.target_fraction}
    found = {"method_config": rec.method_config, "base_seed": rec.base_seed, "batch_size": rec.batch_size,
             "image_size": rec.image_size, "sources": sorted(rec.sources or []),
             "target_fraction": rec.target_fraction or 1.0}
    recorded_data = record.data_fingerprint
    if recorded_data and job.handle.fingerprint and recorded_data != job.handle.fingerprint:
        wanted["data"], found["data"] = f"build {job.handle.fingerprint}", f"build {recorded_data} (re-imported since)"
    wanted = json.loads(json.dumps(wanted))
    mc_found, mc_wanted = found.pop("method_config") or {}, wanted.pop("method_config")
    # A field added to the method since the experiment ran was, in effect, at its default then, unless the field
    # says what its absence meant (metadata "absent_means": a new default that changed the behaviour).
    defaults = json.loads(json.dumps(dataclasses.asdict(type(job.method_config)())))
    defaults.update({f.name: f.metadata["absent_means"] for f in dataclasses.fields(job.method_config)
                     if "absent_means" in f.metadata})
    mc_found = {**{k: defaults[k] for k in set(mc_wanted) - set(mc_found) if k in defaults}, **mc_found}
    # A field that changes how a method computes but not what (metadata "same_results") is no reason to refuse.
    same = {f.name for f in dataclasses.fields(job.method_config) if f.metadata.get("same_results")}
    keys = (set(mc_found) | set(mc_wanted)) - same
    found.update({f"method_config.{k}": mc_found.get(k) for k in keys})
    wanted.update({f"method_config.{k}": mc_wanted.get(k) for k in keys})
    diffs = [f"{k}: found {found[k]!r}, asked for {wanted[k]!r}" for k in sorted(wanted) if found[k] != wanted[k]]
    return "; ".join(diffs) or None


def missing_checkpoints(plan: SweepPlan, jobs: list[ExperimentPlan]) -> dict[str, list]:
    """Source checkpoints the pending jobs need that do not exist, per model: [(bin, path), ...]."""
    missing: dict[str, list] = {}
    for model in plan.config.models:
        needed = {b: p for j in jobs if j.config.model == model for b, p in {**j.lineage, **j.checkpoints}.items()}
        for b in sorted(needed, key=plan.handle.bins.index):
            if not needed[b].is_file():
                missing.setdefault(model, []).append((b, needed[b]))
    return missing


def train_command(dataset: str, model: str, opts: RunOptions, bins: list[str]) -> str:
    cmd = f"python baseline_training/train_all_subsets.py --dataset {dataset} --model_name {model}"
    for flag in ("data_root", "results_dir", "checkpoint_dir"):
        if getattr(opts, flag):
            cmd += f" --{flag} {getattr(opts, flag)}"
    return cmd + f" --bins {' '.join(bins)}"


def ensure_checkpoints(plan: SweepPlan, opts: SweepOptions, jobs: list[ExperimentPlan]
                       ) -> dict[str, dict[str, SourceOutcome]]:
    """Train missing source checkpoints (``--train_missing``) or raise listing them and the command to train them.
    Returns {model: {bin: how its training went}} (empty when none was missing)."""
    missing = missing_checkpoints(plan, jobs)
    if not missing:
        return {}
    dataset = plan.config.dataset
    if not opts.train_missing:
        lines = [f"Missing source checkpoints for {dataset}:"]
        for model, items in missing.items():
            lines += [f"  {model} {b}: {p}" for b, p in items]
            lines.append(f"  train them with: {train_command(dataset, model, opts, [b for b, _ in items])}")
        lines.append("or re-run this sweep with --train_missing (or pass --checkpoint_dir to existing ones).")
        raise MissingSourceCheckpoints("\n".join(lines))
    trained: dict[str, dict[str, SourceOutcome]] = {}
    for model, items in missing.items():
        tcfg = build(SourceTrainConfig, {"image_size": plan.config.image_size, "seed": plan.config.seed},
                     plan.config.source_training, {"dataset": dataset, "model_name": model})
        bins = [b for b, _ in items]
        log.info("Training missing source checkpoints for %s: %s", model, bins)
        results = train_all_bins(tcfg, dataclasses.replace(opts, progress=False), plan.handle, bins)
        failed = {b: r.detail for b, r in results.items() if r.status == "failed"}
        if failed:
            raise SweepError(f"Training source models failed, so the sweep did not start: {failed}. Fix the "
                             f"cause and re-run, or train them with: {train_command(dataset, model, opts, list(failed))}")
        trained[model] = results
    return trained


def record_outcome(job: ExperimentPlan, outcome: Outcome) -> None:
    """Write a failure record, or remove a stale one once the experiment has finished."""
    if outcome.status != "failed":
        clear_failure(job.out_dir)
        return
    write_failure(job.out_dir, error_type=outcome.error_type, message=outcome.message, traceback=outcome.traceback,
                  time_s=outcome.time_s, config={**dataclasses.asdict(job.config), "sources": list(job.sources)})


def split_finished(jobs: list[ExperimentPlan], overwrite: bool) -> tuple[list[ExperimentPlan], list[ExperimentPlan]]:
    """(finished, to run). A finished experiment run with other settings is an error, not a silent skip."""
    done = [] if overwrite else [j for j in jobs if is_finished(j.out_dir)]
    conflicts = [f"  {j.out_dir}: {why}" for j in done if (why := config_mismatch(j))]
    if conflicts:
        raise ConfigError("Finished experiments were run with a different configuration than this sweep asks "
                          "for:\n" + "\n".join(conflicts[:20]) + "\nPass --overwrite to re-run them, or use "
                          "another --results_dir.")
    for j in done:
        remove_if_stale(j.out_dir)  # a sweep killed after finishing this experiment left its claim behind
    done_ids = {id(j) for j in done}
    return done, [j for j in jobs if id(j) not in done_ids]


def run_sweep(config: SweepConfig | SweepPlan, opts: SweepOptions | None = None,
              progress: Callable[[ExperimentPlan, Outcome, int, int], None] | None = None,
              stage: StageCallback | None = None) -> SweepResult:
    """Run the :data:`STAGES` in order: the missing sources, every experiment that has not finished yet, the
    summaries. ``progress`` hears of each experiment; ``stage(name, detail)`` of each stage as it starts (for
    "sources", once it is done, with {model: {bin: SourceOutcome}})."""
    opts = opts or SweepOptions()
    stage = stage or (lambda name, detail: None)
    plan = config if isinstance(config, SweepPlan) else plan_sweep(config, opts)
    jobs = plan.jobs
    done, pending = split_finished(jobs, opts.overwrite)
    stage("sources", ensure_checkpoints(plan, opts, pending))
    check_checkpoints(pending)
    stage("experiments", pending)
    outcomes = {id(j): Outcome.for_plan(j, "skipped") for j in done}
    for j in done:
        record_outcome(j, outcomes[id(j)])
    log.info("Sweep %s: %d experiments, %d already finished, %d to run (%s executor)", plan.config.dataset,
             len(jobs), len(done), len(pending), opts.executor)
    started = datetime.now(timezone.utc)
    # A stream's bins run in time order, each wave (one bin of every chain) after the one before it has finished,
    # including what another sweep was running of it; other protocols are one wave.
    waves = stream_waves(pending, plan.handle.bins) if plan.config.protocol == STREAM else [pending]
    n, broken = 0, {}  # a stream whose bin failed: its later bins are not run (they would continue a stale model)
    try:
        with make_executor(opts) as ex:
            for wave in waves:
                for job in (j for j in wave if _chain(j) in broken):
                    n += 1
                    outcomes[id(job)] = outcome = Outcome.for_plan(
                        job, "failed", error_type="StreamStopped",
                        message=f"not run: the stream stopped at {broken[_chain(job)]}, which failed in this sweep "
                                "(see its failure record); fix that and re-run the sweep")
                    record_outcome(job, outcome)
                    if progress:
                        progress(job, outcome, n, len(pending))
                wave = [j for j in wave if _chain(j) not in broken]
                for i, value in ex.run(execute, [(j, opts) for j in wave]):
                    job = wave[i]
                    outcome = value if isinstance(value, Outcome) else Outcome.died(job, value)
                    outcomes[id(job)] = outcome
                    if outcome.status != "claimed":
                        n += 1
                        record_outcome(job, outcome)
                        if progress:
                            progress(job, outcome, n, len(pending))
                for job in (j for j in wave if outcomes[id(j)].status == "claimed"):
                    n += 1
                    outcomes[id(job)] = outcome = wait_for_other_run(job, opts, started)
                    if progress:
                        progress(job, outcome, n, len(pending))
                broken.update({_chain(j): j.config.target for j in wave if outcomes[id(j)].status == "failed"})
    finally:
        result = SweepResult([outcomes[id(j)] for j in jobs if id(j) in outcomes],
                             skipped_targets=dict(plan.skipped_targets))
        result.logs = write_sweep_logs(plan, opts, outcomes, started)
    if opts.summarize:
        stage("summaries", None)
        for model in plan.config.models:
            ran = {j.config.protocol for j in plan.jobs if j.config.model == model}
            result.summaries[model] = sweep_summaries(plan.config, model, opts,
                                                      [p for p in plan.config.protocols() if p in ran])
    return result


def _chain(job: ExperimentPlan) -> tuple:
    """Which stream a job belongs to: its bins continue each other's models."""
    c = job.config
    return c.model, c.method, c.tag, c.trial, c.target_fraction


def stream_waves(jobs: list[ExperimentPlan], bins: Sequence[str]) -> list[list[ExperimentPlan]]:
    """The jobs grouped by target bin, in time order (a stream's bin needs the model deployed for the one before)."""
    order = sorted({j.config.target for j in jobs}, key=list(bins).index)
    return [[j for j in jobs if j.config.target == t] for t in order]


def sweep_summaries(config: SweepConfig, model: str, opts: RunOptions,
                    protocols: Sequence[str] | None = None) -> dict[str, Path]:
    """The summaries of each protocol (``protocols``: those with experiments, default all of the sweep's) and label
    budget the sweep ran (the largest budget's under their plain names, the others' prefixed ``fraction-<F>/``, each
    K's prefixed ``window:K/``), with several budgets the data-efficiency summary over them, and with a
    num_sources axis the summary over K."""
    fractions = config.target_fractions
    paths: dict[str, Path] = {}
    protocols = list(config.protocols() if protocols is None else protocols)
    for protocol in protocols:
        folder = "" if len(config.protocols()) == 1 else f"{protocol}/"
        for fraction in fractions:
            written = write_summaries(opts.results_path(), config.dataset, model, protocol=protocol,
                                      fraction=fraction)
            prefix = folder + ("" if fraction == fractions[-1] else f"{budget_folder(fraction)}/")
            paths.update({prefix + name: p for name, p in written.items()})
        if len(fractions) > 1 or fractions[0] < 1:
            written = write_data_efficiency(opts.results_path(), config.dataset, model, protocol=protocol)
            paths.update({folder + name: p for name, p in written.items()})
    if STREAM in protocols:
        paths.update(write_stream_summary(opts.results_path(), config.dataset, model, fraction=fractions[-1]))
    if config.num_sources:
        # at the largest label budget the sweep ran (the whole target split unless --target_fractions says less)
        paths.update(write_num_sources(opts.results_path(), config.dataset, model, config.num_sources,
                                       fraction=fractions[-1]))
    return paths


def wait_for_other_run(job: ExperimentPlan, opts: ExperimentOptions, since: datetime, poll_s: float = 1.0) -> Outcome:
    """Another sweep claimed ``job``: wait until it lets go, then report what it left (finished, or failed
    after ``since``), or run the experiment here if that process died without a result."""
    while True:
        if claimed_elsewhere(job.out_dir):
            log.info("%s is being run by another process (claim %s); waiting for it. A claim untouched for "
                     "%.0f min is taken over; delete it if you know its process is gone.", job.label,
                     claim_path(job.out_dir), STALE_AFTER_S / 60)
        while claimed_elsewhere(job.out_dir):
            time.sleep(poll_s)
        if is_finished(job.out_dir):
            return Outcome.for_plan(job, "skipped")
        record = failure_paths(job.out_dir)[0]
        try:
            failure = read_json(record)
            if datetime.fromisoformat(failure["failed_at"]) >= since.replace(microsecond=0):
                return Outcome.for_plan(job, "failed", error_type=failure.get("error_type"),
                                        message=f"(in another sweep) {failure.get('message')}")
        except (OSError, ValueError, KeyError):
            pass
        outcome = execute(job, opts)
        if outcome.status != "claimed":
            record_outcome(job, outcome)
            return outcome


def write_sweep_logs(plan: SweepPlan, opts: RunOptions, outcomes: dict, started: datetime) -> list[Path]:
    """One JSON per model under results/<dataset>/<model>/sweeps/: the resolved settings and what happened."""
    stamp = started.strftime("%Y%m%d-%H%M%S")
    paths = []
    for model in plan.config.models:
        mine = [j for j in plan.jobs if j.config.model == model]
        entries = [{**(dataclasses.asdict(outcomes[id(j)]) if id(j) in outcomes else {"status": "not run"}),
                    "out_dir": str(j.out_dir)} for j in mine]
        for e in entries:
            e.pop("traceback", None)  # kept in the traceback file beside the experiment
        counts = {s: sum(e["status"] == s for e in entries) for s in ("finished", "skipped", "failed", "not run")}
        where = model_results_dir(opts.results_path(), plan.handle.info.name, model, plan.config.protocols()[0])
        path = where / "sweeps" / f"sweep-{stamp}-{os.getpid()}.json"
        write_json(path, {"started_at": started.isoformat(timespec="seconds"),
                          "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "counts": counts, "config": dataclasses.asdict(plan.config),
                          "skipped_targets": plan.skipped_targets,
                          "method_configs": {m: dataclasses.asdict(c) for m, c in plan.method_configs.items()},
                          "options": dataclasses.asdict(opts), "experiments": entries})
        paths.append(path)
    return paths


def describe_plan(jobs: list[ExperimentPlan]) -> str:
    """One line per experiment with its state (finished / to run), for --dry_run."""
    lines = []
    for j in jobs:
        state = "finished" if is_finished(j.out_dir) else ("failed before" if failure_paths(j.out_dir)[0].exists()
                                                            else "to run")
        lines.append(f"  {j.label:<48} {state}")
    return "\n".join(lines)

"""An experiment resolved once into plain objects that the runner and the executors trust.

Resolving opens the dataset, checks the bins, builds the method's config, orders the sources as the method
asks, derives the trial's seed and locates every checkpoint and the output folder. Nothing below this
re-derives any of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data.loaders import DatasetHandle, open_dataset
from ..methods import get_method
from ..methods.base import order_sources, resolve_budget, stream_refusal
from ..methods.inputs import make_config
from ..models.checkpoint import CheckpointError, read_checkpoint_meta
from ..options import RunOptions
from ..paths import MODEL_FILE, experiment_dir, variant_label
from ..training.start import common_start
from ..utils.seed import trial_seed
from .config import ExperimentConfig
from .protocols import STREAM, check_sources, protocol_sources


@dataclass(frozen=True)
class ExperimentPlan:
    config: ExperimentConfig  # canonical names; ``sources`` as asked (possibly empty: every other bin)
    method_config: Any  # the method's config dataclass, built once
    handle: DatasetHandle  # the dataset, opened once
    sources: tuple[str, ...]  # in the order the method uses them
    checkpoints: dict[str, Path]  # source bin -> checkpoint, in that order
    seed: int  # this trial's seed
    image_size: int
    out_dir: Path
    # Under --protocol stream: the model deployed for the previous bin (written by that bin's experiment, so it
    # may not exist yet when the stream is planned).
    carried: Carried | None = None
    pool_order: tuple[str, ...] = ()  # the pool's entries in the order the method uses them
    # the source checkpoints of the bins the deployed model stands for: one shared start must hold over them too
    lineage: dict[str, Path] = field(default_factory=dict)

    def pool_checkpoints(self) -> dict[str, Path]:
        """The method's pool, in its order: the sources' checkpoints and, in a stream, the deployed model's."""
        paths = {**self.checkpoints, **({self.carried.name: self.carried.path} if self.carried else {})}
        return {n: paths[n] for n in self.pool_order}

    @property
    def label(self) -> str:
        c = self.config
        budget = "" if c.target_fraction == 1 else f" at {c.target_fraction:g} of its labels"
        window = f" K={c.protocol.split(':')[1]}" if c.protocol.startswith("window:") else ""
        return f"{c.model} {variant_label(c.method, c.tag)} {c.target}{window}{budget} trial {c.trial}"


def plan_experiment(cfg: ExperimentConfig, opts: RunOptions, handle: DatasetHandle | None = None,
                    method_config: Any | None = None, reference_config: Any | None = None) -> ExperimentPlan:
    """Resolve ``cfg``; ``handle`` and ``method_config`` let a sweep share what it resolved once.
    ``reference_config`` is the reference method's config a ``matched`` budget follows (default: its defaults)."""
    spec = get_method(cfg.method)
    method_config = method_config if method_config is not None else make_config(spec.name, cfg.method_config)
    handle = handle or open_dataset(cfg.dataset, opts.data_root)
    handle.check_bins(cfg.target, *cfg.sources)
    check_sources(handle.bins, cfg.target, cfg.sources, cfg.protocol)
    sources = list(cfg.sources) or protocol_sources(handle.bins, cfg.target, cfg.protocol)
    if not sources:
        raise ConfigError(f"No source bins for target {cfg.target} under --protocol {cfg.protocol} (it is the "
                          "first bin); choose a later target or another protocol.")
    seed = trial_seed(cfg.seed, cfg.trial)
    carried = stream_carry(cfg, handle, opts, spec.reads_sources, method_config) if cfg.protocol == STREAM else None
    # a matched budget follows the reference's pool: in a stream from the third bin on, the deployed model and the
    # new source (whether or not this method reads the deployed model)
    deployed = int(cfg.protocol == STREAM and list(handle.bins).index(cfg.target) >= 2)
    method_config = resolve_budget(spec, method_config, len(sources) + deployed, reference_config)
    sources = order_sources(sources, cfg.target, handle.bins, spec.order_of(method_config), seed)
    order = (order_sources([carried.name, *sources], cfg.target, handle.bins, spec.order_of(method_config), seed,
                           {carried.name: carried.position}) if carried else sources)
    checkpoints = {b: opts.source_checkpoint(handle.info.name, cfg.model, b) for b in sources}
    out = experiment_dir(opts.results_path(), handle.info.name, cfg.model, cfg.method, cfg.target, cfg.trial,
                         cfg.protocol, cfg.tag, cfg.target_fraction)
    lineage = {b: opts.source_checkpoint(handle.info.name, cfg.model, b) for b in carried.bins} if carried else {}
    return ExperimentPlan(cfg, method_config, handle, tuple(sources), checkpoints, seed,
                          cfg.image_size or handle.info.image_size, out, carried, tuple(order), lineage)


@dataclass(frozen=True)
class Carried:
    """What a stream's bin continues: the model deployed for the previous bin."""

    path: Path  # that bin's experiment's model.ckpt (written when that bin has run)
    name: str  # its name in the method's pool: deployed:<previous bin>
    bins: tuple[str, ...]  # the bins it stands for (every bin before the new source)
    position: float  # its place in time: just before the new source, so source orders keep their meaning


def stream_carry(cfg: ExperimentConfig, handle: DatasetHandle, opts: RunOptions, reads_sources: bool,
                 method_config: Any) -> Carried | None:
    """Under --protocol stream, what the experiment carries over from the previous bin (from the third bin on: the
    second bin's model has one source and nothing before it); None for a method that reads no source model."""
    if problem := stream_refusal(get_method(cfg.method), method_config):
        raise ConfigError(f"--protocol stream: {problem}; run it under past or window:N, or leave it out.")
    bins = list(handle.bins)
    i = bins.index(cfg.target)
    if not reads_sources or i < 2:
        return None
    previous = bins[i - 1]
    path = experiment_dir(opts.results_path(), handle.info.name, cfg.model, cfg.method, previous, cfg.trial,
                          cfg.protocol, cfg.tag, cfg.target_fraction)
    return Carried(path / MODEL_FILE, f"deployed:{previous}", tuple(bins[:i - 1]), i - 1.5)


def check_source_checkpoint(path: Path, bin_name: str, handle: DatasetHandle, model: str) -> None:
    """A source checkpoint exists and was trained on this dataset, its classes (in order) and this model."""
    if not path.is_file():
        raise CheckpointError(
            f"Missing source checkpoint {path}. Train it with: python baseline_training/train_baseline.py "
            f"--dataset {handle.info.key} --bin {bin_name} --model_name {model} (or pass --checkpoint_dir).")
    meta = read_checkpoint_meta(path)
    if meta.get("dataset") not in (None, handle.info.name):
        raise CheckpointError(f"Checkpoint {path} was trained on dataset '{meta['dataset']}', not "
                              f"'{handle.info.name}'; point --checkpoint_dir at this dataset's checkpoints.")
    if list(meta["classes"]) != handle.classes:
        raise CheckpointError(f"Checkpoint {path} has {len(meta['classes'])} classes {list(meta['classes'])}, but "
                              f"{handle.info.name} has {handle.num_classes} classes {handle.classes} (the same "
                              "classes in the same order are needed); re-train it on this dataset.")
    if meta["model_name"] != model:
        raise CheckpointError(f"Checkpoint {path} holds model '{meta['model_name']}', not '{model}'.")
    trained_on = meta.get("data_fingerprint")
    if trained_on and handle.fingerprint and trained_on != handle.fingerprint:
        raise CheckpointError(f"Checkpoint {path} was trained on another build of {handle.info.name} (its data, bins or "
                              "splits changed since: re-imported?); re-train it: python baseline_training/"
                              f"train_all_subsets.py --dataset {handle.info.key} --model_name {model}.")


def check_checkpoints(plans: list[ExperimentPlan]) -> None:
    """Every source checkpoint the plans need, each checked once, and (for methods that combine parameters) that
    each plan's sources share one start, before any work starts."""
    seen: set[Path] = set()
    starts_checked: set[tuple[Path, ...]] = set()
    for plan in plans:
        combined = {**plan.lineage, **plan.checkpoints}  # in a stream also those the deployed model stands for
        for b, path in combined.items():
            if path not in seen:
                check_source_checkpoint(path, b, plan.handle, plan.config.model)
                seen.add(path)
        key = tuple(sorted(combined.values()))
        if (get_method(plan.config.method).needs_shared_start and not plan.config.allow_mixed_starts
                and key not in starts_checked):
            common_start(combined)
            starts_checked.add(key)

"""Merging baselines over task vectors (source minus the sources' shared pretrained start): TASK_ARITHMETIC,
TIES and DARE. Each merges tensor by tensor, reading the checkpoints memory-mapped (models/checkpoint.py
``LazyCheckpoint``), so it holds the merged model, one model-sized merged task vector and K copies of one
tensor at a time, whatever K is; chooses the scaling lambda on the target's val split; and optionally
fine-tunes the result on the target like FUSION (``finetune_epochs``: a number, 0, or ``matched``).

What is merged how (say it, as papers differ):
* parameters with a shared start: task vectors, combined by the method, then ``start + lambda * merged``;
* the classifier head (each source trained its own: no shared start) and float buffers (BatchNorm running
  statistics): the sources' uniform mean, as FUSION; ``recalibrate_bn`` re-estimates BatchNorm statistics on
  the target's train split for every lambda before it is scored;
* integer buffers (BatchNorm's ``num_batches_tracked``): the first source's.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..config import ConfigError, check_choice, check_range
from ..models.checkpoint import head_prefixes
from ..training.loop import accuracy
from ..utils.seed import derive_seed
from .base import MethodResult, SourcePool, TargetData, register_method
from .merge import apply_task_vector, dare_drop, disjoint_mean, keep_above, magnitude_cutoff, \
    model_magnitude_cutoff, recalibrate_batchnorm, task_vector_sum, tensor_mean, trim_by_magnitude
from .target_finetune import MERGE_OUTSIDE_DEFAULT, TargetFinetuneConfig, finetune_after_merge, match_finetune_epochs

DEFAULT_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# TIES's disjoint mean is on the scale of one task vector (task arithmetic's sum on that of K): a wider grid.
TIES_LAMBDAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
# A task vector's entries are combined with about this many multiply-adds per source in each method's merge.
MACS_PER_ENTRY = {"sum": 2, "ties": 6}


@dataclass
class TaskVectorConfig(TargetFinetuneConfig):
    """``lambdas``: the scaling grid searched on the target's val split (the best, earliest on a tie, is kept)."""

    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    recalibrate_bn: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lambdas = tuple(float(v) for v in self.lambdas)
        if not self.lambdas:
            raise ConfigError(f"{type(self).__name__}.lambdas is empty; give at least one scaling value.")
        if not all(math.isfinite(v) for v in self.lambdas):
            raise ConfigError(f"{type(self).__name__}.lambdas={list(self.lambdas)} holds a value that is not a finite "
                              "number; give finite scaling values such as 0.5 1.0.")


@dataclass
class TiesConfig(TaskVectorConfig):
    lambdas: tuple[float, ...] = TIES_LAMBDAS
    density: float = 0.2  # share of each task vector's entries kept by magnitude (TIES paper: 0.2)
    # Over what the density share is taken: "model", the whole task vector (the TIES paper's and FusionBench's
    # rule), or "tensor", each tensor on its own (PEFT's). Results from before the option trimmed per tensor.
    trim: str = field(default="model", metadata={"absent_means": "tensor"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "density", 0.0, 1.0, low_open=True)  # 0 would keep no entry: the start itself
        check_choice(self, "trim", ("model", "tensor"))


@dataclass
class DareConfig(TaskVectorConfig):
    drop_rate: float = 0.5  # each entry of each task vector is dropped with this probability, the rest rescaled
    merge: str = "task_arithmetic"  # what the dropped vectors are merged with: task_arithmetic | ties
    density: float = 1.0  # TIES trim after the drop (merge: ties); 1 keeps every surviving entry

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "drop_rate", 0.0, 0.99)
        check_range(self, "density", 0.0, 1.0, low_open=True)  # 0 would keep no entry: the start itself
        check_choice(self, "merge", ("task_arithmetic", "ties"))


@torch.no_grad()
def merge_task_vectors(pool: SourcePool, combine: Callable[[Callable[[int], torch.Tensor], int], torch.Tensor],
                       prepare: Callable[[torch.Tensor, int, str], torch.Tensor], macs_per_entry: int,
                       meter, setup: Callable[[Callable[[int, str], torch.Tensor], int, list[str]], None] | None = None
                       ) -> tuple[nn.Module, Any, dict[str, torch.Tensor], dict[str, Any]]:
    """(merged model with averaged heads/buffers, the start, {tensor: merged task vector}, record); the
    caller sets ``start + lambda * tau``. ``prepare(tau, k, name)`` is applied to source k's task vector
    (DARE's drop, TIES's trim) and must be deterministic. ``setup(task_vector, K, names)``, when given, first
    sees every source's whole task vector (``task_vector(k, name)``, read tensor by tensor): TIES's model-wide
    trim finds its cut-offs there."""
    start = pool.start_tensors()
    model = pool.load(pool.names[0], key="merged")  # the architecture with the target's head; every tensor is set
    sources = [pool.open_lazy(n) for n in pool.names]
    state, params, heads = model.state_dict(), {n for n, _ in model.named_parameters()}, head_prefixes(model)
    vectors = [n for n, own in state.items() if torch.is_floating_point(own) and n in params
               and not n.startswith(heads) and n in start and start.shape(n) == own.shape]

    def task_vector(k: int, name: str) -> torch.Tensor:
        # sources are read on the CPU; a held ImageNet start may sit on the GPU
        return sources[k].read(name) - start.read(name).cpu()

    if setup is not None:
        setup(task_vector, len(sources), vectors)
        for s in (*sources, start):  # the merge pass reads them again; what the first pass left goes back now
            s.release_pages()
    taus: dict[str, torch.Tensor] = {}
    averaged, taken, elements, is_vector = [], [], 0, set(vectors)
    for name, own in state.items():
        if not torch.is_floating_point(own):
            own.copy_(sources[0].read(name))
            taken.append(name)
        elif name in is_vector:
            taus[name] = combine(lambda k: prepare(task_vector(k, name), k, name), len(sources))
            elements += own.numel()
        else:
            own.copy_(tensor_mean(lambda k: sources[k].read(name), len(sources)))
            averaged.append(name)
    for s in (*sources, start):  # done with the sources; the start is read again (lambda search) and released then
        s.release_pages()
    if not taus:
        raise ConfigError("No parameter of the sources matches the shared start, so there are no task vectors; the "
                          "sources were not fine-tuned from that start.")
    if pool.residency is not None:
        pool.residency.hold("task_vector", taus)
    meter.flops.add("merge", macs_per_entry * elements * len(sources))
    record = {"task_vector_tensors": len(taus), "averaged_tensors": averaged, "first_source_tensors": taken,
              "start": pool.start_loaded}
    return model, start, taus, record


@torch.no_grad()
def set_scale(model: nn.Module, start, taus: dict[str, torch.Tensor], scale: float) -> None:
    state = model.state_dict()
    for name, tau in taus.items():
        state[name].copy_(apply_task_vector(start.read(name).cpu(), tau, scale))


def choose_lambda(model: nn.Module, start, taus: dict[str, torch.Tensor], cfg: TaskVectorConfig,
                  target: TargetData, meter) -> tuple[float, dict[str, float]]:
    """Score every lambda on the target's val split (after BatchNorm recalibration if asked); keep the best (the
    earliest on a tie) with the very BatchNorm statistics it was scored with."""
    scores: dict[str, float] = {}
    macs = target.forward_macs(model, "merged")
    best, best_buffers = None, None
    for lam in cfg.lambdas:
        set_scale(model, start, taus, lam)
        if cfg.recalibrate_bn:
            used = recalibrate_batchnorm(model, target.train, target.device)
            meter.flops.add_forward("bn_recalibration", macs, used)
        scores[f"{lam:g}"] = accuracy(model, target.val, target.device, target.precision)
        meter.flops.add("merge", 2 * sum(t.numel() for t in taus.values()))
        if best is None or scores[f"{lam:g}"] > scores[f"{best:g}"]:
            best = lam
            if cfg.recalibrate_bn:  # the recalibration draws shuffled batches: keep the statistics it scored with
                best_buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    meter.flops.add_forward("selection", macs, len(target.val.dataset) * len(cfg.lambdas))
    set_scale(model, start, taus, best)
    if best_buffers is not None:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(best_buffers[k])
    return best, scores


def _run(name: str, cfg: TaskVectorConfig, pool: SourcePool, target: TargetData, meter,
         combine, prepare, macs: int, extra: dict, setup=None) -> MethodResult:
    with meter.phase("merge"):
        model, start, taus, record = merge_task_vectors(pool, combine, prepare, macs, meter, setup)
    with meter.phase("select"):
        lam, scores = choose_lambda(model, start, taus, cfg, target, meter)
        start.release_pages()
    taus.clear()
    del start  # the last reference to a held ImageNet start's tensors, before the pool forgets it
    if pool.residency is not None:
        pool.residency.release("task_vector")
    pool.release("start")  # the paper models' ImageNet start is a held module; the tiny models' is mapped
    record.update(extra, members=pool.names, **{"lambda": lam}, lambda_val_accuracy=scores,
                  val_accuracy_before_finetune=scores[f"{lam:g}"])
    return finetune_after_merge(model, record, cfg, pool, target, meter, desc=name)


def _same(tau: torch.Tensor, k: int, name: str) -> torch.Tensor:
    return tau


@register_method("task_arithmetic", TaskVectorConfig, "Merge: start + lambda x sum of task vectors (lambda on "
                 "target val), optionally fine-tuned.", match_budget=match_finetune_epochs,
                 needs_shared_start=True, outside_default_sweep=MERGE_OUTSIDE_DEFAULT)
def run_task_arithmetic(cfg: TaskVectorConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    return _run("task_arithmetic", cfg, pool, target, meter, task_vector_sum, _same, MACS_PER_ENTRY["sum"], {})


@register_method("ties", TiesConfig, "Merge: TIES (trim by magnitude over the model, elect signs, disjoint mean) "
                 "of task vectors, "
                 "lambda on target val, optionally fine-tuned.", match_budget=match_finetune_epochs,
                 needs_shared_start=True, outside_default_sweep=MERGE_OUTSIDE_DEFAULT)
def run_ties(cfg: TiesConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    extra = {"density": cfg.density, "trim": f"per {cfg.trim}", "sign_election": "total mass"}
    trim, setup = ties_trim(cfg, extra, meter)
    return _run("ties", cfg, pool, target, meter, disjoint_mean, trim, MACS_PER_ENTRY["ties"], extra, setup=setup)


def ties_trim(cfg: TiesConfig, record: dict, meter) -> tuple[Callable, Callable | None]:
    """(prepare, setup) for :func:`merge_task_vectors`: TIES's trim of each source's task vector at its cut-off,
    over the whole model (the cut-offs found by ``setup``, noted in ``record["cutoffs"]``) or per tensor. Each
    cut-off is computed once: the disjoint mean reads every trimmed vector twice (the sign election, then the
    mean), and the second read applies the cut-off the first one found."""
    cutoffs: dict[Any, float] = {}

    def find_model_cutoffs(task_vector, count: int, names: list[str]) -> None:
        sizes: dict[str, int] = {}

        def whole(k: int):
            for n in names:
                tau = task_vector(k, n)
                sizes[n] = tau.numel()
                yield tau

        for k in range(count):
            cutoffs[k] = model_magnitude_cutoff(lambda: whole(k), cfg.density)
        record["cutoffs"] = [cutoffs[k] for k in range(count)]  # each source's magnitude cut-off, in pool order
        # two passes per source, each a subtraction, a magnitude and a binning or comparison per entry
        meter.flops.add("merge", 4 * count * sum(sizes.values()))

    def trim(tau: torch.Tensor, k: int, name: str) -> torch.Tensor:
        if cfg.density >= 1:
            return tau
        key = k if cfg.trim == "model" else (k, name)
        if key not in cutoffs:
            cutoffs[key] = magnitude_cutoff(tau, cfg.density)
        return keep_above(tau, cutoffs[key])

    return trim, (find_model_cutoffs if cfg.trim == "model" and cfg.density < 1 else None)


@register_method("dare", DareConfig, "Merge: DARE (random drop, rescale) then task arithmetic or TIES, lambda on "
                 "target val, optionally fine-tuned.", match_budget=match_finetune_epochs,
                 needs_shared_start=True, outside_default_sweep=MERGE_OUTSIDE_DEFAULT)
def run_dare(cfg: DareConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    names = pool.names

    def drop(tau: torch.Tensor, k: int, name: str) -> torch.Tensor:
        tau = dare_drop(tau, 1.0 - cfg.drop_rate, derive_seed(target.seed, "dare", names[k], name))
        return trim_by_magnitude(tau, cfg.density) if cfg.merge == "ties" else tau

    combine = disjoint_mean if cfg.merge == "ties" else task_vector_sum
    macs = MACS_PER_ENTRY["ties" if cfg.merge == "ties" else "sum"]
    return _run("dare", cfg, pool, target, meter, combine, drop, macs,
                {"drop_rate": cfg.drop_rate, "merge": cfg.merge, "density": cfg.density,
                 "drop_seed": "derive_seed(trial seed, 'dare', source, tensor)"})

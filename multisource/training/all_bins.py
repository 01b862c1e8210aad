"""Source training as jobs, like experiments: each bin's checkpoint is claimed while it trains (two commands
sharing a checkpoint folder never train the same bin twice), a failure is recorded beside the checkpoint
(``<bin>.failed.json`` and ``<bin>.traceback.txt``), complete bins are skipped, so a killed run resumes where it
stopped, and bins train in parallel through the project's executors (local processes or Ray)."""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from .. import claims
from ..data.loaders import DatasetHandle, open_dataset
from ..executors import make_executor
from ..failures import clear_failure, write_failure
from ..options import TrainOptions
from .fit import SourceTrainConfig
from .source import is_complete, source_checkpoint_path, train_source
from .start import SharedStart, resolve_start

log = logging.getLogger(__name__)
# Where each launcher Lightning supports says a process's rank (Lightning's own, torchrun, SLURM, MPI, LSF).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                   "JSM_NAMESPACE_RANK")


@dataclass
class SourceOutcome:
    """How one bin's source training went. ``status``: trained, skipped (complete already), failed, or claimed
    (another live process is training it)."""

    bin: str
    status: str
    checkpoint: str
    detail: str = ""
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    time_s: float = 0.0
    error_type: str | None = None


@dataclass(frozen=True)
class SourcePlan:
    """Source training resolved once, as an experiment's plan is: the dataset opened and the bins to train
    checked against this build of it (in the order asked for; every bin when none was named)."""

    config: SourceTrainConfig
    handle: DatasetHandle
    bins: tuple[str, ...]


def plan_sources(cfg: SourceTrainConfig, opts: TrainOptions, bins: Sequence[str] | None = None) -> SourcePlan:
    """Open ``cfg.dataset`` and check ``bins`` (default: all of them; an empty list for the upstream pretraining,
    which trains none) once, before any work."""
    handle = open_dataset(cfg.dataset, opts.data_root)
    chosen = tuple(handle.bins if bins is None else bins)
    handle.check_bins(*chosen)
    return SourcePlan(cfg, handle, chosen)


def is_secondary_rank() -> bool:
    """This process is a non-zero rank of a distributed run (Lightning's launcher, torchrun, srun): the run's
    rank 0 holds the claim and records the outcome for all of them."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in _RANK_VARIABLES)


def failure_stem(ckpt: Path) -> Path:
    """Where a bin's failure is recorded: ``<bin>.failed.json`` beside ``<bin>.ckpt``."""
    return ckpt.with_suffix("")


def is_distributed(opts: TrainOptions) -> bool:
    """Training runs on several processes (devices or nodes): every rank must train the same bins in the same
    order, so such a run never defers a bin another command holds (it refuses it instead)."""
    if is_secondary_rank() or opts.num_nodes > 1:
        return True
    devices = opts.devices
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    text = str(devices).strip()
    if text == "auto":
        import torch
        return opts.device not in ("cpu",) and torch.cuda.device_count() > 1
    return text == "-1" or len([d for d in text.split(",") if d.strip()]) > 1


def run_source_job(cfg: SourceTrainConfig, opts: TrainOptions, handle: DatasetHandle, start: SharedStart | None,
                   *, raise_errors: bool = False, force: bool = True) -> SourceOutcome:
    """Train one bin under its claim; a failure is recorded on disk and returned (or, with ``raise_errors``,
    raised after it is recorded), never lost. Without ``force``, a bin another process completed meanwhile is
    taken as it is (checked again under the claim, as an experiment is)."""
    ckpt = source_checkpoint_path(cfg, opts)
    fingerprint = getattr(handle, "fingerprint", None)
    if is_secondary_rank():  # rank 0 holds the claim; every rank trains the bins rank 0 trains, in its order
        if not force and is_complete(ckpt, fingerprint):
            return SourceOutcome(cfg.bin, "skipped", str(ckpt), f"complete: {ckpt}")
        train_source(cfg, opts, handle, start)
        return SourceOutcome(cfg.bin, "trained", str(ckpt), "(secondary rank)")
    with claims.holding(ckpt) as held:
        if not held:
            owner = claims.read_owner(claims.claim_path(ckpt)) or "another process"
            if is_distributed(opts):
                raise RuntimeError(f"{cfg.bin} is being trained into {ckpt.parent} by {owner}; a distributed run "
                                   "cannot wait for it (its ranks must train the same bins in order). Wait for it "
                                   "to finish, or choose another --checkpoint_dir.")
            return SourceOutcome(cfg.bin, "claimed", str(ckpt), f"being trained by {owner}")
        if not force and is_complete(ckpt, fingerprint):  # finished by another process since the listing
            return SourceOutcome(cfg.bin, "skipped", str(ckpt), f"trained by another process: {ckpt}")
        t0 = time.perf_counter()
        try:
            report = train_source(cfg, opts, handle, start)
        except Exception as exc:  # noqa: BLE001  recorded (and returned, or re-raised) below
            write_failure(failure_stem(ckpt), error_type=type(exc).__name__, message=str(exc),
                          traceback=traceback.format_exc(), time_s=time.perf_counter() - t0,
                          config={**asdict(cfg), "checkpoint": str(ckpt)})
            if raise_errors:
                raise
            log.error("Training %s failed: %s", cfg.bin, exc)
            return SourceOutcome(cfg.bin, "failed", str(ckpt), f"{type(exc).__name__}: {exc}",
                                 time_s=time.perf_counter() - t0, error_type=type(exc).__name__)
        clear_failure(failure_stem(ckpt))
        seconds = time.perf_counter() - t0
        val, test = report.get("val_accuracy"), report.get("test_accuracy")
        detail = (f"val acc {val:.4f}, test acc {test:.4f} ({seconds:.0f}s)" if None not in (val, test)
                  else f"({seconds:.0f}s)")
        return SourceOutcome(cfg.bin, "trained", str(ckpt), detail, val, test, seconds)


def _run_listed(cfg: SourceTrainConfig, opts: TrainOptions, handle: DatasetHandle, start: SharedStart,
                force: bool) -> SourceOutcome:
    """A bin of train_all_bins's list (an executor task): trained unless complete by now (or ``force``)."""
    return run_source_job(cfg, opts, handle, start, force=force)


def wait_for_other_training(cfg: SourceTrainConfig, opts: TrainOptions, handle: DatasetHandle, start: SharedStart,
                            poll_s: float = 1.0) -> SourceOutcome:
    """Another process claimed the bin: wait until it lets go, then take its checkpoint, or train the bin here
    when that process left none (it failed or died)."""
    ckpt = source_checkpoint_path(cfg, opts)
    log.info("%s is being trained by another process (claim %s); waiting for it.", cfg.bin, claims.claim_path(ckpt))
    while True:
        while claims.claimed_elsewhere(ckpt):
            time.sleep(poll_s)
        if is_complete(ckpt, handle.fingerprint):
            return SourceOutcome(cfg.bin, "skipped", str(ckpt), f"trained by another process: {ckpt}")
        outcome = run_source_job(cfg, opts, handle, start, force=False)
        if outcome.status != "claimed":
            return outcome
        time.sleep(poll_s)  # a fresh claim under this very tag (a restarted container) is held until stale


def train_all_bins(cfg: SourceTrainConfig, opts: TrainOptions, handle: DatasetHandle, bins: list[str], *,
                   force: bool = False) -> dict[str, SourceOutcome]:
    """Train each of ``bins`` (checked by :func:`plan_sources` or the sweep's plan); skip complete ones unless
    ``force``; continue past failures.

    Every bin's preconditions are checked, and the sources' shared start resolved (pretrained upstream or drawn
    at random, once), before the first bin trains: a problem is one message listing every bin it affects, never
    the same failure repeated per bin after minutes of work. With ``opts.workers > 1`` or ``opts.executor ==
    "ray"`` bins train in parallel.
    """
    results: dict[str, SourceOutcome] = {}
    todo = []
    for b in bins:
        bcfg = replace(cfg, bin=b)
        ckpt = source_checkpoint_path(bcfg, opts)
        if is_complete(ckpt, handle.fingerprint) and not force:
            claims.remove_if_stale(ckpt)  # a run killed after finishing this bin left its claim behind
            results[b] = SourceOutcome(b, "skipped", str(ckpt), f"complete: {ckpt}")
        else:
            todo.append(bcfg)
    if not todo:
        return {b: results[b] for b in bins}
    handle.check_trainable([c.bin for c in todo])
    handle.warn_upscale(cfg.image_size or handle.info.image_size, cfg.model_name)
    parallel = len(todo) > 1 and (opts.workers > 1 or opts.executor != "local")
    run_opts = replace(opts, progress=False) if parallel else replace(opts, executor="local", workers=1)
    # The executor is entered before the shared start is resolved: a pool's workers get ready while the upstream
    # pretraining (if any) runs here, instead of after it.
    with make_executor(run_opts) as executor:
        start = resolve_start(cfg, opts, handle)
        log.info("Every source starts from the %s.", start.describe())
        opts = run_opts
        for i, value in executor.run(_run_listed, [(c, opts, handle, start, force) for c in todo]):
            if isinstance(value, BaseException):  # the worker died (killed, out of memory, lost node)
                value = SourceOutcome(todo[i].bin, "failed", str(source_checkpoint_path(todo[i], opts)),
                                      f"worker failed: {type(value).__name__}: {value}",
                                      error_type=type(value).__name__)
            results[todo[i].bin] = value
            log.info("Source %s (%d/%d): %s %s", todo[i].bin, len(results) - (len(bins) - len(todo)), len(todo),
                     value.status, value.detail)
    for c in todo:
        if results[c.bin].status == "claimed":
            results[c.bin] = wait_for_other_training(c, opts, handle, start)
    return {b: results[b] for b in bins}

"""Train one source model per bin: complete bins skipped, failures recorded (not raised), bins in parallel
through the project's executors (local processes or Ray)."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import replace

from ..data.loaders import DatasetHandle
from ..executors import make_executor
from ..options import RunOptions
from .fit import SourceTrainConfig
from .source import is_complete, source_checkpoint_path, train_source
from .start import SharedStart, resolve_start

log = logging.getLogger(__name__)


def _train_one(cfg: SourceTrainConfig, opts: RunOptions, handle: DatasetHandle, start: SharedStart) -> dict:
    """One bin; its failure is returned as a status, never raised, so the other bins go on."""
    t0 = time.perf_counter()
    try:
        report = train_source(cfg, opts, handle, start)
        return {"status": "trained", "detail": f"test acc {report.get('test_accuracy', float('nan')):.4f} "
                                               f"({time.perf_counter() - t0:.0f}s)"}
    except Exception as exc:  # noqa: BLE001  one failing bin must not stop the others; the summary reports it
        log.error("Training %s failed: %s", cfg.bin, exc)
        log.debug("%s", traceback.format_exc())
        return {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"}


def train_all_bins(cfg: SourceTrainConfig, opts: RunOptions, handle: DatasetHandle, bins: list[str], *,
                   force: bool = False) -> dict[str, dict]:
    """Train each of ``bins`` (checked by the caller); skip complete ones unless ``force``; continue past failures.

    Every bin's preconditions are checked, and the sources' shared start resolved (pretrained upstream or drawn
    at random, once), before the first bin trains: a problem is one message listing every bin it affects, never
    the same failure repeated per bin after minutes of work. With ``opts.workers > 1`` or ``opts.executor ==
    "ray"`` bins train in parallel.
    """
    results: dict[str, dict] = {}
    todo = []
    for b in bins:
        bcfg = replace(cfg, bin=b)
        ckpt = source_checkpoint_path(bcfg, opts)
        if is_complete(ckpt, handle.fingerprint) and not force:
            results[b] = {"status": "skipped", "detail": f"complete: {ckpt}"}
        else:
            todo.append(bcfg)
    if not todo:
        return {b: results[b] for b in bins}
    handle.check_trainable([c.bin for c in todo])
    handle.warn_upscale(cfg.image_size or handle.info.image_size, cfg.model_name)
    start = resolve_start(cfg, opts, handle)
    log.info("Every source starts from the %s.", start.describe())
    parallel = len(todo) > 1 and (opts.workers > 1 or opts.executor != "local")
    if parallel:
        opts = replace(opts, progress=False)
    else:
        opts = replace(opts, executor="local", workers=1)
    with make_executor(opts) as executor:
        for i, value in executor.run(_train_one, [(c, opts, handle, start) for c in todo]):
            if isinstance(value, BaseException):  # the worker died (killed, out of memory, lost node)
                value = {"status": "failed", "detail": f"worker failed: {type(value).__name__}: {value}"}
            results[todo[i].bin] = value
    return {b: results[b] for b in bins}

"""Train one source model per bin: complete bins skipped, failures recorded (not raised), optional parallelism."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from .source import RunOptions, SourceTrainConfig, is_complete, resolve_pretrained_weights, source_checkpoint_path, \
    train_source

log = logging.getLogger(__name__)


def _train_one(cfg: SourceTrainConfig, opts: RunOptions) -> dict:
    t0 = time.perf_counter()
    try:
        report = train_source(cfg, opts)
        return {"status": "trained", "detail": f"test acc {report.get('test_accuracy', float('nan')):.4f} "
                                               f"({time.perf_counter() - t0:.0f}s)"}
    except Exception as exc:  # one failing bin must not stop the others; the summary reports it
        log.error("Training %s failed: %s", cfg.bin, exc)
        log.debug("%s", traceback.format_exc())
        return {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"}


def _init_worker(threads: int) -> None:
    import torch

    from ..utils.logs import quiet_dependencies

    quiet_dependencies()
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(threads)


def train_all_bins(cfg: SourceTrainConfig, opts: RunOptions, bins: list[str], *, force: bool = False,
                   workers: int = 1) -> dict[str, dict]:
    """Train each bin; skip complete ones unless ``force``; continue past failures.

    With ``workers > 1`` bins train in that many CPU processes (one share of the cores each); a tiny model's
    shared upstream start is pretrained first, once, so the processes never race to create it.
    """
    results: dict[str, dict] = {}
    todo = []
    for b in bins:
        bcfg = replace(cfg, bin=b)
        ckpt = source_checkpoint_path(bcfg, opts)
        if is_complete(ckpt) and not force:
            results[b] = {"status": "skipped", "detail": f"complete: {ckpt}"}
        else:
            todo.append(bcfg)
    if workers <= 1 or len(todo) <= 1:
        for bcfg in todo:
            results[bcfg.bin] = _train_one(bcfg, opts)
        return {b: results[b] for b in bins}
    from ..data.loaders import open_dataset

    weights = resolve_pretrained_weights(cfg, opts, open_dataset(cfg.dataset, opts.data_root))
    todo = [replace(c, weights=weights) if weights else c for c in todo]
    quiet = replace(opts, progress=False)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {c.bin: pool.submit(_train_one, c, quiet) for c in todo}
        for b, fut in futures.items():
            results[b] = fut.result()
    return {b: results[b] for b in bins}

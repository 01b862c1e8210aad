"""Source (baseline) training: one Lightning trainer for every dataset, model and bin (SPEC 4)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ..config import ConfigError
from ..data.datasets import get_dataset
from ..data.loaders import DatasetHandle, open_dataset
from ..models.checkpoint import read_checkpoint_meta, save_checkpoint
from ..models.factory import data_config
from ..options import TrainOptions, recorded
from ..utils.env import environment
from ..utils.io import read_json, write_json
from ..utils.seed import derive_seed, seed_everything
from .fit import SourceTrainConfig, evaluate_split, fit_classifier
from .start import SharedStart, model_from_start, resolve_start

log = logging.getLogger(__name__)


def source_checkpoint_path(cfg: SourceTrainConfig, opts: TrainOptions) -> Path:
    return opts.source_checkpoint(get_dataset(cfg.dataset).name, cfg.model_name, cfg.bin)


def is_complete(ckpt: Path, fingerprint: str | None = None) -> bool:
    """A checkpoint counts as complete when it and its metrics JSON both exist and parse, and (given the data's
    ``fingerprint``) it was trained on this build of the data, not on an earlier import."""
    metrics = ckpt.with_suffix(".json")
    if not (ckpt.is_file() and metrics.is_file()):
        return False
    try:
        trained_on = read_checkpoint_meta(ckpt).get("data_fingerprint")
        if fingerprint and trained_on and trained_on != fingerprint:
            log.info("%s was trained on another build of the data; training it again.", ckpt)
            return False
        return read_json(metrics).get("status") == "complete"
    except Exception:  # noqa: BLE001  a damaged file of any kind means: not complete, train again
        return False


def source_seed(cfg: SourceTrainConfig) -> int:
    """The source stage's own seed (base seed, stage, bin): independent of what ran before it."""
    return derive_seed(cfg.seed, "source", cfg.bin)


def train_source(cfg: SourceTrainConfig, opts: TrainOptions | None = None,
                 handle: DatasetHandle | None = None, start: SharedStart | None = None) -> dict:
    """Train one source model on ``cfg.bin``; write ``<bin>.ckpt`` (best val) and ``<bin>.json`` (metrics).

    ``handle`` is the opened dataset (the caller has checked the bin) and ``start`` the sources' shared start
    (resolved once by the caller); without them they are resolved here."""
    opts = opts or TrainOptions()
    if not cfg.bin:
        raise ConfigError(f"No bin given; pass one of {list(get_dataset(cfg.dataset).bins)} (--bin).")
    if handle is None:
        handle = open_dataset(cfg.dataset, opts.data_root)
        handle.check_bins(cfg.bin)
    if start is None:
        handle.check_trainable([cfg.bin])
        handle.warn_upscale(cfg.image_size or handle.info.image_size, cfg.model_name)
        start = resolve_start(cfg, opts, handle)
    seed = source_seed(cfg)
    seed_everything(seed)  # after the start was made, which may or may not have happened (and seeds itself)
    image_size = cfg.image_size or handle.info.image_size
    model = model_from_start(start, cfg.model_name, handle.num_classes, image_size)
    ckpt = source_checkpoint_path(cfg, opts)
    module, trainer, info = fit_classifier(handle, cfg.bin, model, cfg, opts, ckpt.parent / "logs", cfg.bin)
    if trainer.global_rank != 0:
        return {}
    best = module.best_model()
    dcfg = data_config(best, image_size, hflip=handle.info.hflip)
    test = evaluate_split(best, handle, cfg.bin, "test", dcfg, cfg.batch_size, opts.num_workers)
    resolved = {**asdict(cfg), "image_size": image_size, "pretrained": start.pretrained, "pretrained_from": start.path,
                "start": start.record(), "stage_seed": seed,
                "precision": info["precision"], "learning_rate": cfg.resolved_learning_rate}
    metrics = {"val_accuracy": module.best_val_accuracy, "best_epoch": module.best_epoch,
               "test_accuracy": test["accuracy"]}
    save_checkpoint(ckpt, best, model_name=cfg.model_name, classes=handle.classes, dataset=handle.info.name,
                    bin_name=cfg.bin, config=resolved, metrics=metrics, extra={"data_fingerprint": handle.fingerprint})
    report = {"status": "complete", "dataset": handle.info.name, "bin": cfg.bin, "model": cfg.model_name,
              "checkpoint": str(ckpt), "data_fingerprint": handle.fingerprint, "config": resolved,
              "options": recorded(opts, TrainOptions), "seed": seed, **metrics,
              "test": test, "environment": environment(str(trainer.strategy.root_device)), **info}
    write_json(ckpt.with_suffix(".json"), report)
    log.info("Trained %s on %s/%s: val %.3f, test %.3f -> %s", cfg.model_name, handle.info.name, cfg.bin,
             module.best_val_accuracy, test["accuracy"], ckpt)
    return report

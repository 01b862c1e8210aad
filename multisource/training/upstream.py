"""Upstream pretraining of the tiny models: their "pretrained weights" (SPEC 2.4)."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

from ..data.folder import DataError
from ..data.loaders import DatasetHandle
from ..models.checkpoint import read_checkpoint_meta, save_checkpoint
from ..models.factory import create_model
from ..options import TrainOptions
from ..paths import UPSTREAM
from ..utils.io import write_json
from ..utils.seed import derive_seed, seed_everything
from .fit import SourceTrainConfig, fit_classifier

log = logging.getLogger(__name__)
# Pretraining recipe for the tiny models on the upstream pool (from scratch, so a higher rate, more epochs).
UPSTREAM_EPOCHS = 15
UPSTREAM_LR = 3e-3


def upstream_checkpoint(handle: DatasetHandle, model_name: str, opts: TrainOptions) -> Path:
    return opts.results_path() / handle.info.name / UPSTREAM / f"{model_name}.ckpt"


def ensure_upstream(handle: DatasetHandle, cfg: SourceTrainConfig, opts: TrainOptions, *, force: bool = False,
                    epochs: int = UPSTREAM_EPOCHS) -> Path:
    """Return the upstream checkpoint for ``cfg.model_name``, pretraining it once if it does not exist.

    Pretraining seeds itself from its own stage seed, so whether it runs or is reused never changes the
    random numbers a later stage (a source model) draws."""
    path = upstream_checkpoint(handle, cfg.model_name, opts)
    if path.is_file() and not force:
        try:
            trained_on = read_checkpoint_meta(path).get("data_fingerprint")
        except Exception:  # noqa: BLE001  any unreadable file is re-made, whatever the reason
            log.warning("Upstream checkpoint %s is unreadable; pretraining again.", path)
        else:
            # A rebuilt dataset (another seed or split) may put upstream images into bins' val and test splits:
            # a start pretrained on the old build would have seen the new build's test images.
            if not (handle.fingerprint and trained_on and trained_on != handle.fingerprint):
                return path
            log.warning("Upstream checkpoint %s was pretrained on another build of %s; pretraining again.", path,
                        handle.info.name)
    if not (handle.root / UPSTREAM / "train").is_dir():
        raise DataError(f"{cfg.model_name} starts from weights pretrained on an upstream pool, "
                        f"and dataset {handle.info.name} has none at {handle.root / UPSTREAM}. Pass --weights PATH "
                        "(e.g. results/drift_digits/upstream/<model>.ckpt) or --no-pretrained.")
    up_cfg = replace(cfg, bin=UPSTREAM, max_epochs=epochs, learning_rate=UPSTREAM_LR, head_lr_multiplier=1.0,
                     warmup_epochs=1.0, pretrained=False, weights=None)
    seed_everything(derive_seed(up_cfg.seed, "upstream", cfg.model_name))
    log.info("Pretraining %s on %s's upstream pool (once; reused by every source model).", cfg.model_name,
             handle.info.name)
    image_size = cfg.image_size or handle.info.image_size
    model = create_model(cfg.model_name, handle.num_classes, pretrained=False, image_size=image_size)
    module, trainer, info = fit_classifier(handle, UPSTREAM, model, up_cfg, opts, path.parent / "logs",
                                           cfg.model_name)
    if trainer.global_rank == 0:
        metrics = {"val_accuracy": module.best_val_accuracy, "best_epoch": module.best_epoch}
        config = {**asdict(up_cfg), "image_size": image_size}
        save_checkpoint(path, module.best_model(), model_name=cfg.model_name, classes=handle.classes,
                        dataset=handle.info.name, bin_name=UPSTREAM, config=config, metrics=metrics,
                        extra={"data_fingerprint": handle.fingerprint})
        write_json(path.with_suffix(".json"), {"status": "complete", **metrics, "config": config,
                                               "data_fingerprint": handle.fingerprint, **info})
    return path

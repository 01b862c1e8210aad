"""Source (baseline) training: one Lightning trainer for every dataset, model and bin (SPEC 4)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch

from ..config import ConfigError, check_choice, check_range
from ..data.loaders import DatasetHandle, open_dataset, split_loader
from ..measure.metrics import classification_metrics
from ..models.checkpoint import read_checkpoint_meta, save_checkpoint
from ..models.factory import create_model, data_config, resolve_model
from ..paths import RESULTS_DIR, checkpoint_path
from ..utils.env import environment
from ..utils.io import read_json, write_json
from ..utils.seed import seed_everything
from .loop import predict
from .module import ClassifierModule

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "32", "32-true", "16-mixed", "bf16-mixed", "64")


@dataclass
class SourceTrainConfig:
    """What to train (SPEC 4 defaults). ``learning_rate=None`` takes the model's recommended value."""

    dataset: str = "drift_digits"
    bin: str = ""
    model_name: str = "tiny-resnet"
    max_epochs: int = 15
    batch_size: int = 32
    learning_rate: float | None = None
    weight_decay: float = 0.01
    head_lr_multiplier: float = 10.0
    warmup_epochs: float = 2.0
    gradient_clip: float = 1.0
    image_size: int | None = None
    pretrained: bool = True
    weights: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        check_range(self, "max_epochs", 1)
        check_range(self, "batch_size", 1)
        check_range(self, "weight_decay", 0)
        check_range(self, "warmup_epochs", 0)
        if self.learning_rate is not None:
            check_range(self, "learning_rate", 0)
        if self.image_size is not None:
            check_range(self, "image_size", 8)


@dataclass
class RunOptions:
    """How to run: hardware, workers, paths. Kept apart from what to run."""

    accelerator: str = "auto"
    devices: str | int = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    data_root: str | None = None
    results_dir: str | None = None
    checkpoint_dir: str | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self, "precision", PRECISIONS)

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        use_gpu = torch.cuda.is_available() and self.accelerator in ("auto", "gpu", "cuda")
        return "16-mixed" if use_gpu else "32-true"

    def results_path(self) -> Path:
        return Path(self.results_dir).resolve() if self.results_dir else RESULTS_DIR


def source_checkpoint_path(cfg: SourceTrainConfig, opts: RunOptions) -> Path:
    model = resolve_model(cfg.model_name).name
    if opts.checkpoint_dir:
        return Path(opts.checkpoint_dir).resolve() / f"{cfg.bin}.ckpt"
    return checkpoint_path(opts.results_path(), cfg.dataset, model, cfg.bin)


def is_complete(ckpt: Path) -> bool:
    """A checkpoint counts as complete when it and its metrics JSON both exist and parse."""
    metrics = ckpt.with_suffix(".json")
    if not (ckpt.is_file() and metrics.is_file()):
        return False
    try:
        return read_json(metrics).get("status") == "complete" and bool(read_checkpoint_meta(ckpt))
    except Exception:  # a damaged file means: not complete, train again
        return False


def fit_classifier(handle: DatasetHandle, bin_name: str, model, cfg: SourceTrainConfig, opts: RunOptions,
                   log_dir: Path, name: str) -> tuple[ClassifierModule, L.Trainer, dict]:
    """Train ``model`` on ``bin_name``'s train split, selecting on its val split. Shared by the source
    trainer and upstream pretraining."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    spec = resolve_model(cfg.model_name)
    dcfg = data_config(model, cfg.image_size or handle.info.image_size, hflip=handle.info.hflip)
    train = split_loader(handle, bin_name, "train", dcfg, batch_size=cfg.batch_size, num_workers=opts.num_workers,
                         seed=cfg.seed)
    val = split_loader(handle, bin_name, "val", dcfg, batch_size=cfg.batch_size, num_workers=opts.num_workers)
    module = ClassifierModule(model, learning_rate=cfg.learning_rate or spec.learning_rate,
                              weight_decay=cfg.weight_decay, head_lr_multiplier=cfg.head_lr_multiplier,
                              warmup_epochs=cfg.warmup_epochs)
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, accelerator=opts.accelerator, devices=opts.devices, num_nodes=opts.num_nodes,
        strategy=opts.strategy, precision=opts.resolved_precision(), gradient_clip_val=cfg.gradient_clip or None,
        logger=[TensorBoardLogger(log_dir, name=name, version="tensorboard"),
                CSVLogger(log_dir, name=name, version="csv")],
        enable_checkpointing=False, enable_progress_bar=opts.progress, enable_model_summary=False,
        deterministic=False, log_every_n_steps=max(1, min(50, len(train))), num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train, val)
    info = {"train_time_s": time.perf_counter() - t0, "data_config": asdict(dcfg),
            "train_images": len(train.dataset), "val_images": len(val.dataset)}
    return module, trainer, info


def evaluate_split(model, handle: DatasetHandle, bin_name: str, split: str, dcfg, batch_size: int,
                   num_workers: int = 0, device: str | torch.device = "cpu") -> dict:
    loader = split_loader(handle, bin_name, split, dcfg, batch_size=batch_size, num_workers=num_workers)
    logits, y = predict(model.to(device), loader, torch.device(device))
    return classification_metrics(logits, y, handle.classes)


def resolve_pretrained_weights(cfg: SourceTrainConfig, opts: RunOptions, handle: DatasetHandle) -> str | None:
    """The weights a source model starts from: --weights, else the tiny model's upstream checkpoint."""
    if not cfg.pretrained or cfg.weights:
        return cfg.weights
    if resolve_model(cfg.model_name).pretrained == "upstream":
        from .upstream import ensure_upstream

        return str(ensure_upstream(handle, cfg, opts))
    return None


def train_source(cfg: SourceTrainConfig, opts: RunOptions | None = None) -> dict:
    """Train one source model on ``cfg.bin``; write ``<bin>.ckpt`` (best val) and ``<bin>.json`` (metrics)."""
    opts = opts or RunOptions()
    handle = open_dataset(cfg.dataset, opts.data_root)
    if not cfg.bin:
        raise ConfigError(f"No bin given; pass one of {handle.bins}.")
    handle.check_bins(cfg.bin)
    spec = resolve_model(cfg.model_name)
    seed_everything(cfg.seed)
    weights = resolve_pretrained_weights(cfg, opts, handle)
    image_size = cfg.image_size or handle.info.image_size
    model = create_model(spec.name, handle.num_classes, pretrained=cfg.pretrained, weights=weights,
                         image_size=image_size)
    ckpt = source_checkpoint_path(cfg, opts)
    module, trainer, info = fit_classifier(handle, cfg.bin, model, cfg, opts, ckpt.parent / "logs", cfg.bin)
    if trainer.global_rank != 0:
        return {}
    best = module.best_model()
    dcfg = data_config(best, image_size, hflip=handle.info.hflip)
    test = evaluate_split(best, handle, cfg.bin, "test", dcfg, cfg.batch_size, opts.num_workers)
    resolved = {**asdict(cfg), "model_name": spec.name, "image_size": image_size, "pretrained_from": weights,
                "precision": opts.resolved_precision(), "learning_rate": cfg.learning_rate or spec.learning_rate}
    metrics = {"val_accuracy": module.best_val_accuracy, "best_epoch": module.best_epoch,
               "test_accuracy": test["accuracy"]}
    save_checkpoint(ckpt, best, model_name=spec.name, classes=handle.classes, dataset=handle.info.name,
                    bin_name=cfg.bin, config=resolved, metrics=metrics)
    report = {"status": "complete", "dataset": handle.info.name, "bin": cfg.bin, "model": spec.name,
              "checkpoint": str(ckpt), "config": resolved, "seed": cfg.seed, **metrics, "test": test,
              "environment": environment(str(trainer.strategy.root_device)), **info}
    write_json(ckpt.with_suffix(".json"), report)
    log.info("Trained %s on %s/%s: val %.3f, test %.3f -> %s", spec.name, cfg.dataset, cfg.bin,
             module.best_val_accuracy, test["accuracy"], ckpt)
    return report

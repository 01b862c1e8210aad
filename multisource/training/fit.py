"""What a source model is trained with (SPEC 4) and the one Lightning fit shared by the source trainer and
the tiny models' upstream pretraining."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..config import ConfigError, check_range, check_seed
from ..data.datasets import get_dataset
from ..data.batch_augment import BatchAugment, UInt8Crops
from ..data.loaders import DatasetHandle, make_loader, split_loader
from ..measure.metrics import classification_metrics
from ..models.factory import data_config, resolve_model
from ..options import TrainOptions
from .loop import predict
from .progress import PlainProgress, output_is_terminal
from .module import ClassifierModule


@dataclass
class SourceTrainConfig:
    """What to train (SPEC 4 defaults). ``learning_rate=None`` takes the model's recommended value.

    The model name is made canonical on construction, so lower layers use ``model_name`` as is."""

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
        check_seed(self)
        check_range(self, "batch_size", 1)
        check_range(self, "weight_decay", 0)
        check_range(self, "warmup_epochs", 0)
        check_range(self, "gradient_clip", 0)
        check_range(self, "head_lr_multiplier", 0)
        if self.learning_rate is not None:
            check_range(self, "learning_rate", 0, low_open=True)
        if self.image_size is not None:
            check_range(self, "image_size", 8)
        self.model_name = resolve_model(self.model_name).name
        self.dataset = get_dataset(self.dataset).key  # a registered name or an imported dataset's folder

    @property
    def resolved_learning_rate(self) -> float:
        return self.learning_rate or resolve_model(self.model_name).learning_rate


def fit_classifier(handle: DatasetHandle, bin_name: str, model: torch.nn.Module, cfg: SourceTrainConfig,
                   opts: TrainOptions, log_dir: Path, name: str) -> tuple[ClassifierModule, L.Trainer, dict]:
    """Train ``model`` on ``bin_name``'s train split, selecting on its val split (best-val weights kept)."""
    dcfg = data_config(model, cfg.image_size or handle.info.image_size, hflip=handle.info.hflip)
    if opts.batch_augment:  # uint8 crops; colour jitter + normalisation per batch on the device (the module's hook)
        crops = UInt8Crops(handle.split(bin_name, "train"), dcfg, train=True)
        train = make_loader(crops, batch_size=cfg.batch_size, train=True, num_workers=opts.num_workers, seed=cfg.seed,
                            drop_last=len(crops) % cfg.batch_size == 1)
    else:
        train = split_loader(handle, bin_name, "train", dcfg, batch_size=cfg.batch_size,
                             num_workers=opts.num_workers, seed=cfg.seed)
    val = split_loader(handle, bin_name, "val", dcfg, batch_size=cfg.batch_size, num_workers=opts.num_workers)
    module = ClassifierModule(model, learning_rate=cfg.resolved_learning_rate, weight_decay=cfg.weight_decay,
                              head_lr_multiplier=cfg.head_lr_multiplier, warmup_epochs=cfg.warmup_epochs,
                              train_batch_transform=BatchAugment(dcfg, train=True) if opts.batch_augment else None)
    device_type = "cuda" if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available()) else "cpu"
    precision = opts.precision_on(device_type)
    bar = opts.progress and output_is_terminal()  # a bar in a file is silent until the end: plain lines instead
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, accelerator=opts.lightning_accelerator(), devices=opts.devices,
        num_nodes=opts.num_nodes, strategy=opts.strategy, precision=lightning_precision(precision),
        gradient_clip_val=cfg.gradient_clip or None,
        logger=[TensorBoardLogger(log_dir, name=name, version="tensorboard"),
                CSVLogger(log_dir, name=name, version="csv")],
        enable_checkpointing=False, enable_progress_bar=bar, enable_model_summary=False,
        callbacks=[PlainProgress(f"{handle.info.name}/{bin_name}")] if opts.progress and not bar else [],
        deterministic=False, log_every_n_steps=max(1, min(50, len(train))), num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train, val)
    cluster = getattr(trainer.strategy, "cluster_environment", None)  # None on one device
    info = {"train_time_s": time.perf_counter() - t0, "data_config": asdict(dcfg), "precision": precision,
            "train_images": len(train.dataset), "val_images": len(val.dataset),
            # how many processes trained it, and who started them (Lightning, torchrun, SLURM, ...)
            "world_size": trainer.world_size,
            "cluster_environment": type(cluster).__name__ if cluster is not None else None}
    return module, trainer, info


def lightning_precision(precision: str) -> str:
    """Our recorded names ("32", "16-mixed", "bf16-mixed") in Lightning's spelling."""
    return {"32": "32-true"}.get(precision, precision)


def evaluate_split(model: torch.nn.Module, handle: DatasetHandle, bin_name: str, split: str, dcfg, batch_size: int,
                   num_workers: int = 0, device: str | torch.device = "cpu") -> dict:
    loader = split_loader(handle, bin_name, split, dcfg, batch_size=batch_size, num_workers=num_workers)
    logits, y = predict(model.to(device), loader, torch.device(device))
    return classification_metrics(logits, y, handle.classes)

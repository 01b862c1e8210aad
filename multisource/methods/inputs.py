"""A method's inputs built from names and paths, and calling a method from Python without the scripts.

    target = target_data("drift_digits", "era_5", model="tiny-resnet")
    result = run_method("grasp", {"era_1": "results/.../era_1.ckpt", ...}, target, {"alignment_threshold": 0.3})
    result.model, result.record
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import build
from ..data.batch_augment import BatchAugment, DeviceBatches, UInt8Crops
from ..data.loaders import DatasetHandle, make_loader, open_dataset, split_loader
from ..data.transforms import make_transform
from ..measure.meter import Meter
from ..models.factory import data_config_for, resolve_model
from .base import MethodResult, ReadLoader, SourcePool, TargetData, get_method, resolve_budget


def make_config(method: str, values: Mapping[str, Any] | Any | None = None) -> Any:
    """The method's config dataclass from a mapping (unknown keys are errors) or an instance as is."""
    spec = get_method(method)
    if isinstance(values, spec.config_cls):
        return values
    return build(spec.config_cls, dict(values or {}))


def target_data(dataset: str | DatasetHandle, target: str, *, model: str, data_root: str | Path | None = None,
                batch_size: int = 32, num_workers: int = 0, device: str | torch.device = "cpu",
                precision: str = "32", seed: int = 0, image_size: int | None = None,
                batch_augment: bool = False) -> TargetData:
    """The target bin's loaders (train with train transforms and seeded shuffling; val/test for evaluation).

    Every loader notes in ``TargetData.reads`` when it is iterated: "target:<split>" for the target's splits,
    "source:<bin>:<split>" for another bin's data, so a result records the information its method used.
    ``batch_augment``: the target's train batches arrive as uint8 crops and get their colour jitter and
    normalisation on ``device``, per batch (data/batch_augment.py; the same distribution, for feeding a GPU)."""
    handle = dataset if isinstance(dataset, DatasetHandle) else open_dataset(dataset, data_root)
    image_size = image_size or handle.info.image_size
    dcfg = data_config_for(model, image_size, hflip=handle.info.hflip)
    reads: set[str] = set()

    def loader(bin_name: str, split: str) -> ReadLoader:
        name = f"target:{split}" if bin_name == target else f"source:{bin_name}:{split}"
        if batch_augment and bin_name == target and split == "train":
            crops = UInt8Crops(handle.split(bin_name, split), dcfg, train=True)
            plain = make_loader(crops, batch_size=batch_size, train=True, num_workers=num_workers, seed=seed,
                                drop_last=len(crops) % batch_size == 1)
            return ReadLoader(DeviceBatches(plain, BatchAugment(dcfg, train=True), torch.device(device)), reads, name)
        return ReadLoader(split_loader(handle, bin_name, split, dcfg, batch_size=batch_size,
                                       num_workers=num_workers, seed=seed), reads, name)

    def split_dataset(bin_name: str, split: str, augment: bool):
        return handle.split(bin_name, split, make_transform(dcfg, augment))

    return TargetData(bin=target, classes=handle.classes, train=loader(target, "train"), val=loader(target, "val"),
                      test=loader(target, "test"), device=torch.device(device), precision=precision,
                      image_size=image_size, seed=seed, bin_loader=loader, split_dataset=split_dataset, reads=reads,
                      bins=tuple(handle.bins))


def source_pool(checkpoints: Mapping[str, str | Path], target: TargetData, *, model: str,
                residency: Any | None = None) -> SourcePool:
    """A pool over ``{bin: checkpoint}`` in the given order."""
    return SourcePool({b: Path(p) for b, p in checkpoints.items()}, model=resolve_model(model), classes=target.classes,
                      image_size=target.image_size, device=target.device, residency=residency)


def run_method(method: str, pool: SourcePool | Mapping[str, str | Path], target: TargetData,
               config: Mapping[str, Any] | Any | None = None, meter: Any | None = None, *,
               model: str | None = None) -> MethodResult:
    """Run a registered method on a pool (or a ``{bin: checkpoint}`` mapping plus ``model``); a ``matched``
    budget is matched to the reference method's default configuration."""
    spec = get_method(method)
    cfg = make_config(method, config)
    meter = meter if meter is not None else Meter(target.device)
    if not isinstance(pool, SourcePool):
        if model is None:
            raise ValueError("run_method needs model= when given checkpoint paths instead of a SourcePool.")
        pool = source_pool(pool, target, model=model)
    if pool.residency is None:
        pool.residency = meter.models
    return spec.run(resolve_budget(spec, cfg, len(pool)), pool, target, meter)

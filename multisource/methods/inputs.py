"""A method's inputs built from names and paths, and calling a method from Python without the scripts.

    target = target_data("drift_digits", "era_5", model="tiny-resnet")
    result = run_method("grasp", {"era_1": "results/.../era_1.ckpt", ...}, target, {"alignment_threshold": 0.3})
    result.model, result.record
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import build
from ..data.batch_augment import BatchAugment, DeviceBatches, UInt8Crops
from ..data.loaders import DatasetHandle, make_loader, open_dataset, split_dataset_loader
from ..data.splits import label_budget_indices
from ..data.transforms import make_transform
from ..measure.meter import Meter
from ..models.factory import data_config_for, resolve_model
from ..utils.seed import derive_seed
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
                batch_augment: bool = False, target_fraction: float = 1.0) -> TargetData:
    """The target bin's loaders (train with train transforms and seeded shuffling; val/test for evaluation).

    Every loader notes in ``TargetData.reads`` when it is iterated: "target:<split>" for the target's splits,
    "source:<bin>:<split>" for another bin's data, so a result records the information its method used.
    ``batch_augment``: the target's train batches arrive as uint8 crops and get their colour jitter and
    normalisation on ``device``, per batch (data/batch_augment.py; the same distribution, for feeding a GPU).
    ``target_fraction`` < 1: the target's train and val splits are a label budget's stratified subsample
    (data/splits.py), drawn from ``seed`` and the target alone, so every method of a trial sees the same images;
    the test split is whole."""
    handle = dataset if isinstance(dataset, DatasetHandle) else open_dataset(dataset, data_root)
    image_size = image_size or handle.info.image_size
    dcfg = data_config_for(model, image_size, hflip=handle.info.hflip)
    reads: set[str] = set()
    kept: dict[str, list[int]] = {}  # the label budget's subsample of the target's train and val, drawn once

    def split_dataset(bin_name: str, split: str, augment: bool | None):
        """One split with train (augment) or eval transforms, or none (None: raw images for UInt8Crops)."""
        ds = handle.split(bin_name, split, None if augment is None else make_transform(dcfg, augment))
        if bin_name != target or split == "test" or target_fraction == 1:
            return ds  # the test split is never subsampled: every budget is scored on the same examples
        if split not in kept:  # from (trial seed, target, split) only: the same for every method
            kept[split] = label_budget_indices(ds.targets, target_fraction,
                                               derive_seed(seed, "label-budget", target, split))
        return ds.restricted(kept[split])

    def loader(bin_name: str, split: str) -> ReadLoader:
        name = f"target:{split}" if bin_name == target else f"source:{bin_name}:{split}"
        if batch_augment and bin_name == target and split == "train":
            crops = UInt8Crops(split_dataset(bin_name, split, None), dcfg, train=True)
            plain = make_loader(crops, batch_size=batch_size, train=True, num_workers=num_workers, seed=seed,
                                drop_last=len(crops) % batch_size == 1)
            return ReadLoader(DeviceBatches(plain, BatchAugment(dcfg, train=True), torch.device(device)), reads, name)
        ds = split_dataset(bin_name, split, split == "train")
        return ReadLoader(split_dataset_loader(ds, batch_size=batch_size, train=split == "train",
                                               num_workers=num_workers, seed=seed), reads, name)

    train, val = loader(target, "train"), loader(target, "val")  # draws the budget's subsample, if any
    sample = (hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
              if target_fraction != 1 else None)
    return TargetData(bin=target, classes=handle.classes, train=train, val=val, test=loader(target, "test"),
                      budget_sample=sample, device=torch.device(device), precision=precision,
                      image_size=image_size, seed=seed, bin_loader=loader, split_dataset=split_dataset, reads=reads,
                      bins=tuple(handle.bins), fraction=float(target_fraction))


def source_pool(checkpoints: Mapping[str, str | Path], target: TargetData, *, model: str,
                residency: Any | None = None, stands_for: Mapping[str, tuple[str, ...]] | None = None) -> SourcePool:
    """A pool over ``{bin: checkpoint}`` in the given order (``stands_for``: the bins an entry that is not a bin's
    source stands for, e.g. a stream's deployed model)."""
    return SourcePool({b: Path(p) for b, p in checkpoints.items()}, model=resolve_model(model), classes=target.classes,
                      image_size=target.image_size, device=target.device, residency=residency,
                      stands_for=dict(stands_for or {}))


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

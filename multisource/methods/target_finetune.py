"""Target fine-tuning shared by the methods that train on the target: its config fields, the matched budget,
and the fine-tuning call that records FLOPs and the target budget."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..config import ConfigError, check_range
from ..training.loop import FinetuneConfig, FitResult, finetune
from .base import MethodResult, SourcePool, TargetData

MATCHED = "matched"  # finetune_epochs: the reference method's target epochs for the same number of sources


@dataclass
class TargetFinetuneConfig:
    """``finetune_epochs`` is a number or ``matched``: as many target epochs as the reference method (GRASP)
    trains for the same K, resolved once by the experiment's plan (see :func:`match_finetune_epochs`)."""

    finetune_epochs: int | str = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.finetune_epochs, str):
            if self.finetune_epochs != MATCHED:
                raise ConfigError(f"{type(self).__name__}.finetune_epochs={self.finetune_epochs!r} is not valid; "
                                  f"use a number of epochs >= 0 or '{MATCHED}'.")
        else:
            check_range(self, "finetune_epochs", 0)
        if self.learning_rate is not None:  # None: a method's own default (target_only: the model's rate)
            check_range(self, "learning_rate", 0, low_open=True)
        check_range(self, "weight_decay", 0)

    @property
    def epochs(self) -> int:
        if self.finetune_epochs == MATCHED:
            raise ConfigError("finetune_epochs='matched' has not been resolved; run the method through an experiment "
                              "plan or methods.run_method, which match it to the reference method's epochs.")
        return int(self.finetune_epochs)

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, learning_rate=self.learning_rate, weight_decay=self.weight_decay)


# Why the merging baselines are not in a sweep that names no method: each is one more row on every target,
# and none is part of the paper's comparison; ``--methods task_arithmetic ties dare soup`` adds them.
MERGE_OUTSIDE_DEFAULT = ("a model-merging baseline outside the paper's comparison (one more row per target); name it "
                         "in --methods to run it")


def match_finetune_epochs(config: Any, epochs: int) -> Any:
    """``config`` with ``finetune_epochs: matched`` replaced by ``epochs`` (unchanged when it is a number)."""
    return replace(config, finetune_epochs=epochs) if config.finetune_epochs == MATCHED else config


def finetune_on_target(model: nn.Module, target: TargetData, cfg: FinetuneConfig, meter, *, phase: str = "finetune",
                       desc: str = "fine-tune", macs_key: str = "model", optimizer=None) -> FitResult:
    """Fine-tune ``model`` on the target's train split, keep its best-val epoch, and log training FLOPs and the
    target budget."""
    macs = target.forward_macs(model, macs_key)
    with meter.phase(phase):
        result = finetune(model, target.train, target.val, cfg, target.device, precision=target.precision,
                          optimizer=optimizer, desc=desc)
    meter.models.add_optimizer_bytes(result.optimizer_state_bytes)
    meter.flops.add_training(phase, macs, result.train_images)
    meter.flops.add_forward(f"{phase}_validation", macs, result.val_images)
    meter.budget.add(sum(1 for h in result.history if h["epoch"] > 0), result.train_images)
    return result


def finetune_after_merge(model: nn.Module, record: dict, cfg: TargetFinetuneConfig, pool: SourcePool,
                         target: TargetData, meter, desc: str) -> MethodResult:
    """Optional target fine-tuning; the merged weights before it are handed to the runner, which reports
    their val and test accuracy beside the final ones (``before_finetune``)."""
    if cfg.epochs == 0:
        return MethodResult(model=model, record={**record, "finetuned": False}, stages={"before_finetune": None})
    before = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}  # host memory, not the GPU's
    if pool.residency is not None:
        pool.residency.hold("before_finetune", before)
    fit = finetune_on_target(model, target, cfg.finetune_config(), meter, desc=desc, macs_key="merged")
    record.update(finetuned=True, best_epoch=fit.best_epoch, best_val_accuracy=fit.best_val_accuracy)
    return MethodResult(model=model, record=record, history=[{"step": "finetune", **h} for h in fit.history],
                        stages={"before_finetune": before})

"""Target fine-tuning with its FLOPs recorded, shared by fusion, grasp and pearl."""

from __future__ import annotations

from torch import nn

from ..training.loop import FinetuneConfig, FitResult, finetune
from .base import TargetData


def finetune_on_target(model: nn.Module, target: TargetData, cfg: FinetuneConfig, meter, *, phase: str = "finetune",
                       desc: str = "fine-tune", macs_key: str = "model", optimizer=None) -> FitResult:
    """Fine-tune ``model`` on the target's train split, keep its best-val epoch, and log training FLOPs."""
    macs = target.forward_macs(model, macs_key)
    with meter.phase(phase):
        result = finetune(model, target.train, target.val, cfg, target.device, precision=target.precision,
                          optimizer=optimizer, desc=desc)
    meter.models.add_optimizer_bytes(result.optimizer_state_bytes)
    meter.flops.add_training(phase, macs, result.train_images)
    meter.flops.add_forward(f"{phase}_validation", macs, result.val_images)
    return result

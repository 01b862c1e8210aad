"""FUSION ("Multi-Source"): average the sources' parameters, then fine-tune on the target (SPEC 5).

Mode ``params`` (default) keeps a running mean, so two models are resident whatever K is. Mode ``logits``
reproduces the released code's behaviour: all K models fine-tuned jointly on the mean of their logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice
from .base import MethodResult, SourcePool, TargetData, register_method
from .merge import recalibrate_batchnorm, running_mean_
from .target_finetune import TargetFinetuneConfig, finetune_on_target, match_finetune_epochs


@dataclass
class FusionConfig(TargetFinetuneConfig):
    mode: str = "params"
    recalibrate_bn: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "mode", ("params", "logits"))


class LogitMean(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def _average_streaming(pool: SourcePool) -> tuple[nn.Module, int]:
    """Running mean over the sources, one loaded at a time, accumulated in the first source's module."""
    names = pool.names
    merged = pool.load(names[0], key="fused")
    acc = merged.state_dict()  # shares storage with ``merged``
    elements = 0
    for k, name in enumerate(names[1:], start=2):
        with pool.borrow(name) as source:
            elements += running_mean_(acc, source.state_dict(), k)
            del source  # otherwise the loop variable keeps this source alive while the next one loads (3 resident)
    return merged, 3 * elements  # per element: subtract, scale, add


@register_method("fusion", FusionConfig, "Average source parameters (or jointly tune a logit mean), then fine-tune.",
                 match_budget=match_finetune_epochs)
def run(cfg: FusionConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    record: dict = {"mode": cfg.mode, "members": pool.names}
    if cfg.mode == "logits":
        with meter.phase("load"):
            model = LogitMean([pool.load(n) for n in pool.names])
    else:
        with meter.phase("merge"):
            model, merge_macs = _average_streaming(pool)
        meter.flops.add("merge", merge_macs)
        if cfg.recalibrate_bn:
            with meter.phase("merge"):
                used = recalibrate_batchnorm(model, target.train, target.device)
            meter.flops.add_forward("bn_recalibration", target.forward_macs(model), used)
            record["bn_recalibration_images"] = used
    fit = finetune_on_target(model, target, cfg.finetune_config(), meter, desc=f"fusion[{cfg.mode}]",
                             macs_key=f"fusion-{cfg.mode}")
    record.update(best_epoch=fit.best_epoch, best_val_accuracy=fit.best_val_accuracy)
    return MethodResult(model=model, record=record, history=[{"step": "finetune", **h} for h in fit.history],
                        standalone=cfg.mode == "params")

"""FUSION ("Multi-Source"): average the sources' parameters, then fine-tune on the target (SPEC 5).

Mode ``params`` (default) keeps a running mean, so two models are resident whatever K is. Mode ``logits``
reproduces the released code's behaviour: all K models fine-tuned jointly on the mean of their logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, check_choice
from .base import MethodResult, SourcePool, TargetData, register_method
from .merge import recalibrate_batchnorm, running_mean_, weighted_running_mean_
from .target_finetune import TargetFinetuneConfig, finetune_on_target, match_finetune_epochs


@dataclass
class FusionConfig(TargetFinetuneConfig):
    mode: str = "params"
    recalibrate_bn: bool = False
    source_weights: str = "uniform"  # uniform | recency:GAMMA (a source k bins from the target weighs GAMMA^k)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "mode", ("params", "logits"))
        self.gamma  # noqa: B018  (validates source_weights now, with the field named)
        if self.mode == "logits" and self.source_weights != "uniform":
            raise ConfigError("FusionConfig.source_weights applies to mode 'params' (a parameter average); the "
                              "'logits' mode trains every source jointly. Use source_weights: uniform.")

    @property
    def gamma(self) -> float | None:
        """The recency factor, or None for uniform weights."""
        if self.source_weights == "uniform":
            return None
        kind, _, value = self.source_weights.partition(":")
        try:
            gamma = float(value)
        except ValueError:
            gamma = -1.0
        if kind != "recency" or not gamma > 0:
            raise ConfigError(f"FusionConfig.source_weights={self.source_weights!r} is not valid; use 'uniform' or "
                              "'recency:GAMMA' with GAMMA > 0 (e.g. recency:0.5: each bin further from the target "
                              "halves a source's weight).")
        return gamma


class LogitMean(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def source_weights(pool: SourcePool, target: TargetData, gamma: float | None) -> list[float]:
    """Each pool entry's averaging weight in pool order: per bin it stands for (a source: its own), 1 or
    GAMMA^(bins between it and the target). A stream's deployed model, the mean over the bins before, thereby
    weighs as those sources would, so the stream's running mean is the mean over every source so far."""
    return [sum(1.0 if gamma is None else gamma ** target.distance(b) for b in pool.stands_for(n))
            for n in pool.names]


def average_streaming(pool: SourcePool, weights: list[float] | None = None) -> tuple[nn.Module, int]:
    """(Weighted) running mean over the sources, one loaded at a time, accumulated in the first source's module."""
    names = pool.names
    merged = pool.load(names[0], key="fused")
    acc = merged.state_dict()  # shares storage with ``merged``
    elements, total = 0, weights[0] if weights else 1.0
    for k, name in enumerate(names[1:], start=2):
        with pool.borrow(name) as source:
            if weights is None:
                elements += running_mean_(acc, source.state_dict(), k)
            else:
                total += weights[k - 1]
                elements += weighted_running_mean_(acc, source.state_dict(), weights[k - 1], total)
            del source  # otherwise the loop variable keeps this source alive while the next one loads (3 resident)
    return merged, 3 * elements  # per element: subtract, scale, add


@register_method("fusion", FusionConfig, "Average source parameters (or jointly tune a logit mean), then fine-tune.",
                 match_budget=match_finetune_epochs, needs_shared_start=True,
                 stream="a running mean: the model deployed for the previous bin weighs as the sources it stands for, "
                        "the new source as one; then fine-tuned (2 models resident)",
                 stream_problem=lambda c: ("fusion's logits mode trains every source jointly and has no running form; "
                                           "use --mode params") if c.mode == "logits" else None)
def run(cfg: FusionConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    record: dict = {"mode": cfg.mode, "members": pool.names}
    if cfg.mode == "logits":
        with meter.phase("load"):
            model = LogitMean([pool.load(n) for n in pool.names])
    else:
        weights = source_weights(pool, target, cfg.gamma)
        if cfg.gamma is None and set(weights) == {1.0}:
            weights = None  # a plain mean: the unweighted running mean (its rounding, as before weights existed)
        with meter.phase("merge"):
            model, merge_macs = average_streaming(pool, weights)
        meter.flops.add("merge", merge_macs)
        if weights is not None:
            record.update(source_weights=cfg.source_weights, weights={n: w / sum(weights) for n, w in
                                                                      zip(pool.names, weights)})
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

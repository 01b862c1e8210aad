"""ENSEMBLE: the K source models predict the target together; no training (SPEC 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice
from .base import MethodResult, SourcePool, TargetData, register_method

VOTING = ("soft", "hard", "logits")


@dataclass
class EnsembleConfig:
    voting: str = "soft"  # soft = mean of softmax; hard = majority vote (ties by soft score); logits = mean logits

    def __post_init__(self) -> None:
        check_choice(self, "voting", VOTING)


class EnsembleModule(nn.Module):
    """Returns log-scores whose softmax is the ensemble's class distribution and whose argmax is its vote."""

    def __init__(self, members: list[nn.Module], voting: str = "soft") -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.voting = voting

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x).float() for m in self.members])  # (K, B, C)
        if self.voting == "logits":
            return logits.mean(0)
        probs = logits.softmax(-1).mean(0)
        if self.voting == "soft":
            return probs.clamp_min(1e-12).log()
        votes = nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0).float()  # (B, C)
        # Vote counts decide; the soft score (< 1) only breaks ties. Normalised to a distribution.
        scores = votes + 0.5 * probs
        return (scores / scores.sum(-1, keepdim=True)).log()


@register_method("ensemble", EnsembleConfig, "Average the K source models' predictions (all K resident).",
                 deterministic=True)
def run(cfg: EnsembleConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    members = []
    with meter.phase("load"):
        for name in pool.names:
            members.append(pool.load(name).eval())
    model = EnsembleModule(members, cfg.voting)
    record = {"mode": cfg.voting, "members": pool.names}
    return MethodResult(model=model, record=record, produces_model=False)

"""AdamW with the classifier head at a multiple of the backbone learning rate; warm-up then cosine per step."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.checkpoint import head_prefixes


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_multiplier: float = 1.0) -> list[dict]:
    heads = head_prefixes(model)
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith(heads) else body).append(p)
    groups = [{"params": body, "lr": lr, "weight_decay": weight_decay}]
    if head:
        groups.append({"params": head, "lr": lr * head_lr_multiplier, "weight_decay": weight_decay})
    return [g for g in groups if g["params"]]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0 at ``total_steps`` (stepped per batch)."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

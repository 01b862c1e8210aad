"""A lean target fine-tuning and evaluation loop used by the methods (no per-step framework overhead).

Source training goes through Lightning (``training.source``); the methods fine-tune one model for a few
epochs many times per sweep, so they share this loop: AdamW, per-step cosine, gradient clipping, AMP on
CUDA, and the best-validation epoch kept.
"""

from __future__ import annotations

import copy
import math
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from ..measure.memory import optimizer_state_bytes
from ..utils.progress import progress_bar
from .optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite: the run is refused, never recorded as a result."""



@dataclass
class FinetuneConfig:
    epochs: int = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    head_lr_multiplier: float = 1.0
    warmup_epochs: float = 0.0
    gradient_clip: float = 1.0
    schedule: str = "cosine"  # or "constant"
    include_initial: bool = False  # let the weights before training compete in the best-val selection
    freeze_batchnorm: bool = False  # keep BatchNorm in eval mode (running statistics untouched)


@dataclass
class FitResult:
    best_val_accuracy: float | None
    best_epoch: int | None
    history: list[dict] = field(default_factory=list)
    train_images: int = 0  # images seen in training steps (for FLOPs)
    val_images: int = 0
    optimizer_state_bytes: int = 0


def autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("16-mixed", "bf16-mixed"):
        return torch.autocast("cuda", dtype=torch.float16 if precision == "16-mixed" else torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def progress_disabled() -> bool:
    """Read at call time: sweep workers set TQDM_DISABLE after tqdm was imported (their bars would interleave)."""
    return os.environ.get("TQDM_DISABLE", "") not in ("", "0")


@torch.no_grad()
def predict(model: nn.Module | Callable, loader: Iterable, device: torch.device, precision: str = "32",
            desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (or whatever the model returns) and targets over ``loader``, in eval mode."""
    if isinstance(model, nn.Module):
        model.eval()
    outs, ys = [], []
    for x, y in progress_bar(loader, desc=desc, leave=False, enabled=desc is not None and not progress_disabled()):
        with autocast(device, precision):
            out = model(x.to(device, non_blocking=True))
        outs.append(out.float().cpu())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def accuracy(model: nn.Module, loader: Iterable, device: torch.device, precision: str = "32") -> float:
    logits, y = predict(model, loader, device, precision)
    return float((logits.argmax(1) == y).float().mean())


def train_parameters(model: nn.Module, extra: Iterable[nn.Parameter] = ()) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad] + list(extra)


def finetune(model: nn.Module, train_loader, val_loader, cfg: FinetuneConfig, device: torch.device, *,
             precision: str = "32", optimizer: torch.optim.Optimizer | None = None, desc: str = "fine-tune",
             on_epoch_end: Callable[[int, float], None] | None = None) -> FitResult:
    """Fine-tune ``model`` in place; it ends holding the weights of its best-validation epoch.

    The best state is kept as a CPU copy (one state dict, whatever the number of sources). Selection is
    over the trained epochs 1..E (SPEC 5); with ``include_initial`` the untrained weights (epoch 0) compete too.
    """
    model.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(param_groups(model, cfg.learning_rate, cfg.weight_decay,
                                                   cfg.head_lr_multiplier))
    steps_per_epoch = max(1, len(train_loader))
    scheduler = (warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
                 if cfg.schedule == "cosine" else None)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "16-mixed")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    result = FitResult(None, None)
    best_acc, best_state, best_epoch = -1.0, None, None
    if cfg.include_initial or cfg.epochs == 0:
        best_acc = accuracy(model, val_loader, device, precision)
        best_state, best_epoch = _cpu_state(model), 0
        result.history.append({"epoch": 0, "val_accuracy": best_acc, "train_loss": None})
        result.val_images += len(val_loader.dataset)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if cfg.freeze_batchnorm:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        total, n = 0.0, 0
        # in a log file (nohup, SLURM) a line every 30 s, not a carriage-return redraw many times a second
        for x, y in progress_bar(train_loader, desc=f"{desc} {epoch}/{cfg.epochs}", leave=False,
                                 enabled=not progress_disabled()):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, precision):
                loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.gradient_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.gradient_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            total = total + loss.detach() * len(y)  # stays on the device: no synchronisation per step
            n += len(y)
        result.train_images += n
        epoch_loss = float(total) / max(1, n)  # one synchronisation per epoch
        if not math.isfinite(epoch_loss):
            raise TrainingDiverged(f"Training diverged at epoch {epoch} of {desc} (loss {epoch_loss}); lower "
                                   "--learning_rate (or check the inputs for NaN).")
        val_acc = accuracy(model, val_loader, device, precision)
        result.val_images += len(val_loader.dataset)
        result.history.append({"epoch": epoch, "val_accuracy": val_acc, "train_loss": epoch_loss})
        if on_epoch_end:
            on_epoch_end(epoch, val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch, best_state = val_acc, epoch, _cpu_state(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    optimizer.zero_grad(set_to_none=True)
    del optimizer, best_state
    result.best_val_accuracy, result.best_epoch = best_acc, best_epoch
    return result


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def clone_module(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)

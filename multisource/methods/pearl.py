"""PEARL: parameter-efficient adapter composition (SPEC 5).

The first source's model is the frozen base. One LoRA adapter per source (PEFT, on the base's Conv2d and
Linear layers, not the classifier head) is trained on that source's own train split; then composition
weights w on the simplex (softmax of learnable logits, initialised uniform) are learned on the target's
train split with the adapters frozen. The model is base + sum_k w_k * adapter_k: one base, K small adapters.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice, check_range
from ..models.checkpoint import head_prefixes
from ..training.loop import FinetuneConfig, finetune
from .base import MethodResult, SourcePool, TargetData, register_method

log = logging.getLogger(__name__)


@dataclass
class PearlConfig:
    adapter_dim: int = 16
    lora_alpha: float | None = None  # default: adapter_dim (scaling 1)
    adapter_epochs: int = 3
    learning_rate: float = 5e-5  # adapters
    weight_decay: float = 0.01
    composition_epochs: int = 3
    composition_lr: float = 0.01
    adapter_data: str = "source"  # "target": train every adapter on the target (the released code's choice)

    def __post_init__(self) -> None:
        check_range(self, "adapter_dim", 1)
        check_range(self, "adapter_epochs", 0)
        check_range(self, "composition_epochs", 0)
        check_range(self, "learning_rate", 0)
        check_range(self, "composition_lr", 0)
        check_range(self, "weight_decay", 0)
        check_choice(self, "adapter_data", ("source", "target"))


def lora_target_modules(model: nn.Module, rank: int) -> tuple[list[str], list[str]]:
    """Conv2d and Linear layers outside the head that PEFT's LoRA can wrap; grouped convolutions whose
    group count does not divide the rank (depthwise) are skipped, as PEFT requires."""
    heads = tuple(h.rstrip(".") for h in head_prefixes(model))
    targets, skipped = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or name.startswith(heads) or name in heads:
            continue
        (targets if isinstance(mod, nn.Linear) or rank % mod.groups == 0 else skipped).append(name)
    return targets, skipped


class ComposedAdapters(nn.Module):
    """base + sum_k w_k * adapter_k, with w = softmax(logits) learnable (or fixed, for analysis)."""

    def __init__(self, peft_model: nn.Module, adapter_names: list[str]) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.adapter_names = list(adapter_names)
        self.weight_logits = nn.Parameter(torch.zeros(len(adapter_names)))
        self.fixed_weights: torch.Tensor | None = None
        self._hooks = []
        # Scaling lora_A's output (rank-r channels) equals scaling the adapter's output, since lora_B is linear
        # without bias, and autograd then keeps r-channel rather than full-width activations per adapter.
        for module in peft_model.modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, nn.ModuleDict):
                for k, name in enumerate(self.adapter_names):
                    if name in lora_a:
                        self._hooks.append(lora_a[name].register_forward_hook(self._scale_hook(k)))

    def _scale_hook(self, k: int):
        def hook(_module, _inputs, output):
            return output * self.weights()[k].to(output.dtype)
        return hook

    def weights(self) -> torch.Tensor:
        if self.fixed_weights is not None:
            return self.fixed_weights.to(self.weight_logits.device)
        return torch.softmax(self.weight_logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peft_model(x)


def _adapter_name(bin_name: str) -> str:
    return "src_" + re.sub(r"\W", "_", bin_name)


def _adapter_params(peft_model: nn.Module, name: str) -> int:
    return sum(p.numel() for n, p in peft_model.named_parameters() if f".{name}." in n and "lora_" in n)


def _train_adapter(peft_model, adapter: str, bin_name: str, cfg: PearlConfig, target: TargetData, meter):
    """Train one adapter (only its parameters require grad) on its source's data, selected on that bin's val."""
    peft_model.base_model.set_adapter(adapter)
    for n, p in peft_model.named_parameters():
        p.requires_grad = f".{adapter}." in n and "lora_" in n
    if cfg.adapter_data == "target" or target.bin_loader is None:
        train, val = target.train, target.val
    else:
        train, val = target.bin_loader(bin_name, "train"), target.bin_loader(bin_name, "val")
    ft = FinetuneConfig(epochs=cfg.adapter_epochs, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                        freeze_batchnorm=True)
    macs = target.forward_macs(peft_model, "pearl-one-adapter")
    with meter.phase("adapters"):
        fit = finetune(peft_model, train, val, ft, target.device, precision=target.precision,
                       desc=f"pearl adapter[{bin_name}]")
    meter.flops.add_training("adapters", macs, fit.train_images)
    meter.flops.add_forward("adapters_validation", macs, fit.val_images)
    return fit


@register_method("pearl", PearlConfig, "LoRA adapter per source on a frozen base, composed with learned weights.")
def run(cfg: PearlConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    from peft import LoraConfig, get_peft_model  # here, not at the top: PEFT takes seconds and only PEARL uses it

    names = pool.names
    with meter.phase("load"):
        base = pool.load(names[0], key="base")
    for p in base.parameters():
        p.requires_grad = False
    modules, skipped = lora_target_modules(base, cfg.adapter_dim)
    lora = LoraConfig(r=cfg.adapter_dim, lora_alpha=cfg.lora_alpha or cfg.adapter_dim, lora_dropout=0.0,
                      target_modules=modules)
    adapters = [_adapter_name(n) for n in names]
    peft_model = get_peft_model(base, lora, adapter_name=adapters[0])
    for a in adapters[1:]:
        peft_model.add_adapter(a, lora)
    peft_model.to(target.device)
    pool.adopt("base", "base+adapters")  # PEFT injected the adapters into the base in place: count their bytes
    history, adapter_val = [], {}
    for a, bin_name in zip(adapters, names):
        fit = _train_adapter(peft_model, a, bin_name, cfg, target, meter)
        adapter_val[bin_name] = fit.best_val_accuracy
        history += [{"step": f"adapter:{bin_name}", **h} for h in fit.history]
    peft_model.base_model.set_adapter(adapters)  # all adapters active together
    for p in peft_model.parameters():
        p.requires_grad = False
    model = ComposedAdapters(peft_model, adapters).to(target.device)
    comp = FinetuneConfig(epochs=cfg.composition_epochs, schedule="constant", gradient_clip=0.0,
                          freeze_batchnorm=True)
    optimizer = torch.optim.Adam([model.weight_logits], lr=cfg.composition_lr)
    macs = target.forward_macs(model, "pearl-composed")
    with meter.phase("compose"):
        fit = finetune(model, target.train, target.val, comp, target.device, precision=target.precision,
                       optimizer=optimizer, desc="pearl composition")
    meter.flops.add_training("compose", macs, fit.train_images)
    meter.flops.add_forward("compose_validation", macs, fit.val_images)
    history += [{"step": "composition", **h} for h in fit.history]
    weights = model.weights().detach().cpu().tolist()
    record = {"base": names[0], "adapter_data": cfg.adapter_data, "adapter_dim": cfg.adapter_dim,
              "composition_weights": dict(zip(names, weights)),
              "adapter_params": {n: _adapter_params(peft_model, a) for n, a in zip(names, adapters)},
              "adapted_modules": len(modules), "skipped_modules": skipped, "adapter_val_accuracy": adapter_val,
              "composition_best_epoch": fit.best_epoch, "best_val_accuracy": fit.best_val_accuracy}
    return MethodResult(model=model, record=record, history=history, standalone=False)

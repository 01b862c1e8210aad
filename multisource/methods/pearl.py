"""PEARL: parameter-efficient adapter composition over the source models (SPEC 5).

One source is the frozen base (``source_order`` decides which: the first in that order; nearest-first by
default). Every source k gets one LoRA adapter (PEFT, on the Conv2d and Linear layers, the classifier head
included) initialised as the best rank-r approximation of that source's weight difference from the base,
layer by layer (truncated SVD of W_k - W_base; a k x k Conv2d kernel is factorised as PEFT's conv LoRA is: a
k x k convolution to r channels, then a 1 x 1 convolution), so the composition blends the sources' own
knowledge. The sources are loaded one at a time: base + one source + K adapters are resident. Optionally each
adapter is then refined (``adapter_data``: ``source`` trains it on that source's own train split, the paper's
recipe; ``target`` on the target's). Finally composition weights w on the simplex (softmax of learnable
logits, initialised uniform) are learned on the target's train split with the adapters frozen:
base + sum_k w_k * adapter_k. What the adapters do not carry (biases, BatchNorm parameters and running
statistics, the classifier head unless ``adapt_head``, grouped convolutions) is by default
(``outside_adapters="composed"``) the composition-weighted mean of the sources' own tensors, so that at full rank
with one-hot weights the composed model is that source; ``"base"`` keeps the base's, as PEFT would. The record
says how much of each source's difference lies outside the adapters (parameters and buffers) and what it is.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ConfigError, check_choice, check_range
from ..models.checkpoint import head_prefixes
from ..training.loop import FinetuneConfig, finetune
from .base import SOURCE_ORDERS, MethodResult, SourcePool, TargetData, register_method

log = logging.getLogger(__name__)


@dataclass
class PearlConfig:
    adapter_dim: int = 16
    lora_alpha: float | None = None  # default: adapter_dim (scaling 1)
    adapter_init: str = "svd"  # "svd": rank-r approximation of the source's delta from the base; "zero": none
    adapter_data: str = "none"  # refine each adapter on: nothing, its source's train split, or the target's
    adapter_epochs: int = 3  # when adapter_data is not "none"
    learning_rate: float = 5e-5  # adapters
    weight_decay: float = 0.01
    composition_epochs: int = 3
    composition_lr: float = 0.01
    source_order: str = "nearest-first"  # the first source in this order is the base
    adapt_head: bool = False  # also put adapters on the classifier head (beyond SPEC 5: the head stays the base's)
    # What is outside the adapters (biases, BatchNorm parameters and running statistics, the head unless adapted,
    # grouped convolutions): "base" keeps the base's; "composed" makes each the composition-weighted mean of the
    # sources' tensors, so that at full rank with one-hot weights the composed model is that source.
    # Results recorded before this field existed kept the base's (a sweep must not take them for "composed").
    outside_adapters: str = field(default="composed", metadata={"absent_means": "base"})

    def __post_init__(self) -> None:
        check_range(self, "adapter_dim", 1)
        check_range(self, "adapter_epochs", 0)
        check_range(self, "composition_epochs", 0)
        check_range(self, "learning_rate", 0, low_open=True)
        check_range(self, "composition_lr", 0, low_open=True)
        check_range(self, "weight_decay", 0)
        if self.lora_alpha is not None:
            check_range(self, "lora_alpha", 0, low_open=True)
        check_choice(self, "adapter_init", ("svd", "zero"))
        check_choice(self, "adapter_data", ("none", "source", "target"))
        check_choice(self, "source_order", SOURCE_ORDERS)
        check_choice(self, "outside_adapters", ("base", "composed"))
        if self.adapter_init == "zero" and (self.adapter_data == "none" or self.adapter_epochs == 0):
            raise ConfigError("PearlConfig.adapter_init='zero' without adapter training (adapter_data='none' or "
                              "adapter_epochs=0) composes nothing but the base; use adapter_init='svd' or set "
                              "adapter_data to source or target.")

    @property
    def scaling(self) -> float:
        return (self.lora_alpha or self.adapter_dim) / self.adapter_dim


def lora_target_modules(model: nn.Module, include_head: bool = False) -> tuple[list[str], list[str]]:
    """Linear and ungrouped Conv2d layers, the classifier head only with ``include_head``: the ones a LoRA delta
    can be initialised for. Grouped and depthwise convolutions are skipped (listed), since PEFT factorises them
    differently."""
    heads = () if include_head else head_prefixes(model)
    targets, skipped = [], []
    for name, mod in model.named_modules():
        if heads and (name + ".").startswith(heads):  # the head module itself or anything inside it
            continue
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1):
            targets.append(name)
        elif isinstance(mod, nn.Conv2d):
            skipped.append(name)
    return targets, skipped


def low_rank_factors(delta: torch.Tensor, rank: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, residual) with B @ A * scaling the best rank-``rank`` approximation of ``delta`` (out x in, or a
    conv kernel out x in x kh x kw flattened to out x in*kh*kw); A is rank x in..., B out x rank (zero-padded when
    the delta's rank is smaller). ``residual`` is the squared Frobenius norm of what the rank cannot hold."""
    matrix = delta.reshape(delta.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    a = torch.zeros(rank, matrix.shape[1], dtype=torch.float64)
    b = torch.zeros(matrix.shape[0], rank, dtype=torch.float64)
    a[:k] = root[:, None] * vh[:k]
    b[:, :k] = u[:, :k] * root[None, :] / scaling
    residual = float((s[k:] ** 2).sum())
    return a.reshape(rank, *delta.shape[1:]).to(delta.dtype), b.to(delta.dtype), residual


def svd_initialise(peft_model: nn.Module, adapter: str, source: nn.Module, rank: int, scaling: float) -> dict:
    """Set ``adapter`` in every LoRA layer of ``peft_model`` to the truncated SVD of source - base.

    Returns the approximation record: relative Frobenius error over the adapted layers, and the share of the
    source's whole difference (parameters and floating-point buffers such as BatchNorm running statistics) that
    lies outside them: kept from the base, or composed (``outside_adapters``)."""
    src = dict(source.named_parameters())
    delta_sq, residual_sq, covered = 0.0, 0.0, set()
    with torch.no_grad():
        for name, module in peft_model.base_model.model.named_modules():
            if not (hasattr(module, "lora_A") and adapter in module.lora_A):
                continue
            base_weight = module.get_base_layer().weight
            delta = (src[f"{name}.weight"].to(base_weight) - base_weight).cpu()
            a, b, residual = low_rank_factors(delta, rank, scaling)
            module.lora_A[adapter].weight.copy_(a.reshape(module.lora_A[adapter].weight.shape))
            module.lora_B[adapter].weight.copy_(b.reshape(module.lora_B[adapter].weight.shape))
            delta_sq += float(delta.double().pow(2).sum())
            residual_sq += residual
            covered.add(f"{name}.weight")
        src.update(dict(source.named_buffers()))
        outside_sq = sum(float((src[n].to(t) - t).double().pow(2).sum()) for n, t in outside_tensors(peft_model).items()
                         if n not in covered and n in src)
    total = delta_sq + outside_sq
    return {"relative_error": math.sqrt(residual_sq / delta_sq) if delta_sq else 0.0,
            "delta_norm": math.sqrt(delta_sq), "outside_adapters_share": outside_sq / total if total else 0.0}


def outside_tensors(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's floating-point parameters and buffers by their names in the plain model (``.base_layer``
    dropped), LoRA tensors left out; the adapted layers' weights are among them (callers skip those)."""
    inner = peft_model.base_model.model
    named = list(inner.named_parameters()) + list(inner.named_buffers())
    return {n.replace(".base_layer", ""): t for n, t in named if "lora_" not in n and t.is_floating_point()}


def adapted_weights(peft_model: nn.Module) -> set[str]:
    """The plain-model names of the weights the LoRA adapters carry."""
    return {f"{n}.weight" for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "lora_A")}


class ComposedAdapters(nn.Module):
    """base + sum_k w_k * adapter_k, with w = softmax(logits) learnable (or fixed, for analysis).

    With ``rest`` ({plain name: the K sources' tensors stacked}), every tensor outside the adapters is
    sum_k w_k * tensor_k in each forward (differentiable in w), instead of the base's."""

    def __init__(self, peft_model: nn.Module, adapter_names: list[str],
                 rest: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.adapter_names = list(adapter_names)
        self.weight_logits = nn.Parameter(torch.zeros(len(adapter_names)))
        self.fixed_weights: torch.Tensor | None = None
        # plain name -> its name in peft_model's state (functional_call's key); the stacks are buffers (moved
        # with the module, saved with it) named rest_<i>, since buffer names cannot hold dots
        self._rest_keys: list[tuple[str, str, bool]] = []  # (stack's buffer, key, is a buffer such as BN stats)
        if rest:
            where = {n.replace(".base_layer", ""): f"base_model.model.{n}" for n, _ in
                     list(peft_model.base_model.model.named_parameters())
                     + list(peft_model.base_model.model.named_buffers())}
            buffers = {n for n, _ in peft_model.base_model.model.named_buffers()}
            for i, (name, stacked) in enumerate(rest.items()):
                self.register_buffer(f"rest_{i}", stacked)
                self._rest_keys.append((f"rest_{i}", where[name], where[name][len("base_model.model."):] in buffers))
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
        if not self._rest_keys:
            return self.peft_model(x)
        w = self.weights()
        values = {}
        with torch.autocast(device_type=w.device.type, enabled=False):  # the weighted mean in full precision
            for buffer, key, statistic in self._rest_keys:
                stacked = getattr(self, buffer)
                # Running statistics follow the weights but are not learned through (batch norm takes no
                # gradient for them); parameters such as biases and the head carry the gradient to w.
                weights = (w.detach() if statistic else w).to(stacked.dtype).view(-1, *[1] * (stacked.dim() - 1))
                # element-wise, once per batch: not a per-image cost (and not counted as one, by the convention)
                values[key] = (weights * stacked).sum(0)
        return torch.func.functional_call(self.peft_model, values, (x,), strict=False)


def composed_weight(peft_model: nn.Module, layer: str, weights: dict[str, float]) -> torch.Tensor:
    """The effective weight of ``layer`` under composition weights {adapter: w}: base + sum_k w_k * delta_k."""
    module = peft_model.base_model.model.get_submodule(layer)
    out = module.get_base_layer().weight.detach().clone()
    for adapter, w in weights.items():
        out += w * module.get_delta_weight(adapter).detach()
    return out


def outside_kinds(peft_model: nn.Module, rest_names: list[str]) -> list[str]:
    """What lies outside the adapters, in words and in the order met: the classifier head, BatchNorm running
    statistics and affine parameters, other layers' biases, grouped convolutions' weights."""
    inner = peft_model.base_model.model
    heads = head_prefixes(inner)
    kinds: dict[str, None] = {}
    for name in rest_names:
        module_name, _, leaf = name.rpartition(".")
        module = inner.get_submodule(module_name)
        if heads and (module_name + ".").startswith(heads):
            adapted = hasattr(module, "lora_A")  # adapt_head: the head's weight is carried, its bias is not
            kinds["the classifier head's bias" if adapted and leaf == "bias" else "the classifier head"] = None
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            kinds["BatchNorm running statistics" if leaf.startswith("running_") else "BatchNorm affine parameters"] = None
        elif leaf == "bias":
            kinds["biases"] = None
        else:
            kinds[f"{type(module).__name__} {leaf}s"] = None
    return list(kinds)


def _adapter_name(bin_name: str) -> str:
    return "src_" + re.sub(r"\W", "_", bin_name)


def _adapter_params(peft_model: nn.Module, name: str) -> int:
    return sum(p.numel() for n, p in peft_model.named_parameters() if f".{name}." in n and "lora_" in n)


def _train_adapter(peft_model, adapter: str, bin_name: str, cfg: PearlConfig, target: TargetData, meter,
                   composed: "ComposedAdapters | None" = None):
    """Refine one adapter (only its parameters require grad) on its source's or the target's data, selected on
    the same bin's val split. With the composed rest (``composed``), adapter k is trained inside the composed
    model with all weight on k, so it meets source k's biases, BatchNorm and head, as it will when composed."""
    if composed is None:
        peft_model.base_model.set_adapter(adapter)
        trainee, key = peft_model, "pearl-one-adapter"
    else:  # only adapter k active (its weight 1): the cost of one adapter, with source k's rest
        peft_model.base_model.set_adapter(adapter)
        k = composed.adapter_names.index(adapter)
        composed.fixed_weights = torch.nn.functional.one_hot(torch.tensor(k), len(composed.adapter_names)).float()
        trainee, key = composed, "pearl-one-adapter-composed-rest"
    for n, p in trainee.named_parameters():
        p.requires_grad = f".{adapter}." in n and "lora_" in n
    if cfg.adapter_data == "target":
        train, val = target.train, target.val
    else:
        train, val = target.bin_loader(bin_name, "train"), target.bin_loader(bin_name, "val")
    ft = FinetuneConfig(epochs=cfg.adapter_epochs, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                        freeze_batchnorm=True,  # an SVD start competes with its refinement (a zero one cannot)
                        include_initial=cfg.adapter_init == "svd")
    macs = target.forward_macs(trainee, key)
    with meter.phase("adapters"):
        fit = finetune(trainee, train, val, ft, target.device, precision=target.precision,
                       desc=f"pearl adapter[{bin_name}]")
    if composed is not None:
        composed.fixed_weights = None
    meter.flops.add_training("adapters", macs, fit.train_images)
    meter.flops.add_forward("adapters_validation", macs, fit.val_images)
    if cfg.adapter_data == "target":
        meter.budget.add(cfg.adapter_epochs, fit.train_images)
    return fit


@register_method("pearl", PearlConfig, "LoRA adapters initialised from each source's delta to a frozen base "
                 "source, composed with learned weights.", source_order=lambda c: c.source_order,
                 needs_shared_start=True)
def run(cfg: PearlConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    from peft import LoraConfig, get_peft_model  # here, not at the top: PEFT takes seconds and only PEARL uses it

    names = pool.names  # the first is the base (pool order follows cfg.source_order)
    with meter.phase("load"):
        base = pool.load(names[0], key="base")
    for p in base.parameters():
        p.requires_grad = False
    modules, skipped = lora_target_modules(base, include_head=cfg.adapt_head)
    lora = LoraConfig(r=cfg.adapter_dim, lora_alpha=cfg.lora_alpha or cfg.adapter_dim, lora_dropout=0.0,
                      target_modules=modules)
    adapters = [_adapter_name(n) for n in names]
    peft_model = get_peft_model(base, lora, adapter_name=adapters[0])
    for a in adapters[1:]:
        peft_model.add_adapter(a, lora)
    peft_model.to(target.device)
    pool.adopt("base", "base+adapters")  # PEFT injected the adapters into the base in place: count their bytes
    approximation: dict[str, dict] = {names[0]: {"relative_error": 0.0, "delta_norm": 0.0,
                                                 "outside_adapters_share": 0.0}}  # the base's delta is zero
    carried = adapted_weights(peft_model)
    rest_names = [n for n in outside_tensors(peft_model) if n not in carried]
    rest: dict[str, list[torch.Tensor]] = {}
    if cfg.outside_adapters == "composed":  # the base's own tensors first, in the order of the adapters
        rest = {n: [t.detach().clone()] for n, t in outside_tensors(peft_model).items() if n in rest_names}
    if cfg.adapter_init == "svd" or rest:  # the base's own adapter keeps PEFT's init (B = 0): its delta is zero
        for a, bin_name in zip(adapters[1:], names[1:]):
            with meter.phase("adapter_init"), pool.borrow(bin_name) as source:
                if cfg.adapter_init == "svd":
                    approximation[bin_name] = svd_initialise(peft_model, a, source, cfg.adapter_dim, cfg.scaling)
                if rest:  # small tensors (biases, BatchNorm, the head), read while the source is loaded anyway
                    theirs = {**dict(source.named_parameters()), **dict(source.named_buffers())}
                    for n in rest_names:
                        rest[n].append(theirs[n].detach().to(rest[n][0]).clone())
                del source  # one source resident beside the base at a time
    stacked = {n: torch.stack(ts) for n, ts in rest.items()}
    model = ComposedAdapters(peft_model, adapters, stacked).to(target.device)
    history, adapter_val = [], {}
    if cfg.adapter_data != "none" and cfg.adapter_epochs:
        for a, bin_name in zip(adapters, names):
            fit = _train_adapter(peft_model, a, bin_name, cfg, target, meter, model if stacked else None)
            adapter_val[bin_name] = fit.best_val_accuracy
            history += [{"step": f"adapter:{bin_name}", **h} for h in fit.history]
    peft_model.base_model.set_adapter(adapters)  # all adapters active together
    for p in peft_model.parameters():
        p.requires_grad = False
    model.weight_logits.requires_grad = True
    comp = FinetuneConfig(epochs=cfg.composition_epochs, schedule="constant", gradient_clip=0.0,
                          freeze_batchnorm=True)
    optimizer = torch.optim.Adam([model.weight_logits], lr=cfg.composition_lr)
    macs = target.forward_macs(model, "pearl-composed")
    with meter.phase("compose"):
        fit = finetune(model, target.train, target.val, comp, target.device, precision=target.precision,
                       optimizer=optimizer, desc="pearl composition")
    meter.flops.add_training("compose", macs, fit.train_images)
    meter.flops.add_forward("compose_validation", macs, fit.val_images)
    meter.budget.add(cfg.composition_epochs, fit.train_images)
    history += [{"step": "composition", **h} for h in fit.history]
    weights = model.weights().detach().cpu().tolist()
    record = {"base": names[0], "source_order": cfg.source_order, "adapter_init": cfg.adapter_init,
              "adapter_data": cfg.adapter_data, "adapter_dim": cfg.adapter_dim,
              "composition_weights": dict(zip(names, weights)), "approximation": approximation,
              "adapter_params": {n: _adapter_params(peft_model, a) for n, a in zip(names, adapters)},
              "adapted_modules": len(modules), "skipped_modules": skipped, "adapter_val_accuracy": adapter_val,
              "composition_best_epoch": fit.best_epoch, "best_val_accuracy": fit.best_val_accuracy,
              "outside_adapters": cfg.outside_adapters,
              "outside_adapter_tensors": len(rest_names),
              "outside_adapter_bytes_per_source": sum(t.numel() * t.element_size() for n, t in
                                                      outside_tensors(peft_model).items() if n in rest_names),
              # the K sources' stacked tensors the composed rest holds beside the base (0 with the base's)
              "outside_adapter_bytes_held": sum(t.numel() * t.element_size() for t in stacked.values()),
              "outside_adapter_kinds": outside_kinds(peft_model, rest_names),
              "kept_from_base": [] if cfg.outside_adapters == "composed" else outside_kinds(peft_model, rest_names)}
    return MethodResult(model=model, record=record, history=history, standalone=False)

"""What every method shares: the lazily loading source pool, the target's data, results, the registry."""

from __future__ import annotations

import gc
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ConfigError
from ..measure.flops import forward_macs
from ..models.factory import load_checkpoint
from ..registry import Registry

log = logging.getLogger(__name__)

SOURCE_ORDERS = ("chronological", "nearest-first", "farthest-first", "random")


@dataclass
class TargetData:
    """The target bin: adapt on ``train``, select on ``val``, report on ``test`` (eval transforms for both)."""

    bin: str
    classes: list[str]
    train: DataLoader
    val: DataLoader
    test: DataLoader
    device: torch.device
    precision: str = "32"
    image_size: int = 32
    seed: int = 0
    # Loader of another bin's split, (bin, split) -> loader: PEARL trains each adapter on its source's data.
    bin_loader: Callable[[str, str], DataLoader] | None = None
    _macs: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def forward_macs(self, model: nn.Module, key: str = "model") -> int:
        """MACs of one image's forward pass through ``model``, counted once per ``key``."""
        if key not in self._macs:
            self._macs[key] = forward_macs(model, self.image_size, device=self.device)
        return self._macs[key]


class SourcePool:
    """Source models by bin, loaded from their checkpoints only when asked for (one at a time if the method
    allows), registered as resident while held, and freed on release."""

    def __init__(self, checkpoints: dict[str, Path], *, model_name: str, classes: Sequence[str],
                 image_size: int | None, device: torch.device, residency: Any | None = None) -> None:
        self.checkpoints = dict(checkpoints)
        self.model_name, self.classes, self.image_size = model_name, list(classes), image_size
        self.device = device
        self.residency = residency
        self._held: dict[str, nn.Module] = {}
        self.loads = 0

    @property
    def names(self) -> list[str]:
        return list(self.checkpoints)

    def __len__(self) -> int:
        return len(self.checkpoints)

    def load(self, name: str, key: str | None = None) -> nn.Module:
        """A fresh copy of source ``name``'s model on the device, registered under ``key`` (default: the name)."""
        key = key or f"source:{name}"
        model, _ = load_checkpoint(self.checkpoints[name], expected_model=self.model_name,
                                   expected_classes=self.classes, image_size=self.image_size, device=self.device)
        self.loads += 1
        if self.residency is not None:
            self.residency.hold(key, model)
        self._held[key] = model
        return model

    def adopt(self, key: str, new_key: str) -> None:
        """Re-register a held model under a new key, measuring its bytes again (e.g. after adapters were added)."""
        model = self._held.pop(key)
        self._held[new_key] = model
        if self.residency is not None:
            self.residency.release(key)
            self.residency.hold(new_key, model)

    def release(self, key: str) -> None:
        """Forget a held model and its gradients; the caller must drop its own references too."""
        model = self._held.pop(key, None)
        if model is None:
            return
        for p in model.parameters():
            p.grad = None
        if self.residency is not None:
            self.residency.release(key)
        del model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def release_all(self) -> None:
        for key in list(self._held):
            self.release(key)

    def borrow(self, name: str) -> "_Borrow":
        return _Borrow(self, name)


class _Borrow:
    """``with pool.borrow(name) as model:`` loads a source and releases it on exit."""

    def __init__(self, pool: SourcePool, name: str) -> None:
        self.pool, self.key, self.name = pool, f"source:{name}", name

    def __enter__(self) -> nn.Module:
        return self.pool.load(self.name, self.key)

    def __exit__(self, *exc) -> None:
        self.pool.release(self.key)


@dataclass
class MethodResult:
    """What a method hands back: one ``nn.Module`` to evaluate (an ensemble is a wrapper module) and a record."""

    model: nn.Module
    record: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # val accuracy per epoch, for training curves
    produces_model: bool = True  # False when the result is only a wrapper over unchanged sources
    standalone: bool = True  # the model is one plain architecture (saved as a loadable checkpoint)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. What is specific to it lives here, so generic code never names its fields:
    ``source_order(config)`` says how it orders its sources (None: chronological); ``reference`` marks the
    method every comparison is made against."""

    name: str
    config_cls: type
    run: Callable[..., MethodResult]
    description: str = ""
    source_order: Callable[[Any], str] | None = None
    reference: bool = False

    def order_of(self, config: Any) -> str:
        return self.source_order(config) if self.source_order else "chronological"


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, config_cls: type, description: str = "", *,
                    source_order: Callable[[Any], str] | None = None, reference: bool = False) -> Callable:
    def deco(fn: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
        METHODS.register(name, MethodSpec(name, config_cls, fn, description, source_order, reference))
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.list()


def reference_method() -> str:
    """The method comparisons are made against (the one registered with ``reference=True``)."""
    refs = [n for n in METHODS.list() if METHODS.get(n).reference]
    if len(refs) != 1:
        raise RuntimeError(f"Exactly one method must be registered with reference=True, found {refs}.")
    return refs[0]


def order_sources(sources: Sequence[str], target: str, all_bins: Sequence[str], order: str = "chronological",
                  seed: int = 0) -> list[str]:
    """Sources in the requested order; distances are positions in the dataset's chronological bin list."""
    if order not in SOURCE_ORDERS:
        raise ConfigError(f"source_order={order!r} is not valid; choose one of {', '.join(SOURCE_ORDERS)}.")
    pos = {b: i for i, b in enumerate(all_bins)}
    chrono = sorted(sources, key=lambda b: pos[b])
    if order == "chronological":
        return chrono
    if order == "random":
        out = list(chrono)
        random.Random(seed).shuffle(out)
        return out
    dist = {b: abs(pos[b] - pos[target]) for b in chrono}
    if order == "nearest-first":
        return sorted(chrono, key=lambda b: (dist[b], pos[b]))
    return sorted(chrono, key=lambda b: (-dist[b], pos[b]))


def iterate_batches(loader: DataLoader, n: int) -> Iterator:
    """The first ``n`` batches of ``loader`` (cycling if it is shorter)."""
    count = 0
    while count < n:
        for batch in loader:
            yield batch
            count += 1
            if count >= n:
                return

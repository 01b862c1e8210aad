"""One measurement object per experiment: time, memory and FLOPs under the same phase names.

Methods open phases (``load``, ``merge``, ``finetune``, ``eval``, ...) and declare what they do; the runner
puts ``meter.report()`` in the result JSON. Phases do not nest: a nested phase raises, because the RSS peak
reset is process-wide and nested time would be counted twice. Repeating a phase name is fine (times add up,
memory keeps the maximum). FLOPs are added explicitly to ``meter.flops`` (they depend on image counts the
method knows), under phase names of the method's choosing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .flops import FlopsLedger, forward_macs
from .memory import MemoryTracker, ModelResidency
from .timing import PhaseTimer


@dataclass
class TargetBudget:
    """How much target training a method did: epochs over the target's train split and images trained on
    (the budget column of a comparison; alignment or statistics passes without an optimiser step are not counted)."""

    epochs: int = 0
    train_images: int = 0

    def add(self, epochs: int, train_images: int) -> None:
        self.epochs += int(epochs)
        self.train_images += int(train_images)

    def to_dict(self) -> dict[str, int]:
        return {"target_epochs": self.epochs, "target_train_images": self.train_images}


class Meter:
    """Bundles :class:`PhaseTimer`, :class:`MemoryTracker` and :class:`FlopsLedger` for one experiment."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.timer = PhaseTimer(self.device)
        self.memory = MemoryTracker(self.device)
        self.flops = FlopsLedger()
        self.budget = TargetBudget()
        self._open: str | None = None

    @property
    def models(self) -> ModelResidency:
        return self.memory.models

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time and memory-track the block as phase ``name``."""
        if self._open is not None:
            raise RuntimeError(f"Phase '{name}' started inside phase '{self._open}'; phases do not nest. "
                               f"Close '{self._open}' first, or give the inner work its own top-level phase.")
        self._open = name
        try:
            with self.memory.phase(name), self.timer.phase(name):
                yield
        finally:
            self._open = None

    def set_forward_macs(self, macs_per_image: int) -> None:
        """The final model's MACs per image (the inference cost reported beside the totals)."""
        self.flops.forward_per_image = int(macs_per_image)

    def count_forward_macs(self, model: nn.Module, image_size: int) -> int:
        """Count ``model``'s MACs per image on this meter's device and record them as the forward cost."""
        macs = forward_macs(model, image_size, device=self.device)
        self.set_forward_macs(macs)
        return macs

    def report(self) -> dict[str, Any]:
        return {"time": self.timer.to_dict(), "memory": self.memory.to_dict(), "flops": self.flops.to_dict(),
                "budget": self.budget.to_dict()}

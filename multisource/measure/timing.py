"""Wall time per phase and in total (SPEC 6), with the device synchronised before every clock read.

CUDA kernels run asynchronously, so without a synchronise a phase would be charged for the kernels queued by
the previous one. The total is the wall time from ``start()`` (or construction) to ``stop()`` (or the
``to_dict()`` call), so work between phases (data loading, bookkeeping) is included; the sum over phases is
reported beside it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch


class PhaseTimer:
    """``with timer.phase(name):`` adds the phase's wall seconds to ``name``; phases do not nest."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._by_phase: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._open: str | None = None
        self._stopped: float | None = None
        self._started = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        """Restart the total clock (phases already recorded are kept)."""
        self._started, self._stopped = self._now(), None

    def stop(self) -> float:
        """Freeze the total; returns it in seconds."""
        if self._stopped is None:
            self._stopped = self._now()
        return self._stopped - self._started

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._open is not None:
            raise RuntimeError(f"Timer phase '{name}' started inside phase '{self._open}'; phases do not nest "
                               "(nested time would be counted twice). Close the outer phase first.")
        self._open = name
        t0 = self._now()
        try:
            yield
        finally:
            self._by_phase[name] = self._by_phase.get(name, 0.0) + (self._now() - t0)
            self._counts[name] = self._counts.get(name, 0) + 1
            self._open = None

    def seconds(self, name: str) -> float:
        return self._by_phase.get(name, 0.0)

    def to_dict(self) -> dict[str, Any]:
        end = self._stopped if self._stopped is not None else self._now()
        return {"total_s": end - self._started,
                "total_method": "wall clock from start (construction or start()) to stop() or this report",
                "phases_sum_s": sum(self._by_phase.values()), "by_phase": dict(self._by_phase),
                "phase_counts": dict(self._counts), "device_synchronized": self.device.type == "cuda"}

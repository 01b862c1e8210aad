"""Memory per phase (SPEC 6): peak process RSS, CUDA allocator peak, NVML device usage, resident models.

The methods differ mostly in how many full models they hold at once (an ensemble keeps K, a fusion one),
so besides what the process and device report we keep an explicit count of resident models and their bytes
(:class:`ModelResidency`), which is exact and comparable across CPU and CUDA runs.

The RSS peak of a phase needs a resettable high-water mark: on Linux ``/proc/self/clear_refs`` (value 5)
resets ``VmHWM`` to the current RSS, so ``VmHWM`` at the end of the phase is the peak *during* it. Where that
is unavailable a thread samples the RSS with psutil every 5 ms (short spikes can be missed). The reset is
process-wide, so phases of trackers in one process must not overlap.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

RSS_HWM = "clear_refs+VmHWM"
RSS_SAMPLED = "psutil sampling every 5 ms"
_SAMPLE_S = 0.005


def module_bytes(model: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """Bytes of parameters and buffers (shared tensors counted once); or of a mapping of tensors, such as a
    merge's model-sized accumulator."""
    seen: set[int] = set()
    total = 0
    tensors = list(model.values()) if isinstance(model, Mapping) else list(model.parameters()) + list(model.buffers())
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's tensors (e.g. AdamW's two moments); 0 before its first step."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v))


class ModelResidency:
    """How many full models (and how many bytes of them) are held at once; the caller declares hold/release."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self.max_resident = 0
        self.max_bytes = 0
        self.max_optimizer_bytes = 0
        self._window_resident = 0
        self._window_bytes = 0

    def hold(self, key: str, model: nn.Module | Mapping[str, torch.Tensor]) -> int:
        """Register ``model`` (or a model-sized mapping of tensors) as resident under ``key``; returns its bytes.
        Keeps no reference to it."""
        if key in self._held:
            raise ValueError(f"Model '{key}' is already held; release('{key}') it first or use another key.")
        self._held[key] = module_bytes(model)
        self._update_max()
        return self._held[key]

    def release(self, key: str) -> None:
        if key not in self._held:
            held = ", ".join(self._held) or "none"
            raise KeyError(f"Cannot release model '{key}': it is not held (held: {held}).")
        del self._held[key]

    def add_optimizer_bytes(self, optimizer: torch.optim.Optimizer | int) -> int:
        """Note an optimizer's current state size (call after some steps); the largest seen is kept."""
        nbytes = optimizer if isinstance(optimizer, int) else optimizer_state_bytes(optimizer)
        self.max_optimizer_bytes = max(self.max_optimizer_bytes, int(nbytes))
        return int(nbytes)

    @property
    def current(self) -> int:
        return len(self._held)

    @property
    def current_bytes(self) -> int:
        return sum(self._held.values())

    @property
    def held(self) -> list[str]:
        return list(self._held)

    def _update_max(self) -> None:
        self.max_resident = max(self.max_resident, self.current)
        self.max_bytes = max(self.max_bytes, self.current_bytes)
        self._window_resident = max(self._window_resident, self.current)
        self._window_bytes = max(self._window_bytes, self.current_bytes)

    def start_window(self) -> None:
        """Start a per-phase maximum (what is held now counts)."""
        self._window_resident, self._window_bytes = self.current, self.current_bytes

    def window(self) -> dict[str, int]:
        return {"max_models_resident": self._window_resident, "max_model_bytes": self._window_bytes,
                "models_resident": self.current, "model_bytes": self.current_bytes}


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _hwm_available() -> bool:
    try:
        _reset_hwm()
        _proc_status_kb("VmHWM")
        _proc_status_kb("VmRSS")
        return True
    except OSError:
        return False


def _rss_now() -> int:
    try:
        return _proc_status_kb("VmRSS")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


class _RssSampler:
    """Background max of the RSS, for systems without a resettable high-water mark."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = int(self._proc.memory_info().rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self.peak = max(self.peak, int(self._proc.memory_info().rss))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, int(self._proc.memory_info().rss))


class _Nvml:
    """Device-wide used memory via nvidia-ml-py; ``None`` (with the reason kept) when NVML is unavailable."""

    def __init__(self, device: torch.device) -> None:
        self.handle: Any = None
        self.error: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._pynvml = pynvml
            self.handle = self._handle(pynvml, device)
        except Exception as exc:  # NVML missing, no driver, or the device not found: report, never fail
            self.error = f"NVML unavailable ({type(exc).__name__}: {exc})"
            log.info(self.error)

    @staticmethod
    def _handle(pynvml: Any, device: torch.device) -> Any:
        """By UUID (robust to CUDA_VISIBLE_DEVICES), then PCI bus id, then index."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}")
            except pynvml.NVMLError:
                pass
        if hasattr(props, "pci_bus_id"):
            bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
            try:
                return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
            except pynvml.NVMLError:
                pass
        return pynvml.nvmlDeviceGetHandleByIndex(index)

    def used_bytes(self) -> int | None:
        if self.handle is None:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        except Exception as exc:
            self.error = f"NVML read failed ({type(exc).__name__}: {exc})"
            return None


class MemoryTracker:
    """``with tracker.phase(name):`` records the phase's memory peaks; repeated phases keep the maxima."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.models = ModelResidency()
        self.rss_method = RSS_HWM if _hwm_available() else RSS_SAMPLED
        self._nvml = _Nvml(self.device) if self.cuda else None
        self._phases: dict[str, dict[str, Any]] = {}
        self._open: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._open is not None:
            raise RuntimeError(f"Memory phase '{name}' started inside phase '{self._open}'; phases do not nest "
                               "(the RSS peak reset is process-wide). Close the outer phase first.")
        self._open = name
        try:
            start = self._begin()
            try:
                yield
            finally:
                self._merge(name, self._end(start))
        finally:
            self._open = None

    def _begin(self) -> dict[str, Any]:
        self.models.start_window()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start: dict[str, Any] = {"rss_start_bytes": _rss_now(), "sampler": None}
        if self.rss_method == RSS_HWM:
            _reset_hwm()
        else:
            start["sampler"] = _RssSampler()
        return start

    def _end(self, start: dict[str, Any]) -> dict[str, Any]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        if start["sampler"] is not None:
            peak = start["sampler"].stop()
        else:
            peak = _proc_status_kb("VmHWM")
        rec: dict[str, Any] = {"peak_rss_bytes": peak, "rss_start_bytes": start["rss_start_bytes"],
                               "rss_end_bytes": _rss_now()}
        rec["peak_rss_delta_bytes"] = max(0, peak - rec["rss_start_bytes"])
        if self.cuda:
            rec["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            rec["cuda_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(self.device))
            rec["nvml_used_bytes"] = self._nvml.used_bytes() if self._nvml else None
        rec.update(self.models.window())
        rec["rss_method"] = self.rss_method
        return rec

    def _merge(self, name: str, rec: dict[str, Any]) -> None:
        """Repeats of a phase keep the largest value of every number (worst case), nothing is summed."""
        old = self._phases.get(name)
        if old is None:
            self._phases[name] = {**rec, "occurrences": 1}
            return
        for key, value in rec.items():
            if isinstance(value, int) and isinstance(old.get(key), int):
                old[key] = max(old[key], value)
            elif old.get(key) is None:
                old[key] = value
        old["occurrences"] += 1

    def _max_over_phases(self, key: str) -> int | None:
        values = [p[key] for p in self._phases.values() if p.get(key) is not None]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        peak_rss = self._max_over_phases("peak_rss_bytes")
        peak_cuda = self._max_over_phases("cuda_peak_allocated_bytes") if self.cuda else None
        notes = (f"Per phase: peak RSS of the whole process ({self.rss_method}); models_resident/model_bytes are "
                 "declared resident models (parameters + buffers) at the end of the phase, max_* during it. "
                 "Repeated phases keep the maximum of each number.")
        if self.cuda:
            notes += (" CUDA: torch.cuda.max_memory_allocated after a reset per phase; nvml_used_bytes is "
                      "device-wide (all processes) at the end of the phase.")
            if self._nvml is not None and self._nvml.error:
                notes += f" {self._nvml.error}."
        return {"device": str(self.device), "peak_bytes": peak_cuda if self.cuda else peak_rss,
                "peak_rss_bytes": peak_rss, "peak_cuda_bytes": peak_cuda,
                "peak_nvml_used_bytes": self._max_over_phases("nvml_used_bytes") if self.cuda else None,
                "resident_model_bytes": self.models.max_bytes, "max_models_resident": self.models.max_resident,
                "optimizer_state_bytes": self.models.max_optimizer_bytes, "rss_method": self.rss_method,
                "by_phase": {k: dict(v) for k, v in self._phases.items()}, "notes": notes}

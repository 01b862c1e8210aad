"""Checkpoints loadable without Lightning: weights + class list, model name, config and metrics.

Loading is strict: the wrong architecture or class count is a clear error, never a silently random head.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..utils.io import save_torch

CHECKPOINT_FORMAT = "multisource-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classifier head (timm's pretrained_cfg, else common names)."""
    inner = getattr(model, "model", model)
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ("classifier", "head", "fc")
    names = (names,) if isinstance(names, str) else tuple(names)
    prefix = "model." if inner is not model else ""
    return tuple(prefix + n + "." for n in names)


def save_checkpoint(path: str | Path, model: nn.Module, *, model_name: str, classes: Sequence[str],
                    dataset: str | None = None, bin_name: str | None = None, config: dict | None = None,
                    metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write atomically (temp file + rename) so an interrupted run never leaves a truncated checkpoint."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": model_name,
        "classes": list(classes),
        "num_classes": len(classes),
        "dataset": dataset,
        "bin": bin_name,
        "config": config or {},
        "metrics": metrics or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }
    return save_torch(path, payload)


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's payload; ``mmap`` maps the tensors instead of reading them (for metadata only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Train it first (baseline_training/"
                              "train_all_subsets.py) or pass the right --checkpoint_dir.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes; an interrupted copy?); delete it and re-train.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001  corrupt or foreign file, whatever torch raises: say which, in one line
        # torch's message suggests weights_only=False, which would run arbitrary code from the file: not repeated.
        raise CheckpointError(f"Cannot read checkpoint {path}: not a readable PyTorch checkpoint "
                              f"({type(exc).__name__}); delete it and re-train.") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a multisource checkpoint (no '{CHECKPOINT_FORMAT}' header).")
    return payload


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Everything but the weights, which are memory-mapped and never read (plans check every source's
    metadata before each experiment; the shared start is found the same way)."""
    return {k: v for k, v in read_checkpoint(path, mmap=True).items() if k != "state_dict"}


_MADV_DONTNEED = 4
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _LIBC is not None:
    _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _give_back_range(start: int, end: int) -> None:
    """Drop the pages of [start, end), inside a read-only file mapping, from this process's resident set (Linux
    ``madvise(DONTNEED)``; the page cache keeps them, and nothing here writes to the private mapping, so a later
    read maps them again). Only for addresses inside a checkpoint's mapping: on ordinary memory DONTNEED would
    zero it. A no-op off Linux."""
    if _LIBC is None or end <= start:
        return
    aligned = start - start % mmap.PAGESIZE  # whole pages: the file mapping is page-aligned and covers them
    _LIBC.madvise(aligned, end - aligned, _MADV_DONTNEED)


def _give_back_pages(tensor: torch.Tensor, mapped: tuple[int, int]) -> None:
    """Drop a memory-mapped tensor's pages (inside ``mapped``, the checkpoint's mapped storage range) from this
    process's resident set, so reading K checkpoints tensor by tensor does not end with K models' pages resident.
    A read also maps neighbouring pages (the kernel's fault-around), which this leaves: :meth:`LazyCheckpoint.
    release_pages` gives back the whole mapping once a merge is done with it."""
    storage = tensor.untyped_storage()
    start, size = storage.data_ptr(), storage.nbytes()
    if size == 0 or start < mapped[0] or start + size > mapped[1]:
        return
    _give_back_range(start, start + size)


class StateTensors:
    """A state dict read tensor by tensor (``keys``, ``shape``, ``read``): what the task-vector merges read the
    sources and the shared start through, whether a held model's or a mapped checkpoint's."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def keys(self) -> list[str]:
        return list(self._state)

    def __contains__(self, name: str) -> bool:
        return name in self._state

    def shape(self, name: str) -> torch.Size:
        return self._state[name].shape

    def read(self, name: str) -> torch.Tensor:
        """A copy of tensor ``name``: callers may change it without touching the model it was read from."""
        return self._state[name].detach().clone()

    def release_pages(self) -> None:
        """Give back what reading left resident (nothing for a held state dict: its owner frees it)."""


class LazyCheckpoint(StateTensors):
    """A checkpoint's tensors read one at a time: the file is memory-mapped, :meth:`read` copies one tensor and
    gives its pages back, so K open checkpoints hold K copies of one tensor at most, never K models."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        payload = read_checkpoint(self.path, mmap=True)
        self.meta = {k: v for k, v in payload.items() if k != "state_dict"}
        super().__init__(payload["state_dict"])
        storages = [t.untyped_storage() for t in self._state.values()]
        self._mapped = (min((st.data_ptr() for st in storages), default=0),
                        max((st.data_ptr() + st.nbytes() for st in storages), default=0))

    def read(self, name: str) -> torch.Tensor:
        """A copy of tensor ``name`` (finite, or a clear error), its mapped pages given back."""
        mapped = self._state[name]
        out = mapped.clone()
        _give_back_pages(mapped, self._mapped)
        if torch.is_floating_point(out) and not bool(torch.isfinite(out).all()):
            raise CheckpointError(f"{self.path} holds non-finite weights (NaN or inf) in '{name}'; it comes from a "
                                  "diverged run: re-train it (with a lower --learning_rate).")
        return out

    def release_pages(self) -> None:
        """Give back every page of the mapping this process has resident: the per-tensor release leaves the pages
        the kernel mapped around each read (about 2.6 MiB per ResNet-50 checkpoint), which would otherwise add up
        over K checkpoints. Call it when done with the checkpoint (a later read maps its pages again)."""
        _give_back_range(*self._mapped)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Weights with NaN or infinite values come from a diverged run: refuse them, never compute with them."""
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s), e.g. "
                              f"{bad[:3]}; it comes from a diverged run: re-train it (with a lower --learning_rate).")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    check_finite(state, source)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if shape:
            parts.append(f"shape mismatch in {shape[:3]} (e.g. {tuple(state[shape[0]].shape)} vs "
                         f"{tuple(own[shape[0]].shape)})")
        if missing:
            parts.append(f"missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}")
        raise CheckpointError(f"{source} does not fit this model: {'; '.join(parts)}. It was saved for another "
                              "architecture or class count.")
    model.load_state_dict(state, strict=True)


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """Initialise from pretrained weights: every backbone tensor must match; the head is re-initialised
    only when its shape differs (another class count), which is the one intended mismatch."""
    state = read_checkpoint(path)["state_dict"]
    own = model.state_dict()
    heads = head_prefixes(model)
    keep: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        if key in state and state[key].shape == value.shape:
            keep[key] = state[key]
        elif not key.startswith(heads):
            raise CheckpointError(f"Pretrained weights {path} do not fit backbone tensor '{key}'; they were saved "
                                  "for another architecture.")
        else:
            keep[key] = value
    model.load_state_dict(keep, strict=True)

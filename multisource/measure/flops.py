"""FLOPs counted on the real model, and a per-phase ledger of the work a method does (SPEC 6).

Counting runs the model once under ``torch.utils.flop_counter.FlopCounterMode``, which sees every aten
matmul/convolution/attention kernel, so grouped and depthwise convolutions, token-wise linears and attention
are included without per-architecture formulas. Three gaps of that counter are closed here:

* on CPU ``F.scaled_dot_product_attention`` runs ``aten._scaled_dot_product_flash_attention_for_cpu``, which
  has no formula (it would count 0); we register the same formula the CUDA kernels use;
* ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` take a fused "fast path" in eval mode that also
  counts 0; the fast path is switched off while counting so they run as linears + SDPA;
* ``mv`` / ``addmv`` / ``dot`` / ``_addmm_activation`` have no formula; they get the obvious ones.

Any other matmul-, convolution- or attention-like kernel that still has no formula is logged as a warning
(and listed by :func:`count_forward`) rather than silently counted as zero.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

log = logging.getLogger(__name__)

CONVENTION = ("MACs: one multiply-accumulate = 1 MAC; FLOPs = 2 x MACs. Counted with torch.utils.flop_counter "
              "on the real model in eval mode (grouped/depthwise convolutions, matmuls over tokens and attention "
              "included; element-wise ops, normalisation and activations are not counted). Training = forward + "
              "backward = 3 x forward per image.")
TRAINING_MULTIPLIER = 3  # backward ~ 2 x forward (gradients w.r.t. activations and weights)

aten = torch.ops.aten
# Kernel names (without the "aten." prefix) that do matmul-like work; "upsample_bilinear2d" must not match.
_HEAVY_OP = re.compile(r"conv(?!ert)|mm(_|$)|matmul|attention|einsum|(^|_)linear($|_)|mv$|dot$"
                       r"|rnn|lstm|gru|transformer")


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _mv(mat_shape, vec_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * mat_shape[0] * mat_shape[1]


def _addmv(self_shape, mat_shape, vec_shape, *args, out_shape=None, **kwargs) -> int:
    return _mv(mat_shape, vec_shape)


def _dot(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0]


def _addmm_activation(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _extra_formulas() -> dict[Any, Any]:
    """Formulas for kernels ``flop_registry`` lacks (FLOPs, shapes in); only ops this torch build has."""
    wanted = {"_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu,
              "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_cpu_backward,
              "mv": _mv, "addmv": _addmv, "dot": _dot, "vdot": _dot, "_addmm_activation": _addmm_activation}
    return {getattr(aten, name): fn for name, fn in wanted.items() if hasattr(aten, name)}


class _KernelRecorder(TorchDispatchMode):
    """Entered *below* the flop counter, so it sees the kernels that actually ran after its decompositions."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


@contextmanager
def _no_fused_attention_fastpath() -> Iterator[None]:
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def _input_device(model: nn.Module, device: str | torch.device) -> torch.device:
    """The model's own device when it has tensors (so a model left elsewhere still counts), else ``device``."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device(device)


def count_forward(model: nn.Module, image_size: int | tuple[int, int], *, batch_size: int = 1,
                  device: str | torch.device = "cpu", in_chans: int = 3) -> dict[str, Any]:
    """One eval-mode forward of a random (B, C, H, W) batch under the counter.

    Returns ``{"macs_per_image", "by_op_macs_per_image", "uncounted_ops"}``; ``uncounted_ops`` names
    matmul/conv/attention-like kernels that ran without a formula (their work is missing from the count).
    The model's train/eval flags are restored afterwards, module by module.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.randn(batch_size, in_chans, h, w, device=_input_device(model, device))
    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    recorder = _KernelRecorder()
    model.eval()
    try:
        with torch.no_grad(), _no_fused_attention_fastpath(), recorder, counter:
            model(x)
    finally:
        for m, training in modes.items():
            m.train(training)
    by_op: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(op)] += int(flops) // (2 * batch_size)
    uncounted = sorted(str(op) for op in recorder.ops
                       if op not in counter.flop_registry and _HEAVY_OP.search(str(op).rsplit(".", 1)[-1]))
    if uncounted:
        log.warning("FLOP counter has no formula for %s; their work is missing from the count of %s.",
                    ", ".join(uncounted), type(model).__name__)
    return {"macs_per_image": int(counter.get_total_flops()) // (2 * batch_size),
            "by_op_macs_per_image": dict(by_op), "uncounted_ops": uncounted}


def forward_macs(model: nn.Module, image_size: int | tuple[int, int], *, batch_size: int = 1,
                 device: str | torch.device = "cpu") -> int:
    """MACs of one image's forward pass (an ensemble wrapper of K models counts its K forwards).

    A model built on the ``meta`` device is counted without computing anything (same kernels, same count).
    """
    return count_forward(model, image_size, batch_size=batch_size, device=device)["macs_per_image"]


class FlopsLedger:
    """Per-phase MAC totals for one experiment: inference, training (3 x forward) and raw arithmetic."""

    def __init__(self, forward_per_image: int | None = None) -> None:
        self.forward_per_image = forward_per_image
        self._by_phase: dict[str, int] = {}

    def add(self, phase: str, macs: int) -> None:
        """Raw MACs, e.g. the arithmetic of merging or gradient alignment."""
        macs = int(macs)
        if macs < 0:
            raise ValueError(f"MACs for phase '{phase}' must be >= 0, got {macs}.")
        self._by_phase[phase] = self._by_phase.get(phase, 0) + macs

    def add_forward(self, phase: str, macs_per_image: int, images: int) -> None:
        """Inference: one forward per image."""
        self._check(phase, macs_per_image, images)
        self.add(phase, int(macs_per_image) * int(images))

    def add_training(self, phase: str, macs_per_image: int, images: int) -> None:
        """Training steps: forward + backward = ``TRAINING_MULTIPLIER`` x forward per image."""
        self._check(phase, macs_per_image, images)
        self.add(phase, TRAINING_MULTIPLIER * int(macs_per_image) * int(images))

    @staticmethod
    def _check(phase: str, macs_per_image: int, images: int) -> None:
        if macs_per_image < 0 or images < 0:
            raise ValueError(f"Phase '{phase}': macs_per_image={macs_per_image} and images={images} must be >= 0.")

    @property
    def total(self) -> int:
        return sum(self._by_phase.values())

    def to_dict(self, forward_per_image: int | None = None) -> dict[str, Any]:
        fwd = forward_per_image if forward_per_image is not None else self.forward_per_image
        return {"convention": CONVENTION, "unit": "MACs", "training_multiplier": TRAINING_MULTIPLIER,
                "forward_per_image": None if fwd is None else int(fwd),
                "forward_per_image_gmacs": None if fwd is None else fwd / 1e9,
                "total": self.total, "total_gmacs": self.total / 1e9, "by_phase": dict(self._by_phase)}

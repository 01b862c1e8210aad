"""Pure functions over state dicts and tensors: averaging, task-vector merges, tensor transfer.

Kept free of models and loaders so that tests can check them against oracles directly.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch
from peft.utils import merge_utils
from torch import nn


def is_averageable(t: torch.Tensor) -> bool:
    """Float tensors are averaged; integer buffers (BatchNorm's num_batches_tracked) are not."""
    return torch.is_floating_point(t) or torch.is_complex(t)


def average_state_dicts(states: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of float tensors; integer tensors taken from the first state dict."""
    acc: dict[str, torch.Tensor] | None = None
    count = 0
    for sd in states:
        count += 1
        if acc is None:
            acc = {k: v.detach().clone() for k, v in sd.items()}
        else:
            running_mean_(acc, sd, count)
    if acc is None:
        raise ValueError("average_state_dicts needs at least one state dict")
    return acc


@torch.no_grad()
def running_mean_(acc: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], count: int) -> int:
    """Streaming mean, in place: if ``acc`` is the mean of ``count - 1`` states, it becomes the mean of
    ``count`` states including ``state``. ``acc`` may be a live model's state dict (tensors share storage),
    so only one source needs to be resident besides it, whatever the number of sources. Returns the
    elements updated."""
    return weighted_running_mean_(acc, state, 1.0, float(count))


@torch.no_grad()
def weighted_running_mean_(acc: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], weight: float,
                           total_weight: float) -> int:
    """Streaming weighted mean, in place: if ``acc`` is the weighted mean of earlier states whose weights sum to
    ``total_weight - weight``, it becomes the weighted mean including ``state`` (weight ``weight``):
    ``acc + (weight / total_weight) * (state - acc)``, one fused ``lerp_`` per tensor (no temporaries). Returns
    the elements updated."""
    if set(acc) != set(state):
        diff = sorted(set(acc) ^ set(state))[:3]
        raise ValueError(f"state dicts have different keys (e.g. {diff}); sources must share one architecture")
    elements = 0
    for k, v in state.items():
        if is_averageable(v):
            if acc[k].shape != v.shape:
                raise ValueError(f"tensor {k} has shape {tuple(v.shape)} vs {tuple(acc[k].shape)}")
            acc[k].lerp_(v.detach().to(acc[k].device, acc[k].dtype), weight / total_weight)  # one fused pass
            elements += v.numel()
    return elements


def select_tensors(scores: Mapping[str, float], threshold: float) -> list[str]:
    """Tensors whose alignment is strictly above the threshold (threshold > 1 selects none)."""
    return [n for n, s in scores.items() if s > threshold]


@torch.no_grad()
def transfer_tensors(target: nn.Module, source_state: Mapping[str, torch.Tensor], names: Iterable[str]) -> int:
    """Copy ``source_state[name]`` into ``target``'s tensor of that name; returns the elements copied."""
    own = target.state_dict()
    elements = 0
    for name in names:
        own[name].copy_(source_state[name].to(own[name].device, own[name].dtype))
        elements += own[name].numel()
    return elements


def batchnorm_buffers_for(model: nn.Module, parameter_names: Iterable[str]) -> list[str]:
    """Running-stat buffers of the BatchNorm layers whose weight is among ``parameter_names``."""
    chosen = set(parameter_names)
    out: list[str] = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and f"{mod_name}.weight" in chosen:
            out += [f"{mod_name}.{b}" for b in ("running_mean", "running_var") if getattr(mod, b, None) is not None]
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device: torch.device, max_batches: int | None = None) -> int:
    """Re-estimate BatchNorm running statistics on ``loader`` (cumulative average); returns images used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    for i, (x, _) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        model(x.to(device))
        seen += len(x)
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)
    return seen


# ---- task vectors (source minus the shared start), one tensor at a time --------------------------------------

def trim_by_magnitude(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's trim, per tensor: keep the ``density`` share of entries largest in magnitude (PEFT's
    ``magnitude_based_pruning``), the rest set to 0; ``density >= 1`` keeps everything."""
    if density >= 1:
        return tau
    return merge_utils.prune(tau, density, method="magnitude")


def magnitude_cutoff(tau: torch.Tensor, density: float) -> float:
    """The magnitude of the ``int(density * n)``-th largest entry of ``tau`` (PEFT's per-tensor trim keeps those
    entries); inf when that is none. Entries at least this large are what :func:`trim_by_magnitude` keeps (ties
    at the cut-off aside)."""
    keep = int(density * tau.numel())
    if keep == 0:
        return math.inf
    return float(torch.topk(tau.detach().abs().reshape(-1).float(), keep, sorted=False).values.min())


_BIN_BITS = 16  # a float32 magnitude's top 16 bits (its exponent and 7 mantissa bits) name its histogram bin


def _magnitude_bins(tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|tau| flattened as float32, each entry's bin): for non-negative floats the bit pattern orders as the value,
    so the bins order as the magnitudes do."""
    mags = tau.detach().abs().reshape(-1).float()
    return mags, (mags.view(torch.int32) >> (32 - _BIN_BITS)).long()


def model_magnitude_cutoff(task_vector: Callable[[], Iterable[torch.Tensor]], density: float) -> float:
    """The TIES paper's trim over a whole model: the magnitude of the ``max(1, int(density * N))``-th largest of
    all N entries of a task vector given tensor by tensor (``task_vector()`` yields its tensors, the same on each
    call), exactly, holding one tensor at a time: a first pass counts the entries per magnitude bin, a second
    gathers only the entries of the bin where the cut-off lies. Entries at least this large are kept."""
    counts = torch.zeros(1 << (_BIN_BITS - 1), dtype=torch.int64)  # the sign bit of a magnitude is 0
    total = 0
    for tau in task_vector():
        _, bins = _magnitude_bins(tau)
        counts += torch.bincount(bins, minlength=counts.numel())
        total += bins.numel()
    keep = max(1, int(density * total))
    if keep >= total:
        return 0.0
    from_top = counts.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, torch.tensor(keep)))
    cut_bin, above = counts.numel() - 1 - j, int(from_top[j - 1]) if j else 0
    in_bin = torch.cat([mags[bins == cut_bin] for mags, bins in map(_magnitude_bins, task_vector())])
    return float(torch.topk(in_bin, keep - above).values.min())


def keep_above(tau: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``tau`` with the entries smaller in magnitude than ``cutoff`` set to 0."""
    return torch.where(tau.abs() >= cutoff, tau, torch.zeros((), dtype=tau.dtype, device=tau.device))


def dare_drop(tau: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE: drop each entry with probability ``1 - density`` and rescale the kept ones by ``1 / density``, the
    mask drawn from ``seed`` alone on a private generator, so the same (seed, tensor) always drops the same
    entries and no global random state (CPU or CUDA) changes. PEFT's ``random_pruning`` draws from the global
    generator (and some releases dropped the rescale), hence written here. ``density >= 1`` drops nothing."""
    if density >= 1:
        return tau
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = torch.bernoulli(torch.full(tau.shape, float(density)), generator=generator).to(tau.device, tau.dtype)
    return tau * keep / density


def elected_sign(sign_sum: torch.Tensor) -> torch.Tensor:
    """TIES's sign election by total mass, as PEFT's ``calculate_majority_sign_mask(method="total")``: +1 where
    the sum of the (trimmed) task vectors is >= 0, else -1."""
    return torch.where(sign_sum >= 0, 1, -1).to(torch.int8)


@torch.no_grad()
def disjoint_mean(task_vector: Callable[[int], torch.Tensor], count: int) -> torch.Tensor:
    """TIES's merge of ``count`` (trimmed) task vectors of one tensor, holding one of them at a time:
    ``task_vector(k)`` gives the k-th (it is asked twice, and must give the same tensor). First pass: elect the
    sign of each entry by total mass; second pass: the mean over the vectors that agree with it (entries no
    vector agrees with stay 0). Equals PEFT's ``ties`` with unit weights on the stacked vectors."""
    sign_sum = task_vector(0).clone()
    for k in range(1, count):
        sign_sum += task_vector(k)
    elected = elected_sign(sign_sum)
    total, agreeing = torch.zeros_like(sign_sum), torch.zeros_like(sign_sum)
    for k in range(count):
        tau = task_vector(k)
        agree = tau.sign() == elected
        total += torch.where(agree, tau, 0)
        agreeing += agree
    return total / agreeing.clamp(min=1.0)


@torch.no_grad()
def tensor_mean(read: Callable[[int], torch.Tensor], count: int) -> torch.Tensor:
    """The mean of ``count`` float tensors of one name, holding one at a time besides the result (``read(k)``
    gives the k-th): the per-tensor form of ``running_mean_``, with the same fused ``lerp_`` update."""
    acc = read(0).clone()
    for k in range(1, count):
        acc.lerp_(read(k).to(acc.dtype), 1.0 / (k + 1))
    return acc


@torch.no_grad()
def task_vector_sum(task_vector: Callable[[int], torch.Tensor], count: int) -> torch.Tensor:
    """Task arithmetic's sum of ``count`` task vectors of one tensor, holding one at a time (PEFT's
    ``task_arithmetic`` with unit weights); the scaling lambda is applied afterwards."""
    total = task_vector(0).clone()
    for k in range(1, count):
        total += task_vector(k)
    return total


def apply_task_vector(start: torch.Tensor, tau: torch.Tensor, scale: float) -> torch.Tensor:
    """``start + scale * tau`` (the merged tensor for one lambda)."""
    return start + scale * tau

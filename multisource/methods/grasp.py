"""GRASP: gradient-aligned sequential parameter transfer (the paper's method, SPEC 5).

At most two models are resident at any time (the evolving target model and one source), whatever K is:
the first source becomes ``current`` and is fine-tuned on the target; each further source is loaded,
its per-tensor gradient alignment with ``current`` is measured on target batches, the aligned tensors are
copied into ``current``, the source is freed, and ``current`` is fine-tuned again. The alignment phase peaks at
3.3 model sizes with ResNet-50 sources at 32 px (batch 32, the default 4 passes; bench/grasp_alignment.py): the
two models, about a quarter of one model's gradients and one forward's activations, which set the rest at
larger images (5.1 model sizes at 64 px). The paper keeps the last
step's model; ``step_selection="best-val"`` keeps the step with the best target val accuracy and ``guard``
undoes a step that lowers it, each holding one more model (a copy of the best so far: three in all).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..config import check_choice, check_range
from ..utils.seed import derive_seed
from ..training.loop import FinetuneConfig, autocast, accuracy
from .base import SOURCE_ORDERS, MethodResult, SourcePool, TargetData, register_method
from .merge import batchnorm_buffers_for, recalibrate_batchnorm, select_tensors, transfer_tensors
from .target_finetune import finetune_on_target

log = logging.getLogger(__name__)


@dataclass
class GraspConfig:
    initial_epochs: int = 3
    finetune_epochs: int = 3
    num_alignment_batches: int = 1
    # The alignment holds the current model's gradients for about 1/alignment_passes of its tensors at a time; each
    # pass repeats both models' forward and backward on the alignment batches. The scores are the same for any
    # value (on the CPU to the bit), so a finished result is reused whatever it was; 4 keeps the phase within 3.5
    # model sizes at 32 px (ResNet-50, batch 32; bench/grasp_alignment.py) at about 4x one pass's alignment time.
    alignment_passes: int = field(default=4, metadata={"same_results": True})
    alignment_threshold: float = 0.3
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    source_order: str = "chronological"
    eval_mode_alignment: bool = False  # compute alignment gradients with BatchNorm in eval mode
    transfer_bn_buffers: bool = False  # copy running stats of BatchNorm layers whose weight is transferred
    recalibrate_bn: bool = False  # re-estimate BatchNorm statistics on target train data after a transfer
    # Alignment batches: drawn from the target's train split by a seeded permutation and recorded by dataset
    # index; with eval transforms unless ``alignment_augment`` (then the indices alone do not fix the pixels).
    alignment_augment: bool = False
    alignment_resample: bool = False  # draw new batches for every step (default: one draw reused by all steps)
    # Which step's model is kept: "last" (the paper's: the model after the last source) or "best-val" (the step
    # whose fine-tuned model had the best target val accuracy; a later step on ties). Either choice other than
    # the paper's holds one extra model (a copy of the best so far), recorded as resident.
    step_selection: str = "last"
    # Undo a step whose fine-tuned val accuracy falls below the model's before it (the next step starts from
    # the model before it); holds the same one extra copy.
    guard: bool = False

    def __post_init__(self) -> None:
        check_range(self, "initial_epochs", 0)
        check_range(self, "finetune_epochs", 0)
        check_range(self, "num_alignment_batches", 1)
        check_range(self, "alignment_passes", 1)
        check_range(self, "learning_rate", 0, low_open=True)
        check_range(self, "weight_decay", 0)
        check_range(self, "alignment_threshold", -1, 1)  # a cosine: above 1 nothing could ever transfer
        check_choice(self, "source_order", SOURCE_ORDERS)
        check_choice(self, "step_selection", ("last", "best-val"))

    @property
    def keeps_a_copy(self) -> bool:
        """Whether the run holds a copy of the best model so far (a third model beside current and a source)."""
        return self.step_selection == "best-val" or self.guard

    def finetune_config(self, epochs: int) -> FinetuneConfig:
        return FinetuneConfig(epochs=epochs, learning_rate=self.learning_rate, weight_decay=self.weight_decay)


def _summed_backward(model: nn.Module, batches: list, device: torch.device, precision: str, group: set[str],
                     on_grad: Callable[[str, torch.Tensor], None]) -> None:
    """Backward of ``model``'s cross-entropy summed over ``batches``, keeping only the gradients of ``group``:
    any other tensor's gradient is dropped as soon as it is accumulated, and each of ``group``'s, summed over the
    batches, goes to ``on_grad(name, grad)`` as soon as the last batch has accumulated it, and is dropped from
    ``.grad``."""
    last = False

    def accumulated(param: torch.Tensor, name: str) -> None:
        if name in group and last:
            on_grad(name, param.grad)
        if name not in group or last:
            param.grad = None

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hooks = [p.register_post_accumulate_grad_hook(partial(accumulated, name=n)) for n, p in trainable]
    try:
        for i, (x, y) in enumerate(batches):
            last = i == len(batches) - 1
            with autocast(device, precision):
                loss = nn.functional.cross_entropy(model(x.to(device)).float(), y.to(device))
            loss.backward()
    finally:
        for h in hooks:
            h.remove()
    for name, param in trainable:  # a gradient from earlier batches only: the last batch's hook never fired
        if param.grad is not None:
            on_grad(name, param.grad)
            param.grad = None


def gradient_groups(model: nn.Module, passes: int) -> list[set[str]]:
    """``model``'s trainable parameter names cut into at most ``passes`` groups of about equal bytes: largest
    tensor first, each into the group with the fewest bytes so far (the largest group is within 4/3 of the best
    possible: at most max(largest tensor, total / passes) x 4/3)."""
    trainable = [(n, p.numel() * p.element_size()) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[set[str]] = [set() for _ in range(min(passes, len(trainable)))]
    loads = [0] * len(groups)
    for name, size in sorted(trainable, key=lambda t: -t[1]):  # stable: equal sizes keep the model's order
        i = loads.index(min(loads))
        groups[i].add(name)
        loads[i] += size
    return groups


def alignment_scores(current: nn.Module, source: nn.Module, batches: list, device: torch.device, precision: str,
                     eval_mode: bool, passes: int = 1) -> dict[str, float]:
    """Per parameter tensor, the cosine between ``source``'s and ``current``'s summed cross-entropy gradients
    over ``batches`` (0.0 where either is all zero or absent), in float64.

    Lean: the tensors are cut into ``passes`` groups of about equal bytes (``gradient_groups``) and each group
    takes one pass: ``current``'s backward keeps that group's gradients only, then ``source``'s backward
    consumes each of them as soon as it is accumulated (its dot product with ``current``'s and its norm), freeing
    both. So beside the two models one group's gradients are held (two with several alignment batches: the
    source's group accumulates over the earlier ones), plus one forward's activations; each pass repeats both
    forwards and backwards, replaying the random number generator so that dropout draws the same masks: on the
    CPU the scores are the same to the bit for any ``passes`` (on a GPU, as deterministic as its kernels).
    A measurement only: BatchNorm running statistics changed by train-mode forwards are restored and both models
    end without gradients. ``eval_mode`` decides which statistics the forwards normalise with."""
    saved = {m: ({k: v.detach().clone() for k, v in m.named_buffers()}, m.training) for m in (current, source)}
    for model in (current, source):
        model.train(not eval_mode)
        model.zero_grad(set_to_none=True)
    held: dict[str, torch.Tensor] = {}
    cur_norms: dict[str, float] = {}
    dots: dict[str, float] = {}
    src_norms: dict[str, float] = {}

    def hold(name: str, grad: torch.Tensor) -> None:
        held[name] = grad
        cur_norms[name] = float(torch.linalg.vector_norm(grad, dtype=torch.float64))

    def consume(name: str, grad: torch.Tensor) -> None:
        c = held.pop(name, None)
        if c is not None:
            dots[name] = float(torch.dot(grad.reshape(-1).double(), c.reshape(-1).double()))
            src_norms[name] = float(torch.linalg.vector_norm(grad, dtype=torch.float64))

    rng = _rng_state(device)
    for group in gradient_groups(current, passes):
        _set_rng_state(device, rng)  # every pass draws what the first drew: the same dropout masks
        _summed_backward(current, batches, device, precision, group, hold)
        _summed_backward(source, batches, device, precision, group, consume)
        held.clear()  # gradients of the current model the source has none for (frozen there)
    scores = {}
    for name, _ in current.named_parameters():
        denom = cur_norms.get(name, 0.0) * src_norms.get(name, 0.0)
        scores[name] = dots[name] / denom if denom > 0 else 0.0
    for model, (buffers, was_training) in saved.items():
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    return scores


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def alignment_indices(size: int, batch_size: int, num_batches: int, seed: int) -> list[list[int]]:
    """``num_batches`` batches of train-split indices from a permutation seeded by ``seed`` (cycling through it
    again when the split is smaller than the batches asked for)."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < batch_size * num_batches:
        order += torch.randperm(size, generator=generator).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


def transfer_step(current: nn.Module, source: nn.Module, batches: list, cfg: GraspConfig, device: torch.device,
                  precision: str = "32") -> dict:
    """Align ``source`` with ``current`` on ``batches`` and copy the aligned tensors into ``current``."""
    scores = alignment_scores(current, source, batches, device, precision, cfg.eval_mode_alignment,
                              cfg.alignment_passes)
    chosen = select_tensors(scores, cfg.alignment_threshold)
    names = chosen + (batchnorm_buffers_for(current, chosen) if cfg.transfer_bn_buffers else [])
    elements = transfer_tensors(current, source.state_dict(), names)
    return {"alignment": scores, "transferred": chosen, "transferred_buffers": names[len(chosen):],
            "num_tensors": len(scores), "num_transferred": len(chosen), "transferred_elements": elements,
            "alignment_passes": len(gradient_groups(current, cfg.alignment_passes)),  # fewer with fewer tensors
            "total_elements": sum(p.numel() for p in current.parameters())}


def target_epochs(cfg: GraspConfig, num_sources: int) -> int:
    """Initial fine-tuning of the first source, then one fine-tuning after each further source's transfer."""
    return cfg.initial_epochs + (num_sources - 1) * cfg.finetune_epochs


@register_method("grasp", GraspConfig, "Sequential gradient-aligned parameter transfer (2 models resident).",
                 source_order=lambda c: c.source_order, reference=True, target_epochs=target_epochs, needs_shared_start=True,
                 stream="its first model is the one deployed for the previous bin, which it fine-tunes on this bin, "
                        "then one aligned transfer from the previous bin's source and fine-tuning (2 models resident)")
def run(cfg: GraspConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    names = pool.names  # already in the requested order (see order_sources)
    history: list[dict] = []
    with meter.phase("load"):
        current = pool.load(names[0], key="current")
    fit = finetune_on_target(current, target, cfg.finetune_config(cfg.initial_epochs), meter,
                             phase="finetune", desc=f"grasp init[{names[0]}]")
    history += [{"step": 0, "source": names[0], **h} for h in fit.history]
    record = {"source_order": cfg.source_order, "order": names, "initial_source": names[0],
              "initial_val_accuracy": fit.best_val_accuracy, "steps": [], "step_selection": cfg.step_selection,
              "guard": cfg.guard}
    # The best model so far (the latest on ties): the step best-val keeps, and the model a guard returns to
    # (under a guard val never falls, so the model before a step is the best so far).
    best = _Best(current, 0, fit.best_val_accuracy, pool.residency) if cfg.keeps_a_copy else None
    macs = target.forward_macs(current)
    batch_size = target.train.batch_size
    for step, name in enumerate(names[1:], start=1):
        if step == 1 or cfg.alignment_resample:
            indices = alignment_indices(target.train_size(), batch_size, cfg.num_alignment_batches,
                                        derive_seed(target.seed, "grasp-alignment", step if cfg.alignment_resample else 0))
            batches = target.batches_at(indices, augment=cfg.alignment_augment)
            align_images = sum(len(y) for _, y in batches)
        with meter.phase("align"):
            with pool.borrow(name) as source:
                info = transfer_step(current, source, batches, cfg, target.device, target.precision)
                del source  # freed with its gradients before fine-tuning
        # both models' forward and backward, in every pass
        meter.flops.add_training("align", macs, 2 * align_images * info["alignment_passes"])
        meter.flops.add("align", 4 * info["total_elements"])  # cosine terms + copies
        if cfg.recalibrate_bn and info["num_transferred"]:
            with meter.phase("align"):
                used = recalibrate_batchnorm(current, target.train, target.device)
            meter.flops.add_forward("bn_recalibration", macs, used)
        val_after_transfer = accuracy(current, target.val, target.device, target.precision)
        meter.flops.add_forward("transfer_validation", macs, len(target.val.dataset))
        fit = finetune_on_target(current, target, cfg.finetune_config(cfg.finetune_epochs), meter,
                                 phase="finetune", desc=f"grasp step {step}[{name}]")
        history += [{"step": step, "source": name, **h} for h in fit.history]
        entry = {"step": step, "source": name, "alignment_indices": indices, **info,
                 "val_accuracy_after_transfer": val_after_transfer, "val_accuracy": fit.best_val_accuracy,
                 "best_epoch": fit.best_epoch}
        if cfg.guard:
            entry["val_accuracy_before"] = best.val_accuracy
            entry["undone"] = fit.best_val_accuracy < best.val_accuracy
            if entry["undone"]:
                best.restore_into(current)
                log.info("GRASP step %d (%s): val %.4f fell below %.4f before it; undone (guard)", step, name,
                         fit.best_val_accuracy, best.val_accuracy)
        if best is not None and fit.best_val_accuracy >= best.val_accuracy:
            best.take(current, step, fit.best_val_accuracy)
        record["steps"].append(entry)
        log.info("GRASP step %d (%s): transferred %d/%d tensors, val %.4f", step, name, info["num_transferred"],
                 info["num_tensors"], fit.best_val_accuracy)
    if best is not None:
        if cfg.step_selection == "best-val":
            best.restore_into(current)
        # under a guard the model kept is the last step not undone, which is the best so far
        record["selected_step"] = best.step
        record["selected_val_accuracy"] = best.val_accuracy
        best.release()
    return MethodResult(model=current, record=record, history=history)


class _Best:
    """A copy of the best model so far (its tensors on the model's device), held as one resident model."""

    KEY = "best-so-far"

    def __init__(self, model: nn.Module, step: int, val_accuracy: float, residency) -> None:
        self.residency, self.state, self.step, self.val_accuracy = residency, None, step, val_accuracy
        self._copy(model)
        if residency is not None:
            residency.hold(self.KEY, self.state)

    def _copy(self, model: nn.Module) -> None:
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:  # in place: no second copy while replacing the first
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    self.state[k].copy_(v)

    def take(self, model: nn.Module, step: int, val_accuracy: float) -> None:
        self._copy(model)
        self.step, self.val_accuracy = step, val_accuracy

    def restore_into(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)

    def release(self) -> None:
        if self.residency is not None:
            self.residency.release(self.KEY)
        self.state = None

"""SOUP: model soups of the sources (Wortsman et al., 2022), optionally fine-tuned on the target.

``mode: uniform`` is the uniform soup (the sources' parameter mean: FUSION's streaming average). ``mode: greedy``
scores every source on the target's val split (loading one at a time), then adds them to the soup best first,
keeping each only if the soup's val accuracy does not drop; the soup is the running mean of the kept ones.
At most three models are resident (the soup, its copy before the last addition, one source), whatever K is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_choice
from ..training.loop import accuracy
from .base import MethodResult, SourcePool, TargetData, register_method
from .fusion import average_streaming
from .merge import recalibrate_batchnorm, running_mean_
from .source_finetune import score_on_val
from .target_finetune import MERGE_OUTSIDE_DEFAULT, TargetFinetuneConfig, finetune_after_merge, match_finetune_epochs


@dataclass
class SoupConfig(TargetFinetuneConfig):
    mode: str = "greedy"
    recalibrate_bn: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "mode", ("uniform", "greedy"))


@torch.no_grad()
def greedy_soup(pool: SourcePool, target: TargetData, meter) -> tuple[torch.nn.Module, dict]:
    """The greedy soup; its record lists the sources' val accuracies, the order tried and what was kept."""
    _, scores = score_on_val(pool, target, meter)
    order = sorted(pool.names, key=lambda n: (-scores[n], pool.names.index(n)))
    with meter.phase("merge"):
        soup = pool.load(order[0], key="soup")
        best, kept, steps = scores[order[0]], [order[0]], []
        state = soup.state_dict()
        backup = {k: v.clone() for k, v in state.items()}
        if pool.residency is not None:
            pool.residency.hold("soup_backup", backup)
        macs = target.forward_macs(soup, "soup")
        for name in order[1:]:
            for k, v in state.items():
                backup[k].copy_(v)
            with pool.borrow(name) as source:
                running_mean_(state, source.state_dict(), len(kept) + 1)
                del source
            acc = accuracy(soup, target.val, target.device, target.precision)
            meter.flops.add_forward("selection", macs, len(target.val.dataset))
            keep = acc >= best
            steps.append({"source": name, "soup_val_accuracy": acc, "kept": keep})
            if keep:
                kept.append(name)
                best = acc
            else:
                for k, v in backup.items():
                    state[k].copy_(v)
        if pool.residency is not None:
            pool.residency.release("soup_backup")
        del backup
    return soup, {"source_val_accuracy": scores, "order": order, "kept": kept, "steps": steps,
                  "soup_val_accuracy": best}  # before any BatchNorm recalibration; the runner scores the weights


@register_method("soup", SoupConfig, "Merge: uniform or greedy soup of the sources (greedy: best on target val first, "
                 "each kept if val accuracy does not drop), optionally fine-tuned.", match_budget=match_finetune_epochs,
                 needs_shared_start=True, outside_default_sweep=MERGE_OUTSIDE_DEFAULT)
def run(cfg: SoupConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    if cfg.mode == "greedy":
        model, record = greedy_soup(pool, target, meter)
    else:
        with meter.phase("merge"):
            model, merge_macs = average_streaming(pool)
        meter.flops.add("merge", merge_macs)
        record = {}
    if cfg.recalibrate_bn:
        with meter.phase("merge"):
            record["bn_recalibration_images"] = recalibrate_batchnorm(model, target.train, target.device)
        meter.flops.add_forward("bn_recalibration", target.forward_macs(model, "soup"),
                                record["bn_recalibration_images"])
    record.update(mode=cfg.mode, members=pool.names)
    return finetune_after_merge(model, record, cfg, pool, target, meter, desc=f"soup[{cfg.mode}]")

"""SOURCE_FINETUNE (reference row): one source model fine-tuned on the target.

Which source: ``pick: nearest`` (the bin closest in time to the target; the earlier one on a tie), ``first``
(the first source in chronological order) or ``best-val`` (the source with the best target-val accuracy
before fine-tuning, evaluating the sources one at a time, so at most two are resident). With the same
budget as GRASP (``finetune_epochs: matched``) it answers whether GRASP's transfers add anything beyond
fine-tuning its best single starting point.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_choice
from ..training.loop import accuracy
from .base import MethodResult, SourcePool, TargetData, register_method
from .target_finetune import MATCHED, TargetFinetuneConfig, finetune_on_target, match_finetune_epochs

PICKS = ("nearest", "first", "best-val")


@dataclass
class SourceFinetuneConfig(TargetFinetuneConfig):
    finetune_epochs: int | str = MATCHED
    pick: str = "nearest"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "pick", PICKS)


def _source_order(cfg: SourceFinetuneConfig) -> str:
    # The pool arrives nearest-first for ``nearest`` (its first source is the pick), chronological otherwise.
    return "nearest-first" if cfg.pick == "nearest" else "chronological"


def score_on_val(pool: SourcePool, target: TargetData, meter) -> tuple[str, dict[str, float]]:
    """Every source's target-val accuracy, loading one at a time; the best (first on a tie)."""
    scores: dict[str, float] = {}
    for name in pool.names:
        with meter.phase("select"), pool.borrow(name) as source:
            scores[name] = accuracy(source, target.val, target.device, target.precision)
            macs = target.forward_macs(source, "source")
            del source
        meter.flops.add_forward("selection", macs, len(target.val.dataset))
    return max(scores, key=lambda n: (scores[n], -pool.names.index(n))), scores


@register_method("source_finetune", SourceFinetuneConfig, "Reference: one source (nearest, first or best on "
                 "target val) fine-tuned on the target.", source_order=_source_order, match_budget=match_finetune_epochs,
                 stream="fine-tunes on this bin the new source (pick nearest), the model deployed for the previous bin "
                        "(first: it keeps fine-tuning what is deployed) or the better of the two on val (best-val)")
def run(cfg: SourceFinetuneConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    record: dict = {"pick": cfg.pick}
    if cfg.pick == "best-val":
        chosen, record["source_val_accuracy"] = score_on_val(pool, target, meter)
    else:
        chosen = pool.names[0]
    with meter.phase("load"):
        model = pool.load(chosen, key="current")
    fit = finetune_on_target(model, target, cfg.finetune_config(), meter, desc=f"source_finetune[{chosen}]")
    record.update(source=chosen, epochs=cfg.epochs, best_epoch=fit.best_epoch, best_val_accuracy=fit.best_val_accuracy)
    return MethodResult(model=model, record=record, history=[{"step": "finetune", **h} for h in fit.history])

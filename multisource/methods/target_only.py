"""TARGET_ONLY (reference row): the sources' shared pretrained start fine-tuned on the target alone.

The first question a reviewer asks of any combination of sources: does it beat simply training on the target
with the same budget? This method reads no source model's weights (only the checkpoints' metadata, to find the
start every source was fine-tuned from), so its record shows no source models. The start comes with the head every
source started with (new for ImageNet weights; the upstream pool's where it has the target's classes), and it
is trained like a source, with the source-training recipe (the model's recommended rate, a 10x head rate, warm-up), by default
for as many target epochs as GRASP trains for the same K (``finetune_epochs: matched``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_range
from ..models.registry import ModelSpec
from ..training.loop import FinetuneConfig
from .base import MethodResult, SourcePool, TargetData, register_method
from .target_finetune import MATCHED, TargetFinetuneConfig, finetune_on_target, match_finetune_epochs


@dataclass
class TargetOnlyConfig(TargetFinetuneConfig):
    finetune_epochs: int | str = MATCHED
    learning_rate: float | None = None  # default: the model's recommended source-training rate
    head_lr_multiplier: float = 10.0  # as in source training
    warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "head_lr_multiplier", 0)
        check_range(self, "warmup_epochs", 0)

    def finetune_for(self, model: ModelSpec) -> FinetuneConfig:
        rate = self.learning_rate if self.learning_rate is not None else model.learning_rate
        return FinetuneConfig(epochs=self.epochs, learning_rate=rate, weight_decay=self.weight_decay,
                              head_lr_multiplier=self.head_lr_multiplier, warmup_epochs=self.warmup_epochs)


@register_method("target_only", TargetOnlyConfig, "Reference: the shared pretrained start fine-tuned on the "
                 "target only (no source model).", match_budget=match_finetune_epochs,
                 needs_shared_start=True, reads_sources=False,
                 stream="reads no source model: each bin's model is the shared start fine-tuned on that bin")
def run(cfg: TargetOnlyConfig, pool: SourcePool, target: TargetData, meter) -> MethodResult:
    with meter.phase("load"):
        model = pool.load_start()
    ft = cfg.finetune_for(pool.model)
    fit = finetune_on_target(model, target, ft, meter, desc="target_only", macs_key="target_only")
    record = {"start": pool.start_loaded, "learning_rate": ft.learning_rate, "epochs": ft.epochs,
              "best_epoch": fit.best_epoch, "best_val_accuracy": fit.best_val_accuracy}
    return MethodResult(model=model, record=record, history=[{"step": "finetune", **h} for h in fit.history])

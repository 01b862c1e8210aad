"""The LightningModule used for source (baseline) training and upstream pretraining."""

from __future__ import annotations

import copy

import lightning as L
import torch
from torch import nn

from .loop import TrainingDiverged
from .optim import param_groups, warmup_cosine


class ClassifierModule(L.LightningModule):
    def __init__(self, model: nn.Module, *, learning_rate: float, weight_decay: float = 0.01,
                 head_lr_multiplier: float = 10.0, warmup_epochs: float = 2.0, label_smoothing: float = 0.0,
                 train_batch_transform: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        # uint8 train batches are augmented here, on the device, after Lightning moved them (--batch_augment)
        self.train_batch_transform = train_batch_transform
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.head_lr_multiplier = head_lr_multiplier
        self.warmup_epochs = warmup_epochs
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.best_val_accuracy: float = -1.0
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self._val_correct = 0
        self._val_total = 0
        self._loss_sum: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.train_batch_transform is not None and self.trainer.training:
            x, y = batch
            return self.train_batch_transform(x), y
        return batch

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        detached = loss.detach()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached  # no sync per step
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        total, self._loss_sum = self._loss_sum, None
        if total is not None and not bool(torch.isfinite(total)):
            raise TrainingDiverged(f"Training diverged at epoch {int(self.current_epoch) + 1} (loss {float(total)}); "
                                   "lower --learning_rate (or check the inputs for NaN).")

    def on_validation_epoch_start(self) -> None:
        self._val_correct, self._val_total = 0, 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        self._val_correct += int((logits.argmax(1) == y).sum())
        self._val_total += int(len(y))
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        counts = torch.tensor([self._val_correct, self._val_total], dtype=torch.float64, device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        acc = float(counts[0] / counts[1].clamp_min(1))
        self.log("val_acc", acc, prog_bar=True, sync_dist=True)  # already reduced: every rank logs the same value
        # Keep the best-validation weights (CPU copy); sanity-check batches do not count.
        if not self.trainer.sanity_checking and acc > self.best_val_accuracy:
            self.best_val_accuracy, self.best_epoch = acc, int(self.current_epoch) + 1
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(param_groups(self.model, self.learning_rate, self.weight_decay,
                                                   self.head_lr_multiplier))
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup = int(round(self.warmup_epochs * total / epochs))
        scheduler = warmup_cosine(optimizer, total, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def best_model(self) -> nn.Module:
        model = copy.deepcopy(self.model).cpu()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model

"""Plain progress lines for runs whose output is not a terminal (nohup, SLURM, a redirect to a file).

A progress bar redraws one line with carriage returns: in a file it shows nothing useful until the end (minutes
of silence per bin). When the output is not a terminal, training logs one line at a steady interval and one per
epoch instead.
"""

from __future__ import annotations

import logging
import sys
import time

import lightning as L

log = logging.getLogger(__name__)
INTERVAL_S = 30.0  # at most this long without a line while a run is making progress


def output_is_terminal() -> bool:
    return sys.stderr.isatty()


class PlainProgress(L.Callback):
    """One log line every ``interval_s`` seconds within an epoch, and one at each epoch's end with val accuracy."""

    def __init__(self, name: str, interval_s: float = INTERVAL_S) -> None:
        self.name, self.interval_s = name, interval_s
        self.t0 = self.last = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.t0 = self.last = time.monotonic()
        log.info("%s: training %d epochs of %d batches", self.name, trainer.max_epochs, trainer.num_training_batches)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            log.info("%s: epoch %d/%d, batch %d/%d (%.0f s)", self.name, trainer.current_epoch + 1, trainer.max_epochs,
                     batch_idx + 1, trainer.num_training_batches, now - self.t0)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        self.last = time.monotonic()
        metrics = trainer.callback_metrics
        val = metrics.get("val_acc")
        loss = metrics.get("train_loss")
        log.info("%s: epoch %d/%d done, val acc %s, train loss %s (%.0f s)", self.name, trainer.current_epoch + 1,
                 trainer.max_epochs, f"{float(val):.4f}" if val is not None else "-",
                 f"{float(loss):.4f}" if loss is not None else "-", self.last - self.t0)

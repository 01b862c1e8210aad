"""Classification metrics with a fixed label order (SPEC 6)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score


def _auroc(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> tuple[float | None, str | None]:
    """Binary AUROC, or one-vs-rest macro; ``None`` with a reason when a class is absent (never a fake 0)."""
    present = np.unique(targets)
    if len(present) < num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        return None, f"class indices {missing} absent from the targets; AUROC undefined"
    if not np.all(np.isfinite(probs)):
        return None, "non-finite scores"
    if num_classes == 2:
        return float(roc_auc_score(targets, probs[:, 1])), None
    return float(roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=list(range(num_classes)))), None


def classification_metrics(logits_or_probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                           classes: Sequence[str], *, are_probs: bool = False) -> dict[str, Any]:
    """Accuracy, macro and weighted P/R/F1, AUROC, confusion matrix (rows = true, class-list order),
    per-class accuracy. ``logits_or_probs`` is (N, C)."""
    scores = torch.as_tensor(logits_or_probs).detach().float().cpu()
    probs = scores if are_probs else torch.softmax(scores, dim=1)
    probs_np = probs.numpy()
    y = torch.as_tensor(targets).cpu().numpy().astype(int)
    num_classes = len(classes)
    if probs_np.shape != (len(y), num_classes):
        raise ValueError(f"scores have shape {probs_np.shape}, expected ({len(y)}, {num_classes})")
    pred = probs_np.argmax(axis=1)
    labels = list(range(num_classes))
    out: dict[str, Any] = {"num_samples": int(len(y)), "accuracy": float((pred == y).mean()) if len(y) else None}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    out["auroc"], reason = _auroc(probs_np, y, num_classes)
    if reason:
        out["auroc_null_reason"] = reason
    cm = confusion_matrix(y, pred, labels=labels)
    out["confusion_matrix"] = cm.tolist()
    out["labels"] = list(classes)
    support = cm.sum(axis=1)
    out["per_class_accuracy"] = {c: (float(cm[i, i] / support[i]) if support[i] else None)
                                 for i, c in enumerate(classes)}
    out["loss"] = (float(torch.nn.functional.cross_entropy(scores, torch.as_tensor(y)).item())
                   if not are_probs else float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)),
                                                                           torch.as_tensor(y)).item()))
    return out

"""The drift report: every bin's source model evaluated on every bin's test split.

The matrix ``A[i][j]`` (source model of bin i, test split of bin j) and CLEAR's summary numbers (Lin et al.,
2021): in-domain = mean of the diagonal, next-domain = mean of the super-diagonal (each model on the next
bin), forward transfer = mean of the upper triangle (models on later bins), backward transfer = mean of the
lower triangle (models on earlier bins). Written as JSON, CSV, Markdown and a heatmap PNG under
``results/<dataset>/<model>/drift/``; source models are loaded one at a time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.loaders import DatasetHandle
from ..models.checkpoint import CheckpointError
from ..models.factory import data_config, load_checkpoint
from ..options import RunOptions
from ..training.fit import evaluate_split
from ..utils.env import environment
from ..utils.io import atomic_write, write_json, write_text
from ..utils.progress import progress_bar
from .plan import check_source_checkpoint
from .plots import plot_drift_heatmap

log = logging.getLogger(__name__)
DRIFT_DIR = "drift"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def clear_summary(matrix: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """CLEAR's in-domain, next-domain, forward and backward transfer of a square accuracy matrix (None when a
    part is empty, e.g. next-domain of a single bin)."""
    a = np.asarray(matrix, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"The drift matrix must be square, got shape {a.shape}.")
    n = a.shape[0]
    return {"in_domain": _mean([a[i, i] for i in range(n)]),
            "next_domain": _mean([a[i, i + 1] for i in range(n - 1)]),
            "forward_transfer": _mean([a[i, j] for i in range(n) for j in range(n) if j > i]),
            "backward_transfer": _mean([a[i, j] for i in range(n) for j in range(n) if j < i])}


def drift_matrix(handle: DatasetHandle, model: str, opts: RunOptions, bins: Sequence[str], *,
                 batch_size: int = 64, progress: bool = True) -> tuple[list[list[float]], dict[str, Any]]:
    """(accuracy matrix rows = source bins, columns = test bins; per-source details). One model resident."""
    device = opts.torch_device()
    matrix, sources = [], {}
    paths = {b: opts.source_checkpoint(handle.info.name, model, b) for b in bins}
    missing = [b for b, path in paths.items() if not path.is_file()]
    if missing:  # every source first: a missing one is an error now, not after the others ran
        have = [b for b in bins if b not in missing]
        raise CheckpointError(
            f"No {model} source model for {missing} (e.g. {paths[missing[0]]}). Train them with: python "
            f"baseline_training/train_all_subsets.py --dataset {handle.info.key} --model_name {model} --bins "
            f"{' '.join(missing)}" + (f", or report the bins that have one: --bins {' '.join(have)}." if have else "."))
    for b, path in paths.items():
        check_source_checkpoint(path, b, handle, model)
    bar = progress_bar(total=len(bins) ** 2, desc="Drift report", unit="eval", enabled=progress, leave=False)
    try:
        for b in bins:
            path = paths[b]
            net, meta = load_checkpoint(path, expected_model=model, expected_classes=handle.classes, device=device)
            size = (meta.get("config") or {}).get("image_size") or handle.info.image_size
            dcfg = data_config(net, size, hflip=handle.info.hflip)
            row = []
            for t in bins:
                row.append(evaluate_split(net, handle, t, "test", dcfg, batch_size, opts.num_workers,
                                          device)["accuracy"])
                bar.update()
            matrix.append(row)
            sources[b] = {"checkpoint": str(path), "image_size": size,
                          "recorded_test_accuracy": (meta.get("metrics") or {}).get("test_accuracy")}
            del net
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        bar.close()
    return matrix, sources


def bin_time_ranges(handle: DatasetHandle, bins: Sequence[str]) -> dict[str, dict | None]:
    """Each bin's time range as the card records it (imported datasets; Yearbook's periods), else None."""
    card_bins = (handle.card or {}).get("bins", {})
    out = {}
    for b in bins:
        entry = card_bins.get(b, {})
        out[b] = entry.get("time_range") or entry.get("period") or None
    return out


def _span(r: dict) -> str:
    first = r.get("first", r.get("first_year"))
    last = r.get("last", r.get("last_year"))
    return f"{'...' if first is None else first} .. {'...' if last is None else last}"


def drift_markdown(report: dict) -> str:
    bins, m = report["bins"], report["matrix"]
    lines = [f"# {report['dataset']} / {report['model']}: drift report", "",
             "Test accuracy of each bin's source model (row) on each bin's test split (column); the diagonal is "
             "in bold.", "", "| source \\ test | " + " | ".join(bins) + " |", "|---|" + "---|" * len(bins)]
    for i, b in enumerate(bins):
        cells = [f"**{v:.4f}**" if i == j else f"{v:.4f}" for j, v in enumerate(m[i])]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    s = report["summary"]
    lines += ["", "| in-domain | next-domain | forward transfer | backward transfer |", "|---|---|---|---|",
              "| " + " | ".join("-" if s[k] is None else f"{s[k]:.4f}" for k in
                                ("in_domain", "next_domain", "forward_transfer", "backward_transfer")) + " |", "",
              f"- {report['notes']['summary']}"]
    ranges = report.get("time_ranges") or {}
    if any(ranges.values()):
        lines.append("- time ranges: " + "; ".join(f"{b}: {_span(r)}" for b, r in ranges.items() if r))
    return "\n".join(lines) + "\n"


def write_drift_report(handle: DatasetHandle, model: str, opts: RunOptions, bins: Sequence[str] | None = None, *,
                       batch_size: int = 64) -> dict[str, Path]:
    """Evaluate every source model on every bin and write the report files; returns {kind: path}."""
    if bins and len(set(bins)) != len(bins):
        raise ValueError(f"--bins names a bin twice: {list(bins)}.")
    handle.check_bins(*(bins or ()))
    bins = [b for b in handle.bins if not bins or b in bins]  # time order, whatever order they were given in
    matrix, sources = drift_matrix(handle, model, opts, bins, batch_size=batch_size, progress=opts.progress)
    report = {"dataset": handle.info.name, "model": model, "bins": bins, "matrix": matrix,
              "summary": clear_summary(matrix), "time_ranges": bin_time_ranges(handle, bins), "sources": sources,
              "options": {**asdict(opts), "data_root": str(handle.root)}, "batch_size": batch_size,
              "environment": environment(str(opts.torch_device())),
              "notes": {"matrix": "matrix[i][j]: test accuracy of the source model trained on bins[i], on the test "
                                  "split of bins[j] (eval transforms).",
                        "summary": "CLEAR's numbers: in-domain = mean of the diagonal; next-domain = mean of "
                                   "matrix[i][i+1]; forward transfer = mean over j > i; backward transfer = mean "
                                   "over j < i."}}
    out = opts.results_path() / handle.info.name / model / DRIFT_DIR
    frame = pd.DataFrame(matrix, index=pd.Index(bins, name="source"), columns=bins)
    paths = {"json": write_json(out / "drift_report.json", report),
             "csv": atomic_write(out / "drift_report.csv", lambda p: frame.to_csv(p)),
             "md": write_text(out / "drift_report.md", drift_markdown(report)),
             "png": plot_drift_heatmap(matrix, bins, out / "drift_report.png",
                                       f"{handle.info.name} / {model}: test accuracy",
                                       counts=[handle.split_count(b, "test") for b in bins]),
             "pdf": out / "drift_report.pdf"}
    return paths

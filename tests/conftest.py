"""Shared fixtures: a small drifting-digits build and tiny source models, made once per test session.

Everything is built offline under pytest's temporary directory; nothing touches the project's own
datasets/ or results/ folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")
# One intra-op thread: on a small shared CPU, torch's thread pool oversubscribes the cores and tiny
# models train ~20x slower. Set before torch is imported; inherited by subprocess tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = "tiny-resnet"
# Small batches give the tiny models enough optimiser steps to learn (batch 64 left them at chance).
SOURCE_EPOCHS = 4
UPSTREAM_EPOCHS = 8
SOURCE_BATCH = 16


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """Drifting digits with one render per instance (fast), default seed and style."""
    from multisource.data.build.drift_digits import DriftDigitsConfig, build_drift_digits

    root = tmp_path_factory.mktemp("data") / "DriftDigits"
    build_drift_digits(root, DriftDigitsConfig(train_renders=1, eval_renders=1))
    return root


@pytest.fixture(scope="session")
def trained_sources(digits_root, tmp_path_factory) -> dict:
    """Upstream-pretrained tiny-resnet and one source checkpoint per era (a few epochs each).

    Returns {"results_dir", "checkpoint_dir", "data_root", "model", "bins", "reports"}.
    """
    from multisource.options import TrainOptions
    from multisource.training.fit import SourceTrainConfig
    from multisource.training.source import train_source
    from multisource.training.upstream import ensure_upstream
    from multisource.data.loaders import open_dataset

    results = tmp_path_factory.mktemp("results")
    opts = TrainOptions(data_root=str(digits_root), results_dir=str(results), progress=False)
    handle = open_dataset("drift_digits", digits_root)
    base = SourceTrainConfig(dataset="drift_digits", model_name=TINY_MODEL, max_epochs=SOURCE_EPOCHS,
                             batch_size=SOURCE_BATCH, seed=0)
    ensure_upstream(handle, base, opts, epochs=UPSTREAM_EPOCHS)
    reports = {}
    for b in handle.bins:
        cfg = SourceTrainConfig(**{**base.__dict__, "bin": b})
        reports[b] = train_source(cfg, opts)
    return {"results_dir": results, "checkpoint_dir": results / "drift_digits" / "baselines" / TINY_MODEL,
            "data_root": digits_root, "model": TINY_MODEL, "bins": list(handle.bins), "reports": reports}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    """Two xdist workers (``--dist loadgroup``): every test that trains on ``trained_sources`` runs on one worker,
    so the session's source models are built once, and other tests stay with their module, so module fixtures
    (built datasets, fake raw trees) are built once too."""
    for item in items:
        group = "trained_sources" if "trained_sources" in getattr(item, "fixturenames", ()) else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


# Where each summary metric lives in a metrics.json file, written out independently of the summary's own
# declarations (schema 2 nests a stage's scores under "stages"; schema 1 kept them at the top level).
METRIC_PATHS: dict[str, tuple[str, ...]] = {
    "test_accuracy": ("test", "accuracy"),
    "test_accuracy_before_finetune": ("stages", "before_finetune", "test_accuracy"),
    "val_accuracy_before_finetune": ("stages", "before_finetune", "val_accuracy"),
    "test_precision_macro": ("test", "precision_macro"), "test_recall_macro": ("test", "recall_macro"),
    "test_f1_macro": ("test", "f1_macro"), "val_accuracy": ("val", "accuracy"), "time_s": ("time", "total_s"),
    "peak_memory_bytes": ("memory", "peak_bytes"), "resident_model_bytes": ("memory", "resident_model_bytes"),
    "max_models_resident": ("memory", "max_models_resident"), "flops_total_macs": ("flops", "total"),
    "flops_forward_per_image_macs": ("flops", "forward_per_image"), "target_epochs": ("budget", "target_epochs"),
    "target_train_images": ("budget", "target_train_images"),
    "source_models_read": ("information_used", "num_source_models"),
}


def file_value(report: dict, key: str) -> float | None:
    """A summary metric read straight from a metrics.json's content (the summary's oracle)."""
    path = METRIC_PATHS[key]
    if report.get("schema_version", 1) == 1 and path[0] == "stages":
        path = path[1:]
    value = report
    for part in path:
        value = (value or {}).get(part)
    return None if value is None else float(value)

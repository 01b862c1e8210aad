"""One experiment: a method combines the sources for a target bin; measured, evaluated and written atomically.

Output: ``results/<dataset>/<model>/<method>/<target>/trial_<k>/`` with metrics.json, confusion matrices,
training curves, a log file and the final model. The folder is built beside its final place and renamed
into it at the end, so a crash leaves no half-written result and a failed re-run never replaces a finished one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..data.loaders import DatasetHandle, open_dataset
from ..measure.meter import Meter
from ..measure.metrics import classification_metrics
from ..methods import get_method
from ..methods.api import make_config, source_pool, target_data
from ..methods.base import order_sources
from ..models.checkpoint import CheckpointError, read_checkpoint_meta, save_checkpoint
from ..models.factory import count_parameters, resolve_model
from ..paths import checkpoint_path, experiment_dir
from ..training.loop import predict
from ..utils.env import environment
from ..utils.io import read_json, write_json
from ..utils.seed import seed_everything, trial_seed
from .config import ExperimentConfig, ExperimentOptions
from .plots import plot_confusion, plot_training_curves

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"


class ExperimentExists(FileExistsError):
    pass


def output_dir(cfg: ExperimentConfig, opts: ExperimentOptions) -> Path:
    return experiment_dir(opts.results_path(), resolve_dataset_name(cfg.dataset), resolve_model(cfg.model).name,
                          get_method(cfg.method).name, cfg.target, cfg.trial)


def resolve_dataset_name(name: str) -> str:
    from ..data.datasets import get_dataset

    return get_dataset(name).name


def is_finished(out: Path) -> bool:
    """A finished experiment has a metrics.json that parses and holds test accuracy."""
    try:
        data = read_json(out / METRICS_FILE)
        return data.get("status") == "complete" and data.get("test", {}).get("accuracy") is not None
    except (OSError, ValueError):
        return False


def source_checkpoints(cfg: ExperimentConfig, opts: ExperimentOptions, handle: DatasetHandle,
                       sources: list[str]) -> dict[str, Path]:
    """Checkpoint of each source, checked (exists, right dataset, classes and model) before any work starts."""
    model = resolve_model(cfg.model).name
    paths: dict[str, Path] = {}
    for b in sources:
        path = (Path(opts.checkpoint_dir).resolve() / f"{b}.ckpt" if opts.checkpoint_dir
                else checkpoint_path(opts.results_path(), handle.info.name, model, b))
        if not path.is_file():
            raise CheckpointError(
                f"Missing source checkpoint {path}. Train it with: python baseline_training/train_baseline.py "
                f"--dataset {handle.info.name} --bin {b} --model_name {model} (or pass --checkpoint_dir).")
        meta = read_checkpoint_meta(path)
        if meta.get("dataset") not in (None, handle.info.name):
            raise CheckpointError(f"Checkpoint {path} was trained on dataset '{meta['dataset']}', not "
                                  f"'{handle.info.name}'; point --checkpoint_dir at this dataset's checkpoints.")
        if list(meta["classes"]) != handle.classes:
            raise CheckpointError(f"Checkpoint {path} has {meta['num_classes']} classes, but {handle.info.name} "
                                  f"has {handle.num_classes}; re-train it on this dataset.")
        if resolve_model(meta["model_name"]).name != model:
            raise CheckpointError(f"Checkpoint {path} holds model '{meta['model_name']}', not '{model}'.")
        paths[b] = path
    return paths


def run_experiment(cfg: ExperimentConfig, opts: ExperimentOptions | None = None) -> dict[str, Any]:
    """Run one experiment and write its folder; returns the metrics.json content."""
    opts = opts or ExperimentOptions()
    spec = get_method(cfg.method)
    method_cfg = make_config(spec.name, cfg.method_config)  # bad hyper-parameters fail before any work
    handle = open_dataset(cfg.dataset, opts.data_root)
    handle.check_bins(cfg.target, *cfg.sources)
    sources = list(cfg.sources) or [b for b in handle.bins if b != cfg.target]
    if not sources:
        raise ConfigError(f"No source bins for target {cfg.target}; pass --sources.")
    seed = trial_seed(cfg.seed, cfg.trial)
    order = getattr(method_cfg, "source_order", "chronological")
    sources = order_sources(sources, cfg.target, handle.bins, order, seed)
    checkpoints = source_checkpoints(cfg, opts, handle, sources)
    out = output_dir(cfg, opts)
    if is_finished(out) and not opts.overwrite:
        raise ExperimentExists(f"{out} already holds a finished experiment; pass --overwrite to replace it.")
    device = opts.torch_device()
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    handler = logging.FileHandler(staging / "experiment.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        result = _execute(cfg, opts, spec.name, method_cfg, handle, sources, checkpoints, device, seed, staging)
    except BaseException:
        logging.getLogger().removeHandler(handler)
        handler.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logging.getLogger().removeHandler(handler)
    handler.close()
    _replace_dir(staging, out)
    return result


def _replace_dir(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _execute(cfg, opts, method, method_cfg, handle, sources, checkpoints, device, seed, staging) -> dict:
    seed_everything(seed)
    meter = Meter(device)
    target = target_data(handle, cfg.target, model=cfg.model, batch_size=cfg.batch_size,
                         num_workers=opts.num_workers, device=device, precision=opts.resolved_precision(device),
                         seed=seed, image_size=cfg.image_size)
    pool = source_pool(checkpoints, target, model=cfg.model, residency=meter.models)
    log.info("%s on %s/%s: target %s, sources %s, trial %d (seed %d), device %s", method, handle.info.name,
             resolve_model(cfg.model).name, cfg.target, sources, cfg.trial, seed, device)
    t0 = time.perf_counter()
    result = get_method(method).run(method_cfg, pool, target, meter)
    model = result.model
    macs = target.forward_macs(model, "final")
    meter.set_forward_macs(macs)
    with meter.phase("eval"):
        val_logits, val_y = predict(model, target.val, device, target.precision)
        test_logits, test_y = predict(model, target.test, device, target.precision)
    meter.flops.add_forward("inference", macs, len(val_y) + len(test_y))
    val = classification_metrics(val_logits, val_y, handle.classes)
    test = classification_metrics(test_logits, test_y, handle.classes)
    params = count_parameters(model)
    transferred = sum(s.get("transferred_elements", 0) for s in result.record.get("steps", []))
    report = {
        "schema_version": SCHEMA_VERSION, "status": "complete",
        "dataset": handle.info.name, "model": resolve_model(cfg.model).name, "method": method,
        "target": cfg.target, "sources": sources, "trial": cfg.trial, "seed": seed,
        "config": {**asdict(cfg), "sources": sources, "method_config": asdict(method_cfg), "base_seed": cfg.seed,
                   "image_size": target.image_size, "precision": target.precision},
        "options": {**asdict(opts), "data_root": str(handle.root)},
        "checkpoints": {b: str(p) for b, p in checkpoints.items()},
        "environment": environment(str(device)),
        "val": val, "test": test,
        **meter.report(),
        "params": {**params, "transferred": transferred},
        "record": result.record,
        "history": result.history,
        "wall_time_s": time.perf_counter() - t0,
    }
    _write_outputs(staging, report, result, handle, cfg, opts)
    pool.release_all()
    del model, result
    log.info("%s/%s trial %d: val %.4f test %.4f", method, cfg.target, cfg.trial, val["accuracy"], test["accuracy"])
    return report


def _write_outputs(staging: Path, report: dict, result, handle, cfg, opts) -> None:
    title = f"{report['method']} -> {report['target']} (trial {report['trial']})"
    plot_confusion(report["val"]["confusion_matrix"], handle.classes, staging / "confusion_val.png", f"{title}, val")
    plot_confusion(report["test"]["confusion_matrix"], handle.classes, staging / "confusion_test.png",
                   f"{title}, test")
    plot_training_curves(result.history, staging / "training_curves.png", title)
    if opts.save_model and result.produces_model:
        model = result.model
        if not result.standalone:  # a wrapper (PEARL's base + adapters, fusion's joint logit mean)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / "model.pt")
            report["model_file"] = "model.pt"
        else:
            save_checkpoint(staging / "model.ckpt", model, model_name=report["model"], classes=handle.classes,
                            dataset=report["dataset"], bin_name=report["target"], config=report["config"],
                            metrics={"val_accuracy": report["val"]["accuracy"],
                                     "test_accuracy": report["test"]["accuracy"]})
            report["model_file"] = "model.ckpt"
    write_json(staging / METRICS_FILE, report)

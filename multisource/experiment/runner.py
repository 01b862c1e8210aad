"""One experiment: a method combines the sources for a target bin; measured, evaluated and written atomically.

Output: ``results/<dataset>/<model>/<method>/<target>/trial_<k>/`` with metrics.json, confusion matrices,
training curves, a log file and the final model. The folder is built beside its final place and renamed
into it at the end, so a crash leaves no half-written result and a failed re-run never replaces a finished one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..data.folder import example_groups
from ..data.loaders import DatasetHandle
from ..measure.meter import Meter
from ..measure.metrics import classification_metrics
from ..measure.statistics import RESAMPLES, bootstrap_intervals
from ..methods import get_method
from ..methods.inputs import source_pool, target_data
from ..models.checkpoint import CheckpointError, save_checkpoint
from ..models.factory import count_parameters
from ..options import ExperimentOptions, recorded
from ..paths import BUDGETS, MODEL_FILE, budget_folder, model_results_dir, variant_folder
from ..training.start import StartMismatch, common_start
from ..training.loop import predict
from ..utils.env import environment
from ..utils.io import atomic_write, read_json, save_torch, write_json
from ..utils.seed import derive_seed, seed_everything
from .. import claims
from ..claims import HOST, owner_is_gone, process_tag  # noqa: F401  (HOST: tests name a staging folder's host)
from .config import ExperimentConfig
from .plan import ExperimentPlan, check_checkpoints, plan_experiment
from .protocols import STREAM
from .plots import plot_confusion, plot_training_curves
from .record import (METRICS_FILE, SCHEMA_VERSION, Environment, ExperimentRecord, FlopCount,  # noqa: F401
                     InformationUsed, MemoryCost, RunSettings, SplitScores, StageScores, StreamStep, TargetBudget,
                     TimeCost, read_record, write_record)

log = logging.getLogger(__name__)
PREDICTIONS_FILE = "test_predictions.csv"  # per test example (in the split's fixed order): label, prediction
NEXT_BIN_PREDICTIONS_FILE = "next_bin_test_predictions.csv"  # a stream's: the next bin's test split, the same way


class ExperimentExists(FileExistsError):
    pass


class ExperimentClaimed(FileExistsError):
    """Another live process (a sweep) is running this experiment; running it here would replace its result."""


class NonFiniteResult(ValueError):
    """A method's model produced NaN or infinite outputs: a failure, never a result."""


class TestSplitRead(RuntimeError):
    """A method iterated the target's test split while adapting: its result would be contaminated."""


def information_used(pool, target) -> dict[str, Any]:
    """What the method read, as observed (not as declared): source checkpoints loaded, the shared start,
    other bins' data and the target's splits. Raises when the target's test split was among them."""
    reads = sorted(target.reads)
    if "target:test" in reads:
        raise TestSplitRead("The method read the target's test split while adapting, so its result would be "
                            "contaminated and nothing is recorded; adapt on train and select on val only.")
    loaded = list(dict.fromkeys(pool.loaded))  # first-load order, each once
    return {"source_models": loaded, "num_source_models": len(loaded),
            "loaded_checkpoints": [str(pool.checkpoints[n]) for n in loaded],
            "pretrained_start": pool.start_loaded,
            "source_data": sorted({r.split(":")[1] for r in reads if r.startswith("source:")}),
            "target_data": [r.split(":")[1] for r in reads if r.startswith("target:")],
            "target_fraction": target.fraction}


def write_predictions(path: Path, labels: torch.Tensor, predictions: torch.Tensor,
                      groups: list[str] | None = None) -> Path:
    frame = pd.DataFrame({"index": range(len(labels)), "label": labels.numpy(), "prediction": predictions.numpy()})
    if groups is not None:  # the underlying example each test image renders (resampled together)
        frame["group"] = groups
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))



def read_predictions(out: Path, name: str = PREDICTIONS_FILE) -> pd.DataFrame | None:
    """An experiment's per-example test predictions (None for results written before they were saved); ``name``:
    another predictions file (a stream's next bin's)."""
    try:
        return pd.read_csv(out / name)
    except (OSError, ValueError):
        return None


def is_finished(out: Path) -> bool:
    """A finished experiment has a metrics.json that parses and holds test accuracy."""
    try:
        data = read_json(out / METRICS_FILE)
        return (isinstance(data, dict) and data.get("status") == "complete" and isinstance(data.get("test"), dict)
                and data["test"].get("accuracy") is not None)
    except (OSError, ValueError):
        return False


def check_replaceable(out: Path) -> None:
    """Only an experiment folder the runner wrote (it holds a metrics.json) is ever replaced: a folder of anything
    else at that place is refused, whatever --overwrite says."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / METRICS_FILE).is_file())):
        raise FileExistsError(f"{out} exists but is not an experiment folder this project wrote (no {METRICS_FILE}); "
                              "nothing was changed. Move it away, or choose another --results_dir.")


def remove_stale_staging(out_dir: Path) -> None:
    """Staging folders left by a killed run on this machine (its process is gone) are removed."""
    for p in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        if owner_is_gone(p.name.split(".partial-", 1)[1]):
            shutil.rmtree(p, ignore_errors=True)


def run_experiment(cfg: ExperimentConfig, opts: ExperimentOptions | None = None,
                   reference_config: Any | None = None) -> ExperimentRecord:
    """Resolve, check and run one experiment; returns its record (metrics.json). ``reference_config``: the
    reference method's config a ``matched`` budget follows (default: its defaults)."""
    opts = opts or ExperimentOptions()
    plan = plan_experiment(cfg, opts, reference_config=reference_config)
    check_checkpoints([plan])
    with claims.holding(plan.out_dir) as held:
        if not held:
            owner = claims.read_owner(claims.claim_path(plan.out_dir)) or "another process"
            raise ExperimentClaimed(f"{plan.out_dir} is being run right now by {owner} (a sweep on the same results "
                                    "folder); wait for it to finish (its result is then kept) or choose another "
                                    "--results_dir.")
        return run_plan(plan, opts)


def run_plan(plan: ExperimentPlan, opts: ExperimentOptions) -> ExperimentRecord:
    """Run a resolved experiment (its checkpoints already checked) and write its folder atomically."""
    out = plan.out_dir
    if is_finished(out) and not opts.overwrite:
        raise ExperimentExists(f"{out} already holds a finished experiment; pass --overwrite to replace it.")
    check_replaceable(out)
    if plan.carried and not plan.carried.path.is_file():
        previous = plan.carried.name.split(":", 1)[1]
        raise CheckpointError(f"--protocol stream: {plan.config.target} continues the model deployed for {previous}, "
                              f"but {plan.carried.path} does not exist; run the stream up to {previous} first (a sweep "
                              f"with --protocol stream runs the bins in time order).")
    reused = reuse_twin(plan, opts)
    if reused is not None:
        return reused
    device = opts.torch_device()
    remove_stale_staging(out)  # what a killed run (kill -9, power loss) left beside this experiment
    staging = out.with_name(f".{out.name}.partial-{process_tag()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    handler = logging.FileHandler(staging / "experiment.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        result = _execute(plan, opts, device, staging)
    except BaseException:
        logging.getLogger().removeHandler(handler)
        handler.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logging.getLogger().removeHandler(handler)
    handler.close()
    _replace_dir(staging, out)
    return result


def start_fingerprint(plan: ExperimentPlan) -> str | None:
    """The sources' shared start (None when they have none: mixed starts, allowed)."""
    try:
        return common_start({**plan.lineage, **plan.checkpoints}).fingerprint
    except StartMismatch:
        return None


def _same_inputs(found: ExperimentRecord, plan: ExperimentPlan, opts: ExperimentOptions) -> bool:
    """A finished result was computed from exactly what ``plan`` would read: the same data build, seed, method
    configuration, batch, image size, augmentation path, precision and device as they ran, and shared start (its
    protocol and sources aside)."""
    config, device = found.config, opts.torch_device()
    return (found.data_fingerprint == plan.handle.fingerprint and found.seed == plan.seed
            and config.method_config == json.loads(json.dumps(asdict(plan.method_config)))
            and config.batch_size == plan.config.batch_size and config.image_size == plan.image_size
            and (config.target_fraction or 1.0) == plan.config.target_fraction
            and config.precision == opts.precision_on(device.type) and found.environment.device == str(device)
            and (found.extra.get("options") or {}).get("batch_augment") == opts.batch_augment
            and config.start_fingerprint is not None and config.start_fingerprint == start_fingerprint(plan))


def reuse_twin(plan: ExperimentPlan, opts: ExperimentOptions) -> ExperimentRecord | None:
    """For a method that reads no source model (TARGET_ONLY), the same experiment finished under another protocol
    with the same inputs is the same result: copy it in (its record says from where) instead of computing it
    again. None when there is no such twin."""
    if get_method(plan.config.method).reads_sources or opts.overwrite or plan.config.protocol == STREAM:
        return None  # (a stream's record also scores the next bin: nothing else has that)
    c = plan.config
    base = model_results_dir(opts.results_path(), plan.handle.info.name, c.model)
    protocol_dirs = [base] + (sorted(p for p in (base / "protocols").iterdir() if p.is_dir() and p.name != STREAM)
                              if (base / "protocols").is_dir() else [])
    dirs = [d if c.target_fraction == 1 else d / BUDGETS / budget_folder(c.target_fraction) for d in protocol_dirs]
    for other in (d / variant_folder(c.method, c.tag) / c.target / f"trial_{c.trial}" for d in dirs):
        if other == plan.out_dir or not is_finished(other):
            continue
        try:
            found = read_record(other)
        except ValueError:
            continue
        if not _same_inputs(found, plan, opts):
            continue
        earlier = found.protocol
        staging = plan.out_dir.with_name(f".{plan.out_dir.name}.partial-{process_tag()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(other, staging)
        found.protocol, found.sources, found.reused_from = c.protocol, list(plan.sources), str(other)
        found.config.protocol, found.config.sources = c.protocol, list(plan.sources)
        found.extra["reuse_note"] = (f"{c.method} reads no source model, so under protocol {c.protocol} it has "
                                     f"the same inputs as under {earlier}: that result, copied, not run again")
        write_record(staging, found)
        _replace_dir(staging, plan.out_dir)
        log.info("%s: the same inputs were run under protocol %s; reused %s", plan.label, earlier, other)
        found.folder = plan.out_dir
        return found
    return None


def _replace_dir(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _execute(plan: ExperimentPlan, opts: ExperimentOptions, device, staging: Path) -> ExperimentRecord:
    cfg, handle, method = plan.config, plan.handle, plan.config.method
    seed_everything(plan.seed)
    meter = Meter(device)
    target = target_data(handle, cfg.target, model=cfg.model, batch_size=cfg.batch_size,
                         num_workers=opts.num_workers, device=device, precision=opts.precision_on(device.type),
                         seed=plan.seed, image_size=plan.image_size, batch_augment=opts.batch_augment,
                         target_fraction=cfg.target_fraction)
    pool = source_pool(plan.pool_checkpoints(), target, model=cfg.model, residency=meter.models,
                       stands_for={plan.carried.name: plan.carried.bins} if plan.carried else None)
    log.info("%s on %s/%s: target %s, sources %s, trial %d (seed %d), device %s", method, handle.info.name,
             cfg.model, cfg.target, list(pool.names), cfg.trial, plan.seed, device)
    t0 = time.perf_counter()
    result = get_method(method).run(plan.method_config, pool, target, meter)
    used = information_used(pool, target)  # before the evaluation below reads val and test
    model = result.model
    macs = target.forward_macs(model, "final")
    meter.set_forward_macs(macs)
    with meter.phase("eval"):
        val_logits, val_y = predict(model, target.val, device, target.precision)
        test_logits, test_y = predict(model, target.test, device, target.precision)
    meter.flops.add_forward("inference", macs, len(val_y) + len(test_y))
    for split, logits in (("val", val_logits), ("test", test_logits)):
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteResult(f"{method} produced non-finite outputs (NaN or inf) on {cfg.target}'s {split} split, "
                                  "so nothing is recorded; lower the learning rate or check the source checkpoints.")
    val = classification_metrics(val_logits, val_y, handle.classes)
    test = classification_metrics(test_logits, test_y, handle.classes)
    test_pred = test_logits.argmax(1)
    groups = example_groups(target.test.dataset, handle.info.example_group)
    units = (f"the {len(test_y)} test examples" if groups is None else
             f"the {len(set(groups))} underlying test examples ({len(test_y)} images, renderings resampled together)")
    test.update(bootstrap_intervals(test_y.numpy(), test_pred.numpy(), seed=derive_seed(plan.seed, "bootstrap"),
                                    labels=range(len(handle.classes)), groups=groups),
                ci95_method=f"percentile bootstrap over {units} ({RESAMPLES} resamples)",
                predictions_file=PREDICTIONS_FILE)
    stages = evaluate_stages(result, target, handle.classes, val, test, meter, macs)
    params = count_parameters(model)
    transferred = sum(s.get("transferred_elements", 0) for s in result.record.get("steps", []))
    costs = meter.report()  # the method's and its evaluation's; a stream's look at the next bin is not its cost
    stream = stream_step(plan, model, target, macs, staging) if cfg.protocol == STREAM else None
    record = ExperimentRecord(
        dataset=handle.info.name, data_fingerprint=handle.fingerprint, protocol=cfg.protocol, model=cfg.model,
        method=method, target=cfg.target, sources=list(plan.sources), trial=cfg.trial, seed=plan.seed,
        config=RunSettings.from_json({**asdict(cfg), "sources": list(plan.sources),
                                      "method_config": asdict(plan.method_config), "base_seed": cfg.seed,
                                      "image_size": target.image_size, "precision": target.precision,
                                      "precision_requested": opts.precision,
                                      "start_fingerprint": start_fingerprint(plan)}, "config"),
        environment=Environment.from_json(environment(str(device)), "environment"),
        information_used=InformationUsed.from_json(used, "information_used"),
        val=SplitScores.from_json(val, "val"), test=SplitScores.from_json(test, "test"),
        stages={n: StageScores.from_json(s, f"stages.{n}") for n, s in stages.items()},
        time=TimeCost.from_json(costs["time"], "time"), memory=MemoryCost.from_json(costs["memory"], "memory"),
        flops=FlopCount.from_json(costs["flops"], "flops"), stream=stream,
        budget=TargetBudget.from_json({**costs["budget"], "target_fraction": cfg.target_fraction,
                                       "target_train_split": target.train_size(),
                                       "target_sample": target.budget_sample,
                                       "target_val_split": len(target.val.dataset)}, "budget"),
        extra={"options": {**recorded(opts, ExperimentOptions), "data_root": str(handle.root)},
               "checkpoints": {b: str(p) for b, p in plan.checkpoints.items()},
               "params": {**params, "transferred": transferred}, "record": result.record,
               "history": result.history, "wall_time_s": time.perf_counter() - t0})
    write_predictions(staging / PREDICTIONS_FILE, test_y, test_pred, groups)
    _write_outputs(staging, record, result, handle, opts)
    pool.release_all()
    del model, result
    log.info("%s/%s trial %d: val %.4f test %.4f", method, cfg.target, cfg.trial, val["accuracy"], test["accuracy"])
    record.folder = plan.out_dir
    return record


def stream_step(plan: ExperimentPlan, model, target, macs: int, staging: Path) -> StreamStep:
    """A stream's bin: what its model continues, and its scores on the next bin's test split (evaluated after the
    method, like the target's own test split; the last bin has no next one), whose predictions are written to
    ``staging`` beside the target's."""
    bins = list(plan.handle.bins)
    i = bins.index(plan.config.target)
    step = StreamStep(carried_from=plan.carried.name.split(":", 1)[1] if plan.carried else None,
                      stands_for=list(plan.carried.bins) if plan.carried else [])
    if i + 1 < len(bins):
        step.next_bin = bins[i + 1]
        loader = target.bin_loader(step.next_bin, "test")
        logits, labels = predict(model, loader, target.device, target.precision)
        step.extra["next_bin_inference_macs"] = macs * len(labels)
        if not bool(torch.isfinite(logits).all()):  # the bin's own result stands; this number is a failure
            step.extra["next_bin_problem"] = (f"non-finite outputs (NaN or inf) on {step.next_bin}'s test split; "
                                              "no next-bin score is recorded")
            log.warning("%s: %s", plan.label, step.extra["next_bin_problem"])
            return step
        scores = classification_metrics(logits, labels, plan.handle.classes)
        groups = example_groups(loader.dataset, plan.handle.info.example_group)
        scores.update(bootstrap_intervals(labels.numpy(), logits.argmax(1).numpy(),
                                          seed=derive_seed(plan.seed, "bootstrap", "next-bin"),
                                          labels=range(len(plan.handle.classes)), groups=groups),
                      predictions_file=NEXT_BIN_PREDICTIONS_FILE)
        write_predictions(staging / NEXT_BIN_PREDICTIONS_FILE, labels, logits.argmax(1), groups)
        step.next_bin_test = SplitScores.from_json(scores, "stream.next_bin_test")
    return step


def evaluate_stages(result, target, classes: list[str], val: dict, test: dict, meter, macs: int) -> dict[str, dict]:
    """Val and test accuracy (and macro F1) of the earlier states a method handed back beside its final model
    (the merges' weights before target fine-tuning), evaluated here, after the method, so that no method ever
    reads the test split. A state of None is the final model itself (nothing was fine-tuned)."""
    out = {}
    for name, state in result.stages.items():
        if state is None:
            v, t = val, test
        else:  # the final weights wait on the host while the model holds the stage's (no third model on the device)
            model = result.model
            final = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            model.load_state_dict(state)
            with meter.phase("eval"):
                (v_logits, v_y), (t_logits, t_y) = (predict(model, loader, target.device, target.precision)
                                                    for loader in (target.val, target.test))
            model.load_state_dict(final)
            del final
            meter.flops.add_forward("inference", macs, len(v_y) + len(t_y))
            if not bool(torch.isfinite(v_logits).all() and torch.isfinite(t_logits).all()):
                raise NonFiniteResult(f"The model's {name.replace('_', ' ')} state gives non-finite outputs; nothing "
                                      "is recorded.")
            v, t = classification_metrics(v_logits, v_y, classes), classification_metrics(t_logits, t_y, classes)
        out[name] = {"val_accuracy": v["accuracy"], "test_accuracy": t["accuracy"], "val_f1_macro": v["f1_macro"],
                     "test_f1_macro": t["f1_macro"], "same_as_final": state is None}
    return out


def _write_outputs(staging: Path, record: ExperimentRecord, result, handle: DatasetHandle,
                   opts: ExperimentOptions) -> None:
    title = f"{record.method} -> {record.target} (trial {record.trial})"
    plot_confusion(record.val.confusion_matrix, handle.classes, staging / "confusion_val.png", f"{title}, val")
    plot_confusion(record.test.confusion_matrix, handle.classes, staging / "confusion_test.png", f"{title}, test")
    plot_training_curves(result.history, staging / "training_curves.png", title)
    if (opts.save_model or record.protocol == STREAM) and result.produces_model:  # a stream's next bin reads it
        model = result.model
        if not result.standalone:  # a wrapper (PEARL's base + adapters, fusion's joint logit mean)
            save_torch(staging / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
            record.extra["model_file"] = "model.pt"
        else:
            save_checkpoint(staging / MODEL_FILE, model, model_name=record.model, classes=handle.classes,
                            dataset=record.dataset, bin_name=record.target, config=record.config.to_json(),
                            metrics={"val_accuracy": record.val.accuracy, "test_accuracy": record.test.accuracy})
            record.extra["model_file"] = MODEL_FILE
    write_record(staging, record)

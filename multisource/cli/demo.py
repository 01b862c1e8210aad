"""The demo: drifting digits -> upstream pretraining -> 5 source models -> all four methods -> summary."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from ..config import build, load_yaml, pick
from ..paths import CONFIGS_DIR, DATASETS_DIR
from .common import run_main, setup_logging

log = logging.getLogger(__name__)


def demo_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the whole pipeline on the embedded drifting-digits benchmark.")
    p.add_argument("--config", default=str(CONFIGS_DIR / "demo.yaml"))
    p.add_argument("--data_root", default=None, help="default: <project>/datasets/DriftDigits")
    p.add_argument("--results_dir", default=None, help="default: <project>/results")
    p.add_argument("--workers", type=int, default=None, help="experiments run in parallel (default from config)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return run_main(lambda: run_demo(args))


def run_demo(args: argparse.Namespace) -> int:
    from ..data.card import read_card
    from ..data.drift_digits import DriftDigitsConfig, build_drift_digits
    from ..experiment.config import ExperimentOptions
    from ..experiment.summary import comparison_markdown
    from ..experiment.sweep import SweepConfig, SweepOptions, run_sweep
    from ..training.source import RunOptions, SourceTrainConfig
    from ..training.bins import train_all_bins

    cfg = load_yaml(args.config)
    stages: dict[str, float] = {}
    root = Path(args.data_root).resolve() if args.data_root else DATASETS_DIR / "DriftDigits"
    t0 = time.perf_counter()
    data_cfg = build(DriftDigitsConfig, cfg.get("data"))
    if read_card(root) is None:
        print(f"[1/4] Building drifting digits in {root} ...", flush=True)
        build_drift_digits(root, data_cfg, overwrite=root.exists())
    else:
        print(f"[1/4] Drifting digits found in {root}", flush=True)
    stages["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print("[2/4] Source models (upstream pretraining once, then one model per era; complete ones are reused)",
          flush=True)
    src = build(SourceTrainConfig, {"dataset": cfg["dataset"], "model_name": cfg["model"]}, cfg.get("sources"))
    opts = RunOptions(data_root=str(root), results_dir=args.results_dir, progress=False)
    from ..data.loaders import open_dataset

    bins = open_dataset(cfg["dataset"], root).bins
    workers = args.workers or int((cfg.get("run") or {}).get("workers", 1))
    trained = train_all_bins(src, opts, bins, workers=workers)
    failed = [b for b, r in trained.items() if r["status"] == "failed"]
    for b, r in trained.items():
        print(f"      {b:<8} {r['status']:<8} {r.get('detail', '')}")
    if failed:
        print(f"Source training failed for {failed}; see the log above.")
        return 1
    stages["sources_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sweep_cfg = build(SweepConfig, {"dataset": cfg["dataset"], "models": (cfg["model"],)}, cfg.get("sweep"))
    n = len(sweep_cfg.targets or bins) * sweep_cfg.num_trials * len(sweep_cfg.methods)
    print(f"[3/4] Sweep: {len(sweep_cfg.methods)} methods x {len(sweep_cfg.targets or bins)} targets x "
          f"{sweep_cfg.num_trials} trials = {n} experiments ({workers} worker(s); finished ones are skipped)",
          flush=True)
    exp_opts = ExperimentOptions(data_root=str(root), results_dir=args.results_dir, device="cpu")

    def progress(job, outcome, i, total):
        acc = f"test acc {outcome.test_accuracy:.3f}" if getattr(outcome, "test_accuracy", None) is not None else ""
        print(f"      [{i}/{total}] {job.label:<40} {outcome.status} {acc}", flush=True)

    result = run_sweep(sweep_cfg, exp_opts, SweepOptions(workers=workers), progress=progress)
    stages["sweep_s"] = time.perf_counter() - t0
    print(f"[4/4] Summary ({len(result.finished)} run, {len(result.skipped)} reused, {len(result.failed)} failed)\n")
    from ..experiment.summary import summary_dir
    from ..models.factory import resolve_model
    from ..utils.io import read_json

    model = resolve_model(cfg["model"]).name
    out = summary_dir(exp_opts.results_path(), sweep_cfg.dataset, model)
    print(comparison_markdown(read_json(out / "comparison.json")))
    print(f"\nSummaries: {out}  (comparison.md/.csv/.json, <method>.json, plots)")
    print("Stage times: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in stages.items()))
    return 0 if result.ok else 1

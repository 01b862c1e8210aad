"""The demo: drifting digits -> upstream pretraining -> 5 source models -> every method -> summary.

Every section of the settings file (default ``configs/demo.yaml``) is honoured: ``data`` builds the
benchmark, ``sources`` trains the source models, ``sweep`` and ``methods`` run the sweep, ``run`` says how.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from ..paths import CONFIGS_DIR, DATASETS_DIR
from .common import run_main, setup_logging


def demo_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the whole pipeline on the embedded drifting-digits benchmark.")
    p.add_argument("--config", default=str(CONFIGS_DIR / "demo.yaml"))
    p.add_argument("--data_root", default=None, help="default: <project>/datasets/DriftDigits")
    p.add_argument("--results_dir", default=None, help="default: <project>/results")
    p.add_argument("--workers", default=None, help="experiments run in parallel (default from the config's run:)")
    p.add_argument("--verbose", action="store_true", default=None)
    args = p.parse_args(argv)
    setup_logging(bool(args.verbose))
    return run_main(lambda: run_demo(args))


def run_demo(args: argparse.Namespace) -> int:
    # The library is imported here, when work starts (see cli/common.py).
    from ..data.card import read_card
    from ..data.drift_digits import build_drift_digits
    from ..data.loaders import open_dataset
    from ..experiment.settings import cli_layer, read_settings, resolve_data, resolve_sweep, resolve_training
    from ..experiment.summary import comparison_markdown, summary_dir
    from ..experiment.sweep import plan_sweep, run_sweep
    from ..training.all_bins import train_all_bins
    from ..utils.io import read_json

    settings = read_settings(args.config)
    root = Path(args.data_root).resolve() if args.data_root else DATASETS_DIR / "DriftDigits"
    cli = cli_layer(argparse.Namespace(data_root=str(root), results_dir=args.results_dir, workers=args.workers))
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    data_cfg = resolve_data(settings)
    if read_card(root) is None:
        print(f"[1/4] Building drifting digits in {root} ...", flush=True)
        build_drift_digits(root, data_cfg, overwrite=root.exists())
    else:
        print(f"[1/4] Drifting digits found in {root}", flush=True)
    stages["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print("[2/4] Source models (upstream pretraining once, then one model per era; complete ones are reused)",
          flush=True)
    src, opts = resolve_training(settings, cli)
    handle = open_dataset(src.dataset, root)
    trained = train_all_bins(src, replace(opts, progress=False), handle, handle.bins)
    for b, r in trained.items():
        print(f"      {b:<8} {r['status']:<8} {r.get('detail', '')}")
    failed = [b for b, r in trained.items() if r["status"] == "failed"]
    if failed:
        print(f"Source training failed for {failed}; see the log above.")
        return 1
    stages["sources_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sweep_cfg, sweep_opts = resolve_sweep(settings, cli)
    plan = plan_sweep(sweep_cfg, sweep_opts)
    n_targets = len(sweep_cfg.targets or handle.bins)
    print(f"[3/4] Sweep: {len(sweep_cfg.methods)} methods x {n_targets} targets x {sweep_cfg.num_trials} trials = "
          f"{len(plan.jobs)} experiments ({sweep_opts.workers} worker(s); finished ones are skipped)", flush=True)

    def progress(job, outcome, i, total):
        acc = f"test acc {outcome.test_accuracy:.3f}" if outcome.test_accuracy is not None else ""
        print(f"      [{i}/{total}] {job.label:<40} {outcome.status} {acc}", flush=True)

    result = run_sweep(plan, sweep_opts, progress=progress)
    stages["sweep_s"] = time.perf_counter() - t0
    print(f"[4/4] Summary ({len(result.finished)} run, {len(result.skipped)} reused, {len(result.failed)} failed)\n")
    for model in sweep_cfg.models:
        out = summary_dir(sweep_opts.results_path(), plan.handle.info.name, model, sweep_cfg.protocol)
        print(comparison_markdown(read_json(out / "comparison.json")))
        print(f"\nSummaries: {out}  (comparison.md/.csv/.json, <method>.json, plots)")
    print("Stage times: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in stages.items()))
    return 0 if result.ok else 1

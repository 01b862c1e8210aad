"""The demo: drifting digits -> upstream pretraining -> the source models -> every method -> summary.

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
    if args.workers is None or (args.workers.isdigit() and int(args.workers) > 1):
        from ..executors import start_worker_server

        # The workers' fork server imports torch and Lightning (about 10 s) on the second core while this
        # process imports them on the first, rather than later beside the upstream pretraining. Started before
        # the settings are read (that import is what it overlaps): a settings file that asks for one worker
        # leaves it unused; a bad --workers is refused by the settings loader as always.
        start_worker_server()
    return run_main(lambda: run_demo(args))


def run_demo(args: argparse.Namespace) -> int:
    # The library is imported here, when work starts (see cli/common.py).
    from ..data.card import read_card
    from ..data.build.drift_digits import build_drift_digits
    from ..experiment.settings import cli_layer, read_settings, resolve_data, resolve_sweep
    from ..experiment.summary import comparison_markdown, summary_dir
    from ..experiment.sweep import plan_sweep, run_sweep
    from ..utils.io import read_json

    settings = read_settings(args.config)
    root = Path(args.data_root).resolve() if args.data_root else DATASETS_DIR / "DriftDigits"
    cli = cli_layer(argparse.Namespace(data_root=str(root), results_dir=args.results_dir, workers=args.workers))
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    data_cfg = resolve_data(settings, dataset="drift_digits")
    sweep_cfg, sweep_opts = resolve_sweep(settings, cli)  # every setting resolved before any work
    if read_card(root) is None:
        print(f"[1/4] Building drifting digits in {root} ...", flush=True)
        build_drift_digits(root, data_cfg, overwrite=root.exists())
    else:
        print(f"[1/4] Drifting digits found in {root}", flush=True)
    stages["data_s"] = time.perf_counter() - t0

    # The sources, the experiments and the summaries are the sweep's stages (experiment.sweep.STAGES), run in
    # their order by run_sweep with --train_missing, exactly as `run_all.py --train_missing` runs them.
    sweep_opts = replace(sweep_opts, train_missing=True)
    plan = plan_sweep(sweep_cfg, sweep_opts)
    n_targets = len({job.config.target for job in plan.jobs})
    print("[2/4] Source models (upstream pretraining once, then one model per source era; complete ones are reused)",
          flush=True)
    clock = {"t0": time.perf_counter()}

    def stage(name: str, detail) -> None:
        now = time.perf_counter()
        if name == "sources":
            for model, outcomes in detail.items():  # each bin was logged as it finished
                counts = {s: sum(r.status == s for r in outcomes.values()) for s in ("trained", "skipped", "failed")}
                print(f"      {model}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), flush=True)
            if not detail:
                print("      every source model the experiments need is there", flush=True)
            stages["sources_s"], clock["t0"] = now - clock["t0"], now
        elif name == "experiments":
            print(f"[3/4] Sweep: {len(sweep_cfg.methods)} methods x {n_targets} targets x {sweep_cfg.num_trials} "
                  f"trials = {len(plan.jobs)} experiments, {len(detail)} to run ({sweep_opts.workers} worker(s); "
                  "finished ones are skipped)", flush=True)

    def progress(job, outcome, i, total):
        acc = f"test acc {outcome.test_accuracy:.3f}" if outcome.test_accuracy is not None else ""
        print(f"      [{i}/{total}] {job.label:<40} {outcome.status} {acc}", flush=True)

    result = run_sweep(plan, sweep_opts, progress=progress, stage=stage)
    stages["sweep_s"] = time.perf_counter() - clock["t0"]
    print(f"[4/4] Summary ({len(result.finished)} run, {len(result.skipped)} reused, {len(result.failed)} failed)\n")
    for model in sweep_cfg.models:
        out = summary_dir(sweep_opts.results_path(), plan.handle.info.name, model, sweep_cfg.protocol)
        print(comparison_markdown(read_json(out / "comparison.json")))
        print(f"\nSummaries: {out}  (comparison.md/.csv/.json, <method>.json, plots)")
    print("Stage times: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in stages.items()))
    return 0 if result.ok else 1

"""End to end: wall time of each demo stage on drifting digits with tiny-resnet, on this machine.

    python bench/end_to_end.py            # demo-sized run (upstream 15 epochs, sources 10, methods 3+3)
    python bench/end_to_end.py --quick    # 1 epoch everywhere, 1 render per digit (under a minute)

Stages, in one process, into a temporary folder: build the dataset (``build_drift_digits``), pretrain the
tiny model on the upstream pool (``training.upstream.ensure_upstream``), train one source model per era
(``training.source.train_source``), then one experiment per method for target ``era_5`` from the four
earlier eras (``experiment.runner.run_experiment``: the method, evaluation, plots and metrics.json).
With ``--repeats N`` the whole pipeline runs N times and the median of every stage is reported.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import load_average, machine, median, parser, print_table, quiet_lightning, ratio, setup, write_report

MODEL, TARGET = "tiny-resnet", "era_5"
METHODS = ("ensemble", "fusion", "grasp", "pearl")


def method_configs(epochs: int, lr: float) -> dict[str, dict]:
    return {"ensemble": {}, "fusion": {"finetune_epochs": epochs, "learning_rate": lr},
            "grasp": {"initial_epochs": epochs, "finetune_epochs": epochs, "learning_rate": lr},
            "pearl": {"adapter_epochs": epochs, "composition_epochs": epochs, "learning_rate": lr}}


def pipeline(tmp: Path, args) -> tuple[dict[str, float], dict]:
    """One run of every stage; returns seconds per stage and what each method scored."""
    from multisource.data.build.drift_digits import DriftDigitsConfig, build_drift_digits
    from multisource.data.loaders import open_dataset
    from multisource.experiment.config import ExperimentConfig
    from multisource.experiment.runner import run_experiment
    from multisource.options import ExperimentOptions, TrainOptions
    from multisource.training.fit import SourceTrainConfig
    from multisource.training.source import train_source
    from multisource.training.upstream import ensure_upstream

    times: dict[str, float] = {}
    root, results = tmp / "DriftDigits", tmp / "results"

    def stage(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - t0, 2)
        print(f"    {name:<22} {times[name]:>8.1f} s   (load {load_average()[0]})", flush=True)
        return out

    renders = 1 if args.quick else 3
    digits = DriftDigitsConfig(train_renders=renders, eval_renders=renders)
    stage("build_data", lambda: build_drift_digits(root, digits))
    handle = open_dataset("drift_digits", root)
    opts = TrainOptions(data_root=str(root), results_dir=str(results), progress=False)
    base = SourceTrainConfig(dataset="drift_digits", model_name=MODEL, max_epochs=args.source_epochs,
                             batch_size=args.batch_size, seed=0)
    stage("upstream_pretraining", lambda: ensure_upstream(handle, base, opts, epochs=args.upstream_epochs))
    for b in handle.bins:
        stage(f"train_source:{b}", lambda b=b: train_source(SourceTrainConfig(**{**base.__dict__, "bin": b}), opts))
    times["train_sources"] = round(sum(v for k, v in times.items() if k.startswith("train_source:")), 2)
    scores = {}
    eopts = ExperimentOptions(data_root=str(root), results_dir=str(results), device=args.device, overwrite=True)
    for method, mcfg in method_configs(args.method_epochs, args.learning_rate).items():
        cfg = ExperimentConfig(dataset="drift_digits", model=MODEL, method=method, target=TARGET,
                               batch_size=args.batch_size, method_config=mcfg)
        report = stage(f"method:{method}", lambda cfg=cfg: run_experiment(cfg, eopts))
        scores[method] = {"test_accuracy": report.test.accuracy,
                          "meter_time_by_phase_s": {k: round(v, 2) for k, v in report.time.extra["by_phase"].items()}}
    times["total"] = round(sum(v for k, v in times.items() if not k.startswith("train_source:") and k != "total"), 2)
    return times, scores


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0], "1 epoch everywhere, 1 render per digit (under a minute)")
    p.add_argument("--upstream_epochs", type=int, default=None, help="default 15 (1 quick)")
    p.add_argument("--source_epochs", type=int, default=None, help="default 10 (1 quick)")
    p.add_argument("--method_epochs", type=int, default=None, help="each method phase (default 3; 1 quick)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="method learning rate (demo scale)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="whole pipelines; the median per stage is reported")
    args = p.parse_args(argv)
    args.upstream_epochs = args.upstream_epochs or (1 if args.quick else 15)
    args.source_epochs = args.source_epochs or (1 if args.quick else 10)
    args.method_epochs = args.method_epochs or (1 if args.quick else 3)
    os.environ.setdefault("TQDM_DISABLE", "1")
    setup(args)
    quiet_lightning()
    load_before = load_average()
    runs, scores = [], []
    for rep in range(args.repeats):
        print(f"  pipeline {rep + 1}/{args.repeats}:", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
            t, s = pipeline(Path(tmp), args)
        runs.append(t)
        scores.append(s)
    stages = {k: median(r[k] for r in runs) for k in runs[0]}
    share = {k: ratio(v, stages["total"]) for k, v in stages.items() if not k.startswith("train_source:")}
    report = {
        "benchmark": "end_to_end", "quick": args.quick, "model": MODEL, "dataset": "drift_digits",
        "target": TARGET, "device": args.device,
        "settings": {"renders": 1 if args.quick else 3, "upstream_epochs": args.upstream_epochs,
                     "source_epochs": args.source_epochs, "batch_size": args.batch_size,
                     "method_configs": method_configs(args.method_epochs, args.learning_rate)},
        "repeats": args.repeats, "statistic": "median over whole pipelines",
        "stage_seconds": stages, "share_of_total": share, "runs": runs, "scores": scores,
        "machine": machine(load_before, args.device),
    }
    path = write_report(args.output_dir, "end_to_end", report)
    print()
    print_table([{"stage": k, "s": f"{v:.1f}", "share": f"{share[k]:.2f}"} for k, v in stages.items() if k in share],
                [("stage", "stage"), ("s", "seconds"), ("share", "share of total")])
    print(f"Wrote {path} (load average {report['machine']['load_average_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

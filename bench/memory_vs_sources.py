"""Memory vs number of sources K: each method's real code path, one fresh process per (method, K).

    python bench/memory_vs_sources.py            # mobilevit-xxs at 64 px, K = 2 4 8 16 (a few minutes)
    python bench/memory_vs_sources.py --quick    # tiny-resnet at 32 px, K = 2 4 (under a minute)

Sources are K copies of one randomly initialised checkpoint with small weight perturbations (memory does
not depend on what the weights are); the target is drifting digits' ``era_5``. Every method runs through
``run_method`` with a fresh ``Meter`` and then evaluates its model on the target's test images (as the
experiment runner does), on a few batches (1 epoch of 2 train batches: the point is memory vs K, not
accuracy). PEARL trains each source's adapter on that source's data: source k reads era k mod 4.

Each (method, K) runs in its own process forked from this one after the imports (peak RSS is per process
and never goes down), so every measurement starts from the same resident set. Reported per row: the
process's peak RSS over the method's phases (and the CUDA allocator's peak on a GPU), the RSS just before
the method started (``baseline_rss_bytes``: interpreter, libraries, data loaders) and the peak above it,
and the declared resident models (``resident_model_bytes``, ``max_models_resident``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import (build_digits, load_average, machine, median, mib, parser, print_table, ratio, run_forked,
                    setup, steady_malloc, write_report)

# name in the report -> (registered method, config overrides: one epoch everywhere)
RUNS = {
    "ensemble": ("ensemble", {}),
    "fusion": ("fusion", {"mode": "params", "finetune_epochs": 1}),
    "fusion-logits": ("fusion", {"mode": "logits", "finetune_epochs": 1}),
    "grasp": ("grasp", {"initial_epochs": 1, "finetune_epochs": 1}),
    "pearl": ("pearl", {"adapter_epochs": 1, "composition_epochs": 1}),
    # the merging baselines: one lambda (the grid repeats the same evaluation), one epoch of fine-tuning
    "task_arithmetic": ("task_arithmetic", {"lambdas": (0.5,), "finetune_epochs": 1}),
    "ties": ("ties", {"lambdas": (1.0,), "finetune_epochs": 1}),
    "dare": ("dare", {"lambdas": (0.5,), "merge": "ties", "finetune_epochs": 1}),
    "dare-ta": ("dare", {"lambdas": (0.5,), "merge": "task_arithmetic", "finetune_epochs": 1}),
    "soup": ("soup", {"mode": "greedy", "finetune_epochs": 1}),
    "soup-uniform": ("soup", {"mode": "uniform", "finetune_epochs": 1}),
}
# The methods whose every phase must stay flat in K (tests/test_bench_scripts.py): all but those that hold K
# models by design (ensemble, fusion's logits mode, PEARL's K adapters).
FLAT = ("task_arithmetic", "ties", "dare", "dare-ta", "soup", "soup-uniform", "fusion", "grasp")
TARGET = "era_5"


def make_checkpoints(folder: str, model_name: str, classes: list[str], image_size: int, count: int,
                     noise: float, seed: int = 0) -> dict[str, str]:
    """``count`` checkpoints: one random initialisation (saved as their shared start, which each names, as
    source training does) plus independent Gaussian noise per copy."""
    import torch

    from multisource.models.checkpoint import save_checkpoint
    from multisource.models.factory import create_model, resolve_model

    torch.manual_seed(seed)
    model = create_model(model_name, len(classes), pretrained=False, image_size=image_size)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = save_checkpoint(Path(folder) / "start.ckpt", model, model_name=resolve_model(model_name).name,
                            classes=classes, config={"image_size": image_size})
    paths = {}
    for k in range(count):
        with torch.no_grad():
            for name, v in model.state_dict().items():
                if torch.is_floating_point(v):
                    v.copy_(base[name] + noise * torch.randn_like(v))
        name = f"src_{k + 1:02d}"
        path = save_checkpoint(Path(folder) / f"{name}.ckpt", model, model_name=resolve_model(model_name).name,
                               classes=classes, dataset="drift_digits", bin_name=name,
                               config={"image_size": image_size, "pretrained": True,
                                       "pretrained_from": str(start)})
        paths[name] = str(path)
    return paths


def _limited(loader, images: int, train: bool, seed: int = 0):
    """The same dataset and batch size, cut to its first ``images`` images."""
    from torch.utils.data import Subset

    from multisource.data.loaders import make_loader

    ds = loader.dataset
    return make_loader(Subset(ds, range(min(images, len(ds)))), batch_size=loader.batch_size, train=train, seed=seed)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def measure(run: str, k: int, checkpoints: dict[str, str], opts: dict) -> dict:
    """One (method, K) in this (fresh) process; returns the row. ``opts["epochs"]``, when given, replaces every
    epoch count of the method's settings (0: the merge phases alone)."""
    import torch

    steady = steady_malloc()
    from multisource.data.loaders import open_dataset
    from multisource.measure.meter import Meter
    from multisource.methods.inputs import run_method, source_pool, target_data
    from multisource.training.loop import predict

    torch.manual_seed(0)
    handle = open_dataset("drift_digits", opts["data_root"])
    target = target_data(handle, TARGET, model=opts["model"], batch_size=opts["batch_size"], device=opts["device"],
                         image_size=opts["image_size"], seed=0)
    target.train = _limited(target.train, opts["train_images"], True)
    target.val = _limited(target.val, opts["eval_images"], False)
    target.test = _limited(target.test, opts["eval_images"], False)
    names = list(checkpoints)[:k]
    eras = [b for b in handle.bins if b != TARGET]
    era_of = {n: eras[i % len(eras)] for i, n in enumerate(names)}
    by_bin = target.bin_loader

    def source_split(bin_name: str, split: str):  # PEARL's adapters train on their source's data
        images = opts["train_images"] if split == "train" else opts["eval_images"]
        return _limited(by_bin(era_of.get(bin_name, bin_name), split), images, split == "train")

    target.bin_loader = source_split
    meter = Meter(target.device)
    pool = source_pool({n: checkpoints[n] for n in names}, target, model=opts["model"], residency=meter.models)
    method, config = RUNS[run]
    if opts.get("epochs") is not None:
        config = {**config, **{key: opts["epochs"] for key in config if key.endswith("epochs")}}
    baseline = _rss()
    t0 = time.perf_counter()
    result = run_method(method, pool, target, config, meter)
    with meter.phase("eval"):
        predict(result.model, target.test, target.device)
    elapsed = time.perf_counter() - t0
    mem = meter.report()["memory"]
    row = {"method": run, "K": k, "peak_rss_bytes": mem["peak_rss_bytes"],
           "resident_model_bytes": mem["resident_model_bytes"], "max_models_resident": mem["max_models_resident"],
           "baseline_rss_bytes": baseline, "peak_rss_above_baseline_bytes": mem["peak_rss_bytes"] - baseline,
           "optimizer_state_bytes": mem["optimizer_state_bytes"], "source_loads": pool.loads,
           "peak_rss_by_phase": {p: v["peak_rss_bytes"] for p, v in mem["by_phase"].items()},
           "rss_method": mem["rss_method"], "steady_malloc": steady, "time_s": round(elapsed, 2),
           "model_bytes": model_bytes(result.model)}
    adapters = result.record.get("adapter_params")
    if adapters:  # PEARL's K LoRA adapters, injected into the base (resident_model_bytes holds both)
        row["adapter_bytes"] = sum(adapters.values()) * next(result.model.parameters()).element_size()
    if target.device.type == "cuda":
        row["peak_cuda_bytes"] = mem["peak_cuda_bytes"]
        row["peak_cuda_by_phase"] = {p: v.get("cuda_peak_allocated_bytes") for p, v in mem["by_phase"].items()}
    return row


def model_bytes(model) -> int:
    """One model's parameters and buffers, in bytes (the unit phase growth is measured in)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def phase_growth(rows: list[dict], ks: list[int]) -> dict[str, dict[str, float]]:
    """Per method and phase: how much the phase's peak RSS grew from the smallest to the largest K, in models
    (one model's bytes), e.g. {"ties": {"load": 0.01, "merge": 0.06, ...}}. Flat in K: near 0 in every phase."""
    lo, hi = min(ks), max(ks)
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        at = {r["K"]: r for r in rows if r["method"] == method}
        if lo in at and hi in at:
            small, large = at[lo]["peak_rss_by_phase"], at[hi]["peak_rss_by_phase"]
            out[method] = {p: round((large[p] - small[p]) / at[lo]["model_bytes"], 3) for p in small if p in large}
    return out


def _median_row(rows: list[dict]) -> dict:
    """Median of every number over repeats (the first repeat's other fields)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and key != "K":
            out[key] = median(r[key] for r in rows)
            if isinstance(value, int):
                out[key] = int(out[key])
    out["repeats"] = len(rows)
    return out


def growth(rows: list[dict], ks: list[int]) -> dict[str, dict]:
    """Per method: value at the largest K over value at the smallest K."""
    lo, hi = min(ks), max(ks)
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        at = {r["K"]: r for r in rows if r["method"] == method}
        if lo in at and hi in at:
            out[method] = {f"{key}_ratio": ratio(at[hi].get(key), at[lo].get(key))
                           for key in ("peak_rss_bytes", "peak_rss_above_baseline_bytes", "resident_model_bytes",
                                       "peak_cuda_bytes") if at[lo].get(key) is not None}
            out[method]["K"] = [lo, hi]
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("peak_rss_bytes", "peak RSS (MiB)"), ("peak_rss_above_baseline_bytes", "peak RSS above baseline (MiB)"),
              ("resident_model_bytes", "resident model bytes (MiB)")]
    if any("peak_cuda_bytes" in r for r in rows):
        panels.append(("peak_cuda_bytes", "peak CUDA allocated (MiB)"))
    styles = ["o-", "s--", "^-.", "D-", "v:", "x-"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label) in zip(axes, panels):
        for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            pts = sorted((r["K"], r[key] / 2**20) for r in rows if r["method"] == method and r.get(key) is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[i % len(styles)], label=method, alpha=0.85)
        ax.set_xlabel("number of sources K")
        ax.set_ylabel(label)
        ax.set_xticks(sorted({r["K"] for r in rows}), [str(k) for k in sorted({r["K"] for r in rows})])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet at 32 px, K = 2 4 (under a minute)")
    p.add_argument("--model", default=None, help="model (default mobilevit-xxs; tiny-resnet with --quick)")
    p.add_argument("--image_size", type=int, default=None, help="pixels (default 64; 32 with --quick)")
    p.add_argument("--K", type=int, nargs="+", default=None, help="numbers of sources (default 2 4 8 16; 2 4 quick)")
    p.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--batch_size", type=int, default=None, help="default 32 (16 with --quick)")
    p.add_argument("--train_images", type=int, default=None,
                   help="target (and source) train images used: 2 batches (1 with --quick)")
    p.add_argument("--eval_images", type=int, default=None, help="val and test images used: 1 batch")
    p.add_argument("--noise", type=float, default=1e-3, help="std of the per-copy weight perturbation")
    p.add_argument("--repeats", type=int, default=1, help="processes per (method, K); the median is reported")
    p.add_argument("--epochs", type=int, default=None,
                   help="replaces every epoch count of the methods' settings (0: the merge phases alone)")
    p.add_argument("--data_root", default=None, help="an existing drifting-digits build at --image_size")
    args = p.parse_args(argv)
    args.model = args.model or ("tiny-resnet" if args.quick else "mobilevit-xxs")
    args.image_size = args.image_size or (32 if args.quick else 64)
    args.K = sorted(args.K or ([2, 4] if args.quick else [2, 4, 8, 16]))
    args.batch_size = args.batch_size or (16 if args.quick else 32)
    args.train_images = args.train_images or args.batch_size * (1 if args.quick else 2)
    args.eval_images = args.eval_images or args.batch_size
    os.environ.setdefault("TQDM_DISABLE", "1")
    setup(args)
    load_before = load_average()
    # Everything any method imports lazily is imported here, so no child is charged for an import.
    import peft  # noqa: F401  (PEARL)
    import torch  # noqa: F401

    import multisource.methods  # noqa: F401
    from multisource.data.datasets import get_dataset

    classes = list(get_dataset("drift_digits").classes)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        data_root = args.data_root or str(build_digits(Path(tmp) / "DriftDigits", args.image_size))
        checkpoints = run_forked(make_checkpoints, tmp, args.model, classes, args.image_size, max(args.K), args.noise)
        opts = {"data_root": data_root, "model": args.model, "image_size": args.image_size, "device": args.device,
                "batch_size": args.batch_size, "train_images": args.train_images, "eval_images": args.eval_images,
                "epochs": args.epochs}
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.repeats):
            for k in args.K:
                for method in args.methods:
                    row = run_forked(measure, method, k, checkpoints, opts, timeout=1800)
                    runs.setdefault((method, k), []).append(row)
                    print(f"  {method:>13} K={k:<2}  peak RSS {mib(row['peak_rss_bytes']):>7} MiB  (+"
                          f"{mib(row['peak_rss_above_baseline_bytes'])} above baseline)  models "
                          f"{row['max_models_resident']:>2} = {mib(row['resident_model_bytes'])} MiB  "
                          f"{row['time_s']} s", flush=True)
    rows = [_median_row(runs[(m, k)]) for m in args.methods for k in args.K]
    ratios = growth(rows, args.K)
    report = {
        "benchmark": "memory_vs_sources", "quick": args.quick, "model": args.model, "image_size": args.image_size,
        "device": args.device, "K": args.K, "methods": args.methods, "target": f"drift_digits/{TARGET}",
        "setup": {"sources": "copies of one random initialisation + N(0, noise^2) per weight", "noise": args.noise,
                  "batch_size": args.batch_size, "train_images": args.train_images, "eval_images": args.eval_images,
                  "epochs": "1 everywhere (see method_configs)" if args.epochs is None else args.epochs,
                  "method_configs": {m: RUNS[m][1] for m in args.methods},
                  "process": "one process per (method, K), forked after the imports, glibc's mmap threshold fixed "
                             "(common.steady_malloc: RSS follows live memory); median over repeats",
                  "repeats": args.repeats, "measured": "run_method(...) then predict on the target test images"},
        "rows": rows, "growth_largest_over_smallest_K": ratios,
        "phase_growth_in_models": phase_growth(rows, args.K),
        "wall_time_s": round(time.perf_counter() - t_start, 1), "machine": machine(load_before, args.device),
    }
    out_dir = Path(args.output_dir)
    path = write_report(out_dir, "memory_vs_sources", report)
    plot(rows, out_dir / "memory_vs_sources.png",
         f"{args.model} @ {args.image_size}px on {args.device}: memory vs number of sources")
    print()
    print_table([{"method": m, **{key: f"{v:.2f}" if isinstance(v, float) else v for key, v in r.items()}}
                 for m, r in ratios.items()],
                [("method", "method"), ("peak_rss_bytes_ratio", f"peak RSS K={max(args.K)}/K={min(args.K)}"),
                 ("peak_rss_above_baseline_bytes_ratio", "above-baseline ratio"),
                 ("resident_model_bytes_ratio", "resident-model ratio")])
    phases = report["phase_growth_in_models"]
    names = sorted({p for g in phases.values() for p in g})
    print(f"\nPer phase: peak RSS growth from K={min(args.K)} to K={max(args.K)}, in models (flat: near 0)")
    print_table([{"method": m, **{p: f"{g[p]:+.3f}" if p in g else "-" for p in names}} for m, g in phases.items()],
                [("method", "method")] + [(p, p) for p in names])
    print(f"Wrote {path} and {out_dir / 'memory_vs_sources.png'} "
          f"(load average {report['machine']['load_average_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TIES's merge phase with the trim over the whole model (the paper's rule, the default) against the trim per tensor
(PEFT's), side by side in one process (alternating, median of the repeats), as a ratio.

    python bench/ties_trim.py            # resnet18 sources, K = 6, 3 repeats
    python bench/ties_trim.py --quick    # tiny-resnet, K = 3, 2 repeats

The model-wide cut-off takes two streaming passes over each source's task vector before the merge (a magnitude
histogram, then the entries of the bin where the cut-off lies); the merge then compares with one number per
source instead of a top-k per tensor. Each trim is computed once per (source, tensor) in both modes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_merge_flags, load_average, machine, median, merge_setting, parser,  # noqa: E402
                    print_table, quiet_lightning, setup, shared_start_sources, write_report)


def main() -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet, K = 3, 2 repeats")
    add_merge_flags(p, repeats=3, quick_repeats=2, what="alternating repeats")
    p.add_argument("--density", type=float, default=0.2, help="TIES density (default 0.2, the paper's)")
    args = p.parse_args()
    model, k, repeats = merge_setting(args, repeats=3, quick_repeats=2)
    setup(args)
    quiet_lightning()
    load_before = load_average()
    import torch

    from multisource.measure.meter import Meter
    from multisource.methods.base import SourcePool
    from multisource.methods.merge import disjoint_mean
    from multisource.methods.task_vectors import MACS_PER_ENTRY, TiesConfig, merge_task_vectors, ties_trim

    with tempfile.TemporaryDirectory(prefix="bench_ties_") as tmp:
        setting = shared_start_sources(Path(tmp), model, k)
        paths, spec, classes = setting["paths"], setting["spec"], setting["classes"]

        def merge(trim: str) -> float:
            pool = SourcePool(paths, model=spec, classes=classes, image_size=32, device=torch.device("cpu"))
            meter, record = Meter("cpu"), {}
            prepare, find = ties_trim(TiesConfig(density=args.density, trim=trim), record, meter)
            t0 = time.perf_counter()
            merged, _, taus, _ = merge_task_vectors(pool, disjoint_mean, prepare, MACS_PER_ENTRY["ties"], meter, find)
            elapsed = time.perf_counter() - t0
            del merged, taus
            pool.release_all()
            return elapsed

        times: dict[str, list[float]] = {"trim per tensor": [], "trim over the model": []}
        for _ in range(repeats):
            times["trim per tensor"].append(merge("tensor"))
            times["trim over the model"].append(merge("model"))
    result = {name: {"median_s": median(ts), "times_s": ts} for name, ts in times.items()}
    base = result["trim per tensor"]["median_s"]
    rows = [{"what": name, "median s": f"{r['median_s']:.3f}", "vs per tensor": f"{r['median_s'] / base:.2f}x"}
            for name, r in result.items()]
    print(f"\nTIES merge phase, {model}, K = {k}, density {args.density}, {repeats} alternating repeats:")
    print_table(rows, [("what", "what"), ("median s", "median s"), ("vs per tensor", "vs per tensor")])
    report = {"quick": args.quick, "model": model, "K": k, "density": args.density, "repeats": repeats,
              "results": result, "ratio_model_vs_tensor": result["trim over the model"]["median_s"] / base,
              "machine": machine(load_before)}
    print(f"Wrote {write_report(args.output_dir, 'ties_trim', report)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())

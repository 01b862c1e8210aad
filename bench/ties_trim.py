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
from common import load_average, machine, median, parser, print_table, quiet_lightning, setup, write_report  # noqa: E402


def main() -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet, K = 3, 2 repeats")
    p.add_argument("--model", default=None, help="source architecture (default resnet18; tiny-resnet with --quick)")
    p.add_argument("--K", type=int, default=None, help="number of sources (default 6; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3; 2 with --quick)")
    p.add_argument("--density", type=float, default=0.2, help="TIES density (default 0.2, the paper's)")
    args = p.parse_args()
    model = args.model or ("tiny-resnet" if args.quick else "resnet18")
    k = args.K or (3 if args.quick else 6)
    repeats = args.repeats or (2 if args.quick else 3)
    setup(args)
    quiet_lightning()
    load_before = load_average()
    import torch

    from multisource.measure.meter import Meter
    from multisource.methods.base import SourcePool
    from multisource.methods.merge import disjoint_mean
    from multisource.methods.task_vectors import MACS_PER_ENTRY, TiesConfig, merge_task_vectors, ties_trim
    from multisource.models.checkpoint import save_checkpoint
    from multisource.models.factory import create_model, resolve_model

    classes = [str(d) for d in range(10)]
    spec = resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="bench_ties_") as tmp:
        torch.manual_seed(0)
        start = create_model(model, 10, image_size=32)
        start_path = save_checkpoint(Path(tmp) / "start.ckpt", start, model_name=spec.name, classes=classes,
                                     config={"image_size": 32})
        paths = {}
        for i in range(k):  # each source: the start moved by its own noise, as fine-tuning from it would
            g = torch.Generator().manual_seed(100 + i)
            net = create_model(model, 10, image_size=32)
            with torch.no_grad():
                for name, v in net.state_dict().items():
                    if torch.is_floating_point(v):
                        v.copy_(start.state_dict()[name] + 0.01 * torch.randn(v.shape, generator=g))
            paths[f"s{i}"] = save_checkpoint(Path(tmp) / f"s{i}.ckpt", net, model_name=spec.name, classes=classes,
                                             config={"image_size": 32, "pretrained": True,
                                                     "pretrained_from": str(start_path)})
        del net, start

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

"""What releasing a source model costs, and FUSION's streaming merge with and without a full garbage collection
per release, side by side in one process (alternating, median of the repeats).

    python bench/release_cost.py            # resnet18 sources, K = 6, 5 repeats
    python bench/release_cost.py --quick    # tiny-resnet, K = 3, 2 repeats

SourcePool.release used to call gc.collect() after every release; the models hold no reference cycles (see
tests/test_merging.py), so dropping the last reference frees them at once. The process has imported what a
sweep worker imports (torch, Lightning, timm, PEFT, the package), which is what makes a full collection slow.
With ``fusion-bench`` installed (an optional benchmark dependency, not in requirements.txt: ``pip install
fusion-bench``), its functional ``simple_average`` over the same K models (loaded by the same loader; it needs
all K at once) is timed beside them, loading included as in ours.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_merge_flags, load_average, machine, median, merge_setting, parser,  # noqa: E402
                    print_table, quiet_lightning, setup, write_report)


def main() -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet, K = 3, 2 repeats")
    add_merge_flags(p, repeats=5, quick_repeats=2, what="alternating repeats")
    args = p.parse_args()
    model, k, repeats = merge_setting(args, repeats=5, quick_repeats=2)
    setup(args)
    quiet_lightning()
    load_before = load_average()
    import peft  # noqa: F401  (what a worker has imported)
    import timm  # noqa: F401
    import torch

    import multisource.methods  # noqa: F401
    from multisource.methods.fusion import average_streaming
    from multisource.methods.base import SourcePool
    from multisource.models.checkpoint import save_checkpoint
    from multisource.models.factory import create_model, load_checkpoint, resolve_model

    try:
        from fusion_bench.method.simple_average import simple_average
    except ImportError:  # optional: pip install fusion-bench
        simple_average = None
    classes = [str(d) for d in range(10)]
    with tempfile.TemporaryDirectory(prefix="bench_release_") as tmp:
        torch.manual_seed(0)
        paths = {}
        for i in range(k):
            net = create_model(model, 10, image_size=32)
            paths[f"s{i}"] = save_checkpoint(Path(tmp) / f"s{i}.ckpt", net, model_name=resolve_model(model).name,
                                             classes=classes, config={"image_size": 32})
        del net

        def pool(collect: bool) -> SourcePool:
            p = SourcePool(paths, model=resolve_model(model), classes=classes, image_size=32, device=torch.device("cpu"))
            p.collect_garbage = collect
            return p

        def merge(collect: bool) -> float:
            t0 = time.perf_counter()
            merged, _ = average_streaming(pool(collect))
            elapsed = time.perf_counter() - t0
            del merged
            return elapsed

        def fusionbench() -> float:
            t0 = time.perf_counter()
            # Its functional average takes them all at once, and raises on integer buffers (BatchNorm's
            # num_batches_tracked: "result type Float can't be cast to ... Long"), so it gets float tensors only.
            models = [{k: v for k, v in load_checkpoint(p)[0].state_dict().items() if v.is_floating_point()}
                      for p in paths.values()]
            merged = simple_average(models)
            elapsed = time.perf_counter() - t0
            del merged, models
            return elapsed

        def collect_once() -> float:
            t0 = time.perf_counter()
            gc.collect()
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {"merge without gc": [], "merge with gc per release": [],
                                         "one gc.collect()": []}
        if simple_average is not None:
            times["fusion-bench simple_average"] = []
        for _ in range(repeats):
            times["merge without gc"].append(merge(False))
            times["merge with gc per release"].append(merge(True))
            times["one gc.collect()"].append(collect_once())
            if simple_average is not None:
                times["fusion-bench simple_average"].append(fusionbench())
    result = {name: {"median_s": median(ts), "times_s": ts} for name, ts in times.items()}
    base = result["merge without gc"]["median_s"]
    rows = [{"what": name, "median s": f"{r['median_s']:.3f}", "vs merge without gc": f"{r['median_s'] / base:.2f}x"}
            for name, r in result.items()]
    print(f"\n{model}, K = {k} sources (each released once during the merge), {repeats} alternating repeats:")
    print_table(rows, [("what", "what"), ("median s", "median s"), ("vs merge without gc", "vs merge without gc")])
    report = {"quick": args.quick, "model": model, "K": k, "repeats": repeats, "results": result,
              "fusion_bench": simple_average is not None,
              "fusion_bench_note": "simple_average over float state dicts: given modules or full state dicts it "
                                   "raises on integer buffers (fusion-bench 0.2.33)",
              "machine": machine(load_before)}
    print(f"Wrote {write_report(args.output_dir, 'release_cost', report)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())

"""The merge phase of our merges next to FusionBench's equivalents on the same checkpoints, in one run, as ratios:
time and peak memory, each cell in a fresh forked process (alternating, median of the repeats), plus how far the
merged models are apart where the two compute the same rule.

    pip install --target /tmp/fb fusion-bench==0.2.33 --no-deps omegaconf hydra-core bidict antlr4-python3-runtime==4.9.3
    PYTHONPATH=/tmp/fb python bench/merge_vs_fusionbench.py            # resnet18, K = 6, 3 repeats
    PYTHONPATH=/tmp/fb python bench/merge_vs_fusionbench.py --quick    # tiny-resnet, K = 3, 1 repeat

FusionBench is not a dependency: install it beside the project for this run only (without its dependencies, so
it uses the project's torch). Without it the script measures our side alone and says so.

The merge phase is what turns K checkpoints on disk into the merged model at one scaling lambda: loading
included on both sides (ours reads each checkpoint memory-mapped, tensor by tensor; FusionBench's functions take
the K models loaded, by our loader), no lambda search, no fine-tuning. Pairs:

* uniform average: FUSION's running mean / ``simple_average`` (float tensors: it raises on integer buffers);
* task arithmetic: ours / ``task_arithmetic_merge`` (lambda 0.3);
* TIES: ours with ``--trim model`` / ``TiesMergingAlgorithm`` (density 0.2 = threshold 20, ``merge_func`` mean,
  lambda 1; heads and buffers in ``remove_keys``, as ours merges only the shared start's parameters that way);
* DARE + task arithmetic: ours / ``DareTaskArithmetic`` (drop rate 0.5, lambda 0.3; different random masks).

Sources are the shared start moved by their own noise, as fine-tuning from it would. Agreement, over the
task-vector parameters (heads excluded: ours averages them, as each source trained its own): the largest absolute
difference and the entries more than 1e-6 apart. For TIES it is taken against FusionBench's ``ties_merging``
function on those entries (its algorithm trims over every float entry, heads and BatchNorm statistics included).
FusionBench's ``topk_values_mask`` keeps ``int(n * density) + 1`` entries of each task vector (the k-th smallest
with k = n - int(n * density), kept with everything above it), one more than ours and PEFT's ``int(n * density)``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_merge_flags, load_average, machine, median, merge_setting, parser,  # noqa: E402
                    print_table, quiet_lightning, run_forked, setup, shared_start_sources, steady_malloc, write_report)

LAMBDA = {"average": 1.0, "task_arithmetic": 0.3, "ties": 1.0, "dare": 0.3}
DENSITY, DROP_RATE = 0.2, 0.5


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _ours(method: str, setting: dict):
    """Our merge phase: the merged model at ``LAMBDA[method]``, read from the checkpoints."""
    import torch

    from multisource.measure.meter import Meter
    from multisource.methods.base import SourcePool
    from multisource.methods.fusion import average_streaming
    from multisource.methods.merge import dare_drop, disjoint_mean, task_vector_sum
    from multisource.methods.task_vectors import MACS_PER_ENTRY, TiesConfig, merge_task_vectors, set_scale, ties_trim
    from multisource.models.factory import resolve_model

    pool = SourcePool(setting["paths"], model=resolve_model(setting["model"]), classes=setting["classes"],
                      image_size=32, device=torch.device("cpu"))
    if method == "average":
        return average_streaming(pool)[0]
    meter, record, find = Meter("cpu"), {}, None
    if method == "ties":
        prepare, find = ties_trim(TiesConfig(density=DENSITY, trim="model"), record, meter)
        combine, macs = disjoint_mean, MACS_PER_ENTRY["ties"]
    elif method == "dare":
        prepare = lambda tau, k, name: dare_drop(tau, 1.0 - DROP_RATE, 1000 * k + len(name))  # noqa: E731
        combine, macs = task_vector_sum, MACS_PER_ENTRY["sum"]
    else:
        prepare, combine, macs = (lambda tau, k, name: tau), task_vector_sum, MACS_PER_ENTRY["sum"]
    model, start, taus, _ = merge_task_vectors(pool, combine, prepare, macs, meter, find)
    set_scale(model, start, taus, LAMBDA[method])
    return model


def load_model(path: str):
    """FusionBench's model pool instantiates this by name (``_target_``) when an algorithm asks for a model."""
    from multisource.models.factory import load_checkpoint

    return load_checkpoint(path)[0]


def _fusionbench(method: str, setting: dict):
    """FusionBench's algorithm over a model pool that loads each checkpoint when the algorithm asks for it (by our
    loader), so each algorithm holds what it chooses to hold."""
    import torch
    from fusion_bench.method.dare.task_arithmetic import DareTaskArithmetic
    from fusion_bench.method.simple_average import SimpleAverageAlgorithm
    from fusion_bench.method.task_arithmetic.task_arithmetic import TaskArithmeticAlgorithm
    from fusion_bench.method.ties_merging.ties_merging import TiesMergingAlgorithm
    from fusion_bench.modelpool import BaseModelPool
    from omegaconf import DictConfig

    lazy = lambda path: DictConfig({"_target_": "merge_vs_fusionbench.load_model", "path": str(path)})  # noqa: E731
    sources = {name: lazy(path) for name, path in setting["paths"].items()}
    if method == "average":
        return SimpleAverageAlgorithm().run(BaseModelPool(sources))
    pool = BaseModelPool({"_pretrained_": lazy(setting["start"]), **sources})
    if method == "task_arithmetic":
        return TaskArithmeticAlgorithm(scaling_factor=LAMBDA[method]).run(pool)
    if method == "ties":
        # remove_keys=[]: with heads and buffers removed it returns a state dict without them, which a model with
        # buffers refuses to load (0.2.33); so it trims and elects over every float entry (see ties_rule)
        return TiesMergingAlgorithm(scaling_factor=LAMBDA[method], threshold=DENSITY * 100, remove_keys=[],
                                    merge_func="mean").run(pool)
    torch.manual_seed(0)
    return DareTaskArithmetic(scaling_factor=LAMBDA[method], sparsity_ratio=DROP_RATE,
                              only_on_linear_weights=False).run(pool)


def ties_rule(setting: dict) -> dict:
    """FusionBench's TIES functions (``ties_merging`` over the flattened task vectors) on the entries ours merges
    that way, the shared start's parameters outside the head: the rule's agreement, apart from the algorithm."""
    from fusion_bench.method.ties_merging.ties_merging_utils import (state_dict_to_vector, ties_merging,
                                                                     vector_to_state_dict)

    from multisource.models.factory import load_checkpoint

    def flat(path):
        state = load_checkpoint(path)[0].state_dict()
        return state_dict_to_vector({k: state[k] for k in setting["vectors"]})

    start = load_checkpoint(setting["start"])[0].state_dict()
    start = {k: start[k] for k in setting["vectors"]}
    flat_start = state_dict_to_vector(start)
    merged = ties_merging(torch_stack([flat(p) - flat_start for p in setting["paths"].values()]),
                          reset_thresh=DENSITY * 100, merge_func="mean")
    return vector_to_state_dict(flat_start + LAMBDA["ties"] * merged, start)


def torch_stack(vectors: list):
    import torch

    return torch.vstack(vectors)


def measure(side: str, method: str, setting: dict, keep: bool) -> dict:
    """One cell in its own process: seconds and peak RSS above the process's start, and the merged tensors when
    ``keep``."""
    steady_malloc()
    start = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    if side == "fusionbench":  # its algorithms print banners and profiles on stdout
        sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    began = time.perf_counter()
    merged = (_ours if side == "ours" else _fusionbench)(method, setting)
    seconds = time.perf_counter() - began
    peak = _status("VmHWM") - start
    if keep and side == "fusionbench" and method == "ties":  # after the peak: the rule alone, for the agreement
        merged = ties_rule(setting)
    state = merged if isinstance(merged, dict) else merged.state_dict()
    # as numpy arrays: torch tensors would cross the pipe as shared memory that dies with this process
    vectors = {k: v.detach().numpy().copy() for k, v in state.items() if k in setting["vectors"]} if keep else None
    return {"seconds": seconds, "peak_bytes": peak, "vectors": vectors}


def main() -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet, K = 3, 1 repeat")
    add_merge_flags(p, repeats=3, quick_repeats=1, what="processes per cell")
    args = p.parse_args()
    model, k, repeats = merge_setting(args, repeats=3, quick_repeats=1)
    setup(args)
    quiet_lightning()
    load_before = load_average()
    import torch

    import multisource.methods  # noqa: F401  (imported before forking, so no cell is charged for it)
    from multisource.models.factory import load_checkpoint  # noqa: F401
    try:
        import fusion_bench.method.dare.task_arithmetic  # noqa: F401
        import fusion_bench.method.ties_merging.ties_merging  # noqa: F401
        from importlib.metadata import version
        fusion_bench = version("fusion-bench")
    except ImportError:
        fusion_bench = None
        print("fusion-bench is not installed: measuring our side only (see the docstring to install it).")
    sides = ("ours", "fusionbench") if fusion_bench else ("ours",)
    with tempfile.TemporaryDirectory(prefix="bench_merge_fb_") as tmp:
        setting = shared_start_sources(Path(tmp), model, k)
        cells: dict[tuple[str, str], list[dict]] = {(s, m): [] for m in LAMBDA for s in sides}
        for repeat in range(repeats):  # alternating, so a busy spell of the machine falls on both sides
            for key in cells:
                cells[key].append(run_forked(measure, *key, setting, repeat == 0))
    mb = setting["model_bytes"]
    rows, report_rows = [], []
    for method in LAMBDA:
        ours = cells[("ours", method)]
        row = {"method": method, "ours_s": median(r["seconds"] for r in ours),
               "ours_peak_models": median(r["peak_bytes"] for r in ours) / mb}
        if fusion_bench:
            theirs = cells[("fusionbench", method)]
            row.update(fusionbench_s=median(r["seconds"] for r in theirs),
                       fusionbench_peak_models=median(r["peak_bytes"] for r in theirs) / mb)
            row.update(time_ratio=row["ours_s"] / row["fusionbench_s"],
                       peak_ratio=row["ours_peak_models"] / row["fusionbench_peak_models"])
            a, b = ours[0]["vectors"], theirs[0]["vectors"]
            if method != "dare":  # DARE: different random masks by design
                row["max_abs_difference"] = max(float(abs(a[n] - b[n]).max()) for n in setting["vectors"])
                row["entries_differing"] = sum(int((abs(a[n] - b[n]) > 1e-6).sum()) for n in setting["vectors"])
                row["entries"] = sum(a[n].size for n in setting["vectors"])
        report_rows.append(row)
        rows.append({"method": method, "ours_s": f"{row['ours_s']:.3f}", "ours_peak": f"{row['ours_peak_models']:.2f}",
                     **({"fb_s": f"{row['fusionbench_s']:.3f}", "fb_peak": f"{row['fusionbench_peak_models']:.2f}",
                         "time": f"{row['time_ratio']:.2f}x", "peak": f"{row['peak_ratio']:.2f}x",
                         "diff": f"{row['max_abs_difference']:.1e}" if "entries" in row else "-",
                         "differing": f"{row['entries_differing']}/{row['entries']}" if "entries" in row else "-"}
                        if fusion_bench else {})})
    print(f"\nMerge phase, {model} ({mb / 2**20:.1f} MiB), K = {k}, median of {repeats} processes per cell "
          f"(peaks in model sizes above the process's start; ratios ours / fusion-bench {fusion_bench or '-'}):")
    columns = [("method", "method"), ("ours_s", "ours s"), ("ours_peak", "ours peak")]
    if fusion_bench:
        columns += [("fb_s", "fusion-bench s"), ("fb_peak", "fusion-bench peak"), ("time", "time ratio"),
                    ("peak", "peak ratio"), ("diff", "max |ours - fb|"),
                    ("differing", "entries > 1e-6 apart")]
    print_table(rows, columns)
    report = {"quick": args.quick, "model": model, "K": k, "repeats": repeats, "model_mib": mb / 2**20,
              "fusion_bench": fusion_bench, "lambdas": LAMBDA, "ties_density": DENSITY, "dare_drop_rate": DROP_RATE,
              "rows": report_rows, "torch": torch.__version__, "machine": machine(load_before)}
    print(f"Wrote {write_report(args.output_dir, 'merge_vs_fusionbench', report)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())

"""GRASP's alignment phase: peak memory and time of the per-tensor gradient cosines in 1, 2 and 4 passes (the
default) against the first implementation (flattened copies of both models' gradients), side by side, each in a
fresh forked process.

    python bench/grasp_alignment.py            # resnet50 (ResNet-50-size) at 32 and 64 px, batch 32, 3 repeats
    python bench/grasp_alignment.py --quick    # tiny-resnet at 32 px, 1 repeat

Both models are built and one alignment is run first, as GRASP's fine-tuning runs before its first alignment
(the one-time allocations of the first backward, about 0.4 model sizes, are not the phase's); the figure is the
phase's peak RSS, the two resident models included, in model sizes (parameters + buffers). Each pass holds the
current model's gradients for its share of the tensors (methods/grasp.py ``alignment_scores``); the source's are
consumed as they are accumulated. One forward's activations come on top whatever the passes: they grow with the
image's pixels and the batch, not with the model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, median, parser, print_table, run_forked, setup, write_report  # noqa: E402


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def flattened_copies(current, source, batches):
    """The previous implementation: both models' gradients, flattened and copied, then per-tensor cosines."""
    import torch

    def grads(model):
        model.train()
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            torch.nn.functional.cross_entropy(model(x), y).backward()
        out = {n: p.grad.detach().flatten().clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    g_cur, g_src = grads(current), grads(source)
    return {n: float(g_src[n].double() @ g_cur[n].double()) / max(float(g_src[n].norm() * g_cur[n].norm()), 1e-30)
            for n in g_cur}


def measure(variant: str, model_name: str, image_size: int, batch: int) -> dict:
    import time

    import torch

    from multisource.methods.grasp import alignment_scores
    from multisource.models.factory import create_model

    torch.manual_seed(0)
    current, source = (create_model(model_name, 10, image_size=image_size) for _ in range(2))
    model_bytes = sum(t.numel() * t.element_size() for t in list(current.parameters()) + list(current.buffers()))
    batches = [(torch.randn(batch, 3, image_size, image_size), torch.randint(0, 10, (batch,)))]

    def align():
        if variant == "previous":
            return flattened_copies(current, source, batches)
        return alignment_scores(current, source, batches, torch.device("cpu"), "32", eval_mode=False,
                                passes=int(variant))

    align()  # GRASP's fine-tuning has run forward and backward passes before its first alignment
    start = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    began = time.perf_counter()
    scores = align()
    seconds = time.perf_counter() - began
    above = _status("VmHWM") - start
    return {"variant": variant, "peak_above_two_models_bytes": above, "model_bytes": model_bytes,
            "phase_in_model_sizes": 2 + above / model_bytes, "seconds": seconds,
            "score_sum": sum(scores.values()), "tensors": len(scores)}


VARIANTS = {"previous": "previous (flattened copies)", "1": "1 pass", "2": "2 passes", "4": "4 passes (default)"}


def main() -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet at 32 px, 1 repeat")
    p.add_argument("--model", default=None, help="default resnet50 (tiny-resnet with --quick)")
    p.add_argument("--image_sizes", type=int, nargs="+", default=None, help="default 32 64 (32 with --quick)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None, help="processes per variant (default 3; 1 quick)")
    args = p.parse_args()
    model = args.model or ("tiny-resnet" if args.quick else "resnet50")
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = args.image_sizes or ([32] if args.quick else [32, 64])
    setup(args)
    load_before = load_average()
    import multisource.methods  # noqa: F401  (imported before forking, so no child is charged for it)
    from multisource.models.factory import create_model  # noqa: F401

    by_size = {}
    for size in sizes:
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS.values()}
        for _ in range(repeats):  # alternating, so a busy spell of the machine falls on every variant
            for variant, name in VARIANTS.items():
                runs[name].append(run_forked(measure, variant, model, size, args.batch_size))
        lean = [r["score_sum"] for name, rs in runs.items() if name != VARIANTS["previous"] for r in rs]
        if max(lean) != min(lean):
            raise RuntimeError(f"the passes gave different scores at {size} px: {sorted(set(lean))}")
        base = median(r["seconds"] for r in runs[VARIANTS["1"]])
        by_size[size] = {name: {"phase_in_model_sizes": median(r["phase_in_model_sizes"] for r in rs),
                                "above_two_models_mib": median(r["peak_above_two_models_bytes"] for r in rs) / 2**20,
                                "seconds": median(r["seconds"] for r in rs),
                                "time_vs_1_pass": median(r["seconds"] for r in rs) / base, "runs": rs}
                         for name, rs in runs.items()}
    mib = next(iter(by_size.values()))[VARIANTS["1"]]["runs"][0]["model_bytes"] / 2**20
    print(f"\n{model} ({mib:.1f} MiB), batch {args.batch_size}: alignment phase peak, two models included")
    print_table([{"px": size, "variant": name, "sizes": f"{v['phase_in_model_sizes']:.2f}",
                  "MiB": f"{v['above_two_models_mib']:.0f}", "time": f"{v['time_vs_1_pass']:.2f}"}
                 for size, rows in by_size.items() for name, v in rows.items()],
                [("px", "px"), ("variant", "variant"), ("sizes", "model sizes"), ("MiB", "MiB above 2 models"),
                 ("time", "time / 1 pass")])
    report = {"quick": args.quick, "model": model, "model_mib": mib, "batch_size": args.batch_size,
              "repeats": repeats, "by_image_size": {str(k): v for k, v in by_size.items()},
              "machine": machine(load_before)}
    print(f"Wrote {write_report(args.output_dir, 'grasp_alignment', report)}")
    return 0


if __name__ == "__main__":
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # read by glibc at start-up: set it, then start again
        # Tensors from malloc's mmap go back to the OS when freed, so RSS counts what is held, not heap leftovers.
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get(
                      "OMP_NUM_THREADS", "1")})
    raise SystemExit(main())

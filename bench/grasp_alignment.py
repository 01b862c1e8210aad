"""GRASP's alignment phase: peak memory of the lean per-tensor cosine against the previous implementation
(flattened copies of both models' gradients), side by side, each in a fresh forked process.

    python bench/grasp_alignment.py            # resnet50 (ResNet-50-size) at 32 px, batch 32, 3 repeats
    python bench/grasp_alignment.py --quick    # tiny-resnet, 1 repeat

Both models are built first; the figure is the peak RSS during the alignment above the RSS with both models
resident, in model sizes (parameters + buffers). The lean version keeps the current model's gradients in
``.grad`` and consumes the source's as they are accumulated (methods/grasp.py ``alignment_scores``); the
previous one (kept here as the reference) held both gradients and a flattened copy of each. Activations of
the alignment batch come on top of either (they grow with image size and batch, not with the model count).
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
    import torch

    from multisource.methods.grasp import alignment_scores
    from multisource.models.factory import create_model

    torch.manual_seed(0)
    current, source = (create_model(model_name, 10, image_size=image_size) for _ in range(2))
    model_bytes = sum(t.numel() * t.element_size() for t in list(current.parameters()) + list(current.buffers()))
    batches = [(torch.randn(batch, 3, image_size, image_size), torch.randint(0, 10, (batch,)))]
    start = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    if variant == "lean":
        scores = alignment_scores(current, source, batches, torch.device("cpu"), "32", eval_mode=False)
    else:
        scores = flattened_copies(current, source, batches)
    above = _status("VmHWM") - start
    return {"variant": variant, "peak_above_two_models_bytes": above, "model_bytes": model_bytes,
            "peak_above_two_models_in_model_sizes": above / model_bytes, "tensors": len(scores)}


def main() -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet, 1 repeat")
    p.add_argument("--model", default=None, help="default resnet50 (tiny-resnet with --quick)")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None, help="processes per variant (default 3; 1 quick)")
    args = p.parse_args()
    model = args.model or ("tiny-resnet" if args.quick else "resnet50")
    repeats = args.repeats or (1 if args.quick else 3)
    setup(args)
    load_before = load_average()
    import multisource.methods  # noqa: F401  (imported before forking, so no child is charged for it)
    from multisource.models.factory import create_model  # noqa: F401

    runs: dict[str, list[dict]] = {"previous (flattened copies)": [], "lean": []}
    for _ in range(repeats):
        for variant, name in (("previous", "previous (flattened copies)"), ("lean", "lean")):
            runs[name].append(run_forked(measure, variant, model, args.image_size, args.batch_size))
    rows = {name: {"median_in_model_sizes": median(r["peak_above_two_models_in_model_sizes"] for r in rs),
                   "median_mib": median(r["peak_above_two_models_bytes"] for r in rs) / 2**20, "runs": rs}
            for name, rs in runs.items()}
    mib = runs["lean"][0]["model_bytes"] / 2**20
    print(f"\n{model} ({mib:.1f} MiB) at {args.image_size} px, batch {args.batch_size}: alignment peak above the two "
          "resident models")
    print_table([{"variant": k, "MiB": f"{v['median_mib']:.0f}", "model sizes": f"{v['median_in_model_sizes']:.2f}"}
                 for k, v in rows.items()], [("variant", "variant"), ("MiB", "MiB"), ("model sizes", "model sizes")])
    report = {"quick": args.quick, "model": model, "model_mib": mib, "image_size": args.image_size,
              "batch_size": args.batch_size, "repeats": repeats, "variants": rows, "machine": machine(load_before)}
    print(f"Wrote {write_report(args.output_dir, 'grasp_alignment', report)}")
    return 0


if __name__ == "__main__":
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # read by glibc at start-up: set it, then start again
        # Tensors from malloc's mmap go back to the OS when freed, so RSS counts what is held, not heap leftovers.
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get(
                      "OMP_NUM_THREADS", "1")})
    raise SystemExit(main())

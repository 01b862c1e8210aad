"""The GPU check: one prepared run that records what a GPU changes, in bench/results/gpu_check.json.

    python bench/gpu_check.py                       # on a GPU machine: under 8 minutes on one GPU
    python bench/gpu_check.py --device cpu --quick  # the same steps, small, on CPU (what the tests run)

Steps, each the project's own benchmark or command in a fresh process (so one failing step is recorded and the
others still run), with its wall time and its JSON report folded into this one:

1. memory vs K (2, 4, 8) for every method, ResNet-50 at 224 px: the CUDA allocator's per-phase peak and NVML
   (``memory_vs_sources.py --device cuda``);
2. training throughput of the source trainer (Lightning) and the fine-tuning loop against a plain loop, in
   16-mixed and bf16-mixed (``throughput.py --precision ...``);
3. the loader's images/s (``data_loading.py``: image folders vs the packed cache, decoded on the CPU cores
   that feed the GPU);
4. one short GRASP experiment end to end: build the drifting digits, train three source models, run GRASP on
   the third era with the other two (``drift_digits_preprocessing.py``, ``train_all_subsets.py``,
   ``run_grasp_experiment.py``).

Without a GPU, ``--device cuda`` (the default) writes ``{"skipped": true, ...}`` and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, parser, write_report  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PAPER_METHODS = ["ensemble", "fusion", "fusion-logits", "grasp", "pearl", "task_arithmetic", "ties", "dare", "soup"]


def steps(device: str, quick: bool, work: Path) -> list[tuple[str, list[str], Path | None]]:
    """(name, command, JSON it writes) for every step, sized for a GPU or, with ``quick``, for a CPU test."""
    py = sys.executable
    mem = ["--model", "tiny-resnet", "--image_size", "32", "--K", "2", "--methods", "fusion", "grasp",
           "task_arithmetic", "--quick"] if quick else ["--model", "resnet50", "--image_size", "224", "--K", "2", "4",
                                                        "8", "--methods", *PAPER_METHODS]
    precisions = ["32"] if device == "cpu" else ["16-mixed", "bf16-mixed"]
    out = [("memory_vs_k", [py, str(BENCH / "memory_vs_sources.py"), "--device", device, "--output_dir",
                            str(work / "memory"), *mem], work / "memory" / "memory_vs_sources.json")]
    for precision in precisions:
        out.append((f"throughput_{precision}", [py, str(BENCH / "throughput.py"), "--device", device, "--precision",
                                                precision, "--output_dir", str(work / precision),
                                                *(["--quick"] if quick else [])],
                    work / precision / "throughput.json"))
    out.append(("loader", [py, str(BENCH / "data_loading.py"), "--output", str(work / "data_loading.json"),
                           *(["--quick"] if quick else [])], work / "data_loading.json"))
    data, results = work / "DriftDigits", work / "results"
    run = ["--data_root", str(data), "--results_dir", str(results), "--device", device]
    epochs = ["--max_epochs", "1"] if quick else ["--max_epochs", "5"]
    out += [("grasp_data", [py, str(ROOT / "preprocessing" / "drift_digits_preprocessing.py"), "--output_dir",
                            str(data), "--train_renders", "1", "--eval_renders", "1"], None),
            ("grasp_sources", [py, str(ROOT / "baseline_training" / "train_all_subsets.py"), "--dataset",
                               "drift_digits", "--model_name", "tiny-resnet", "--bins", "era_1", "era_2", "era_3",
                               "--learning_rate", "1e-3", *epochs, *run], None),
            ("grasp_experiment", [py, str(ROOT / "experiments" / "grasp" / "run_grasp_experiment.py"), "--dataset",
                                  "drift_digits", "--target", "era_3", "--sources", "era_1", "era_2", "--model",
                                  "tiny-resnet", "--initial_epochs", "1", "--finetune_epochs", "1",
                                  "--learning_rate", "1e-3", *run],
             results / "drift_digits" / "tiny-resnet" / "grasp" / "era_3" / "trial_1" / "metrics.json")]
    return out


def run_step(name: str, cmd: list[str], report: Path | None, timeout: float) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        ok, tail = proc.returncode == 0, (proc.stdout[-1500:] + proc.stderr[-1500:])
    except subprocess.TimeoutExpired:
        ok, tail = False, f"timed out after {timeout:.0f} s"
    entry = {"ok": ok, "time_s": round(time.perf_counter() - t0, 1), "command": " ".join(cmd[1:])}
    if not ok:
        entry["output_tail"] = tail
    elif report is not None and report.is_file():
        entry["report"] = json.loads(report.read_text(encoding="utf-8"))
    print(f"  {name:<22} {'ok' if ok else 'FAILED'}  {entry['time_s']:.0f} s", flush=True)
    return entry


def gpu_name(device: str) -> str | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name()


def main() -> int:
    p = parser(__doc__.split("\n")[0], "small models and data (tests: --device cpu --quick)")
    p.set_defaults(device="cuda")
    p.add_argument("--step_timeout", type=float, default=None, help="seconds per step (default 240; 180 quick)")
    args = p.parse_args()
    out_dir = Path(args.output_dir)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            reason = "no CUDA device on this machine"
            path = write_report(out_dir, "gpu_check", {"skipped": True, "reason": reason, "quick": args.quick})
            print(f"GPU check skipped: {reason}. Run it on a GPU machine, or test it with --device cpu --quick. "
                  f"Wrote {path}")
            return 0
    load_before = load_average()
    t0 = time.perf_counter()
    print(f"GPU check on {args.device}{' (quick)' if args.quick else ''}:")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        # the memory step runs 27 processes on a GPU (9 methods x 3 K): the longest
        results = {name: run_step(name, cmd, report, args.step_timeout or (180 if args.quick else
                                                                           300 if name == "memory_vs_k" else 150))
                   for name, cmd, report in steps(args.device, args.quick, Path(tmp))}
    report = {"skipped": False, "quick": args.quick, "device": args.device, "gpu": gpu_name(args.device),
              "ok": all(r["ok"] for r in results.values()), "steps": results,
              "wall_time_s": round(time.perf_counter() - t0, 1), "machine": machine(load_before, args.device)}
    path = write_report(out_dir, "gpu_check", report)
    print(f"{'All steps ran' if report['ok'] else 'Some steps FAILED'} in {report['wall_time_s']:.0f} s. Wrote {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

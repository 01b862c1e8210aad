"""Helpers shared by the bench scripts: arguments, machine record, tables, forked measurements, tiny data.

Benchmarks report figures and ratios; they do not assert. Every report records the machine and the load
average before and after the run, because this project's machines are shared and timings move with load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parser(description: str, quick_help: str) -> argparse.ArgumentParser:
    """The flags every bench script shares: --quick, --output_dir, --threads, --device."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--output_dir", default=str(RESULTS_DIR),
                   help=f"where the JSON (and PNG) go (default {RESULTS_DIR}; tests pass a temporary folder)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: steadier timings on a small shared CPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where models run (default cpu)")
    return p


def setup(args: argparse.Namespace) -> None:
    """Thread count, quiet progress bars and offline hubs, before the heavy imports run any work."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available; use --device cpu.")


def steady_malloc(threshold: int = 256 * 1024) -> bool:
    """Make the process's RSS follow its live memory: glibc serves allocations above ``threshold`` with their own
    mappings, returned to the system when freed. By default the threshold grows with the largest block freed, so
    model-sized tensors end up in the heap and a freed one may stay resident or not, depending on fragmentation:
    a phase's peak RSS then varied by 10-75 MiB between two identical runs here (resnet18 at 32 px). Call it in
    each measuring process before it allocates; False off glibc (nothing changed)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, threshold) and libc.mallopt(-1, threshold))  # M_MMAP_ / M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def quiet_lightning() -> None:
    """Lightning sets its loggers to INFO when imported: import it first, then keep only errors."""
    import logging
    import warnings

    import lightning  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning\..*")


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine(load_before: Sequence[float], device: str = "cpu") -> dict[str, Any]:
    """Where the figures were measured: CPU count, load averages (1/5/15 min) before and after, versions."""
    import torch

    from multisource.utils.env import environment

    env = environment(device)
    info: dict[str, Any] = {
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
        "python": sys.version.split()[0], "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_before": list(load_before), "load_average_after": load_average(),
        "git_commit": env.get("git_commit"), "packages": env.get("packages"),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> None:
    """``columns``: (key, header) pairs; values are printed as they are (format them before)."""
    cells = [[str(r.get(k, "-")) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def write_report(output_dir: str | Path, name: str, report: dict) -> Path:
    from multisource.utils.io import write_json

    path = Path(output_dir) / f"{name}.json"
    write_json(path, report)
    return path


def _child(fn: Callable, args: tuple, conn) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:  # report any failure to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_forked(fn: Callable, *args: Any, timeout: float | None = None) -> Any:
    """``fn(*args)`` in a fresh forked process; returns its (picklable) result.

    A process's peak RSS never goes down, so each memory measurement needs its own process. Forking from
    a parent that has only imported the libraries gives every child the same starting point without paying
    the imports again (tens of seconds on a loaded machine) as a spawned interpreter would.
    """
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, child))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish within {timeout} s")
        status, value = parent.recv()
    except EOFError as exc:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} died without a result "
                           f"(exit code {proc.exitcode})") from exc
    finally:
        proc.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}{args[:2]} failed in its process:\n{value}")
    return value


def build_digits(root: Path, image_size: int, renders: int = 1) -> Path:
    """Drifting digits (SPEC 2.4) at ``image_size`` with ``renders`` renders per train instance."""
    from multisource.data.build.drift_digits import DriftDigitsConfig, build_drift_digits

    build_drift_digits(root, DriftDigitsConfig(image_size=image_size, train_renders=renders, eval_renders=1))
    return root


def add_merge_flags(p: argparse.ArgumentParser, repeats: int, quick_repeats: int, what: str) -> None:
    """--model, --K and --repeats of the merge benches (resnet18 and K = 6 by default; tiny-resnet and K = 3
    with --quick); ``what`` says what a repeat is."""
    p.add_argument("--model", default=None, help="source architecture (default resnet18; tiny-resnet with --quick)")
    p.add_argument("--K", type=int, default=None, help="number of sources (default 6; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"{what} (default {repeats}; {quick_repeats} with --quick)")


def merge_setting(args: argparse.Namespace, repeats: int, quick_repeats: int) -> tuple[str, int, int]:
    """(model, K, repeats) from the flags of :func:`add_merge_flags`."""
    return (args.model or ("tiny-resnet" if args.quick else "resnet18"), args.K or (3 if args.quick else 6),
            args.repeats or (quick_repeats if args.quick else repeats))


def shared_start_sources(root: Path, model: str, k: int) -> dict[str, Any]:
    """A shared start and ``k`` sources moved from it by their own noise (as fine-tuning from it would), saved as
    checkpoints under ``root``: {model, spec, classes, paths, start, heads, vectors (the task-vector parameters:
    outside the head), not_task_vectors, model_bytes}."""
    import torch

    from multisource.models.checkpoint import head_prefixes, save_checkpoint
    from multisource.models.factory import create_model, resolve_model

    classes = [str(d) for d in range(10)]
    spec = resolve_model(model)
    torch.manual_seed(0)
    start = create_model(model, 10, image_size=32)
    start_path = save_checkpoint(root / "start.ckpt", start, model_name=spec.name, classes=classes,
                                 config={"image_size": 32})
    paths = {}
    for i in range(k):
        g = torch.Generator().manual_seed(100 + i)
        net = create_model(model, 10, image_size=32)
        with torch.no_grad():
            for name, v in net.state_dict().items():
                if torch.is_floating_point(v):
                    v.copy_(start.state_dict()[name] + 0.01 * torch.randn(v.shape, generator=g))
        paths[f"s{i}"] = save_checkpoint(root / f"s{i}.ckpt", net, model_name=spec.name, classes=classes,
                                         config={"image_size": 32, "pretrained": True,
                                                 "pretrained_from": str(start_path)})
    heads = head_prefixes(start)
    vectors = [n for n, _ in start.named_parameters() if not n.startswith(heads)]
    return {"model": model, "spec": spec, "classes": classes, "paths": paths, "start": start_path, "heads": heads,
            "vectors": vectors, "not_task_vectors": [n for n in start.state_dict() if n not in vectors],
            "model_bytes": sum(t.numel() * t.element_size() for t in start.state_dict().values())}

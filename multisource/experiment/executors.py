"""Where a sweep's experiments run: in this process, in local worker processes, or as Ray tasks.

Every executor calls the same :func:`execute` (which calls the runner) and yields an :class:`Outcome` per
experiment as it ends. Results themselves are the metrics.json files the runner writes, so a summary does
not depend on the executor. Ray is imported only when the Ray executor is used.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .config import ExperimentConfig, ExperimentOptions

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")
Task = tuple[int, ExperimentConfig, ExperimentOptions]


@dataclass
class Outcome:
    """How one experiment went. ``status``: finished, skipped (already finished) or failed."""

    index: int
    status: str
    out_dir: str
    dataset: str = ""
    model: str = ""
    method: str = ""
    target: str = ""
    trial: int = 0
    test_accuracy: float | None = None
    time_s: float = 0.0
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None

    @classmethod
    def for_config(cls, cfg: ExperimentConfig, status: str, out_dir: Path | str, index: int = -1,
                   **kw: Any) -> "Outcome":
        return cls(index=index, status=status, out_dir=str(out_dir), dataset=cfg.dataset, model=cfg.model,
                   method=cfg.method, target=cfg.target, trial=cfg.trial, **kw)


def execute(index: int, cfg: ExperimentConfig, opts: ExperimentOptions, num_threads: int | None = None) -> Outcome:
    """Run one experiment; its own failure is returned as an Outcome, never raised (Ctrl-C still propagates)."""
    from . import runner  # looked up at call time, so tests can substitute the runner

    if num_threads:
        import torch

        torch.set_num_threads(num_threads)
    out = runner.output_dir(cfg, opts)
    t0 = time.perf_counter()
    try:
        report = runner.run_experiment(cfg, opts)
    except runner.ExperimentExists:
        return Outcome.for_config(cfg, "skipped", out, index)
    except Exception as exc:  # a failed experiment must not stop the sweep; the sweep records it
        log.error("%s %s %s trial %d failed: %s: %s", cfg.model, cfg.method, cfg.target, cfg.trial,
                  type(exc).__name__, exc)
        return Outcome.for_config(cfg, "failed", out, index, time_s=time.perf_counter() - t0,
                                  error_type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc())
    return Outcome.for_config(cfg, "finished", out, index, test_accuracy=report["test"]["accuracy"],
                              time_s=time.perf_counter() - t0)


def _died(task: Task, exc: BaseException) -> Outcome:
    """The outcome of a task whose worker died or could not return (out of memory, killed, lost node)."""
    index, cfg, opts = task
    from .runner import output_dir

    return Outcome.for_config(cfg, "failed", output_dir(cfg, opts), index, error_type=type(exc).__name__,
                              message=f"worker failed: {exc}",
                              traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class LocalExecutor:
    """One experiment after another in this process."""

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            yield execute(*task)


def _init_worker(num_threads: int) -> None:
    import torch

    from ..utils.logs import quiet_dependencies

    quiet_dependencies()
    os.environ["TQDM_DISABLE"] = "1"  # per-epoch bars from parallel workers would interleave; the sweep reports

    torch.set_num_threads(num_threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ProcessExecutor:
    """``workers`` spawned processes on this machine, each with its share of the CPU cores for torch."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        if not tasks:
            return
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads,))
        futures = {pool.submit(execute, *task): task for task in tasks}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        yield fut.result()
                    except Exception as exc:  # BrokenProcessPool: a worker died (killed, out of memory)
                        yield _died(futures[fut], exc)
        finally:  # also on Ctrl-C or when the consumer stops: drop what has not started
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Experiments as Ray tasks on an existing cluster (``address``) or a local Ray instance.

    Every node needs this package installed and the same data, checkpoint and results paths (shared storage).
    Each task gets one GPU when the cluster has GPUs.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1) -> None:
        self.address, self.num_cpus, self.cpus_per_task = address, num_cpus, cpus_per_task
        self._started = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def _connect(self):
        try:
            import ray
        except ImportError as exc:
            raise ImportError("--executor ray needs Ray: pip install 'ray[default]'.") from exc
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=True)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False)
            self._started = True
        return ray

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        if not tasks:
            return
        ray = self._connect()
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=0)(execute)
        refs = {remote.remote(*task, num_threads=self.cpus_per_task): task for task in tasks}
        log.info("Submitted %d Ray tasks (%d CPU, %d GPU each)", len(refs), self.cpus_per_task, gpus)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # RayTaskError / WorkerCrashedError / node lost
                        yield _died(refs[ref], exc)
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)


def make_executor(name: str, workers: int = 1, ray_address: str | None = None, ray_cpus_per_task: int = 1):
    """``local`` (sequential, or ``workers`` processes) or ``ray``."""
    if name == "ray":
        return RayExecutor(ray_address, num_cpus=workers if workers > 1 else None, cpus_per_task=ray_cpus_per_task)
    if name != "local":
        raise ValueError(f"Unknown executor '{name}'; choose one of {', '.join(EXECUTORS)}.")
    return ProcessExecutor(workers) if workers > 1 else LocalExecutor()

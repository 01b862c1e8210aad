"""Where independent tasks run: in this process, in local worker processes, or as Ray tasks.

One registry and one process-pool helper serve both sweeps (experiments) and source training (bins). An
executor runs a module-level function over a list of argument tuples and yields ``(index, value)`` as each
task ends; ``value`` is the function's return value, or the exception when the worker itself died (killed,
out of memory, a lost node). Functions handle their own errors; a worker death must not stop the others.

Adding an executor: a class with ``__enter__``/``__exit__``/``run`` and one ``EXECUTORS.register`` line.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence

from .options import RunOptions
from .registry import Registry

log = logging.getLogger(__name__)
Result = tuple[int, Any]


def _set_threads(num_threads: int) -> None:
    import torch  # in the worker only: the parent may never need torch for this

    torch.set_num_threads(num_threads)


# How often a worker checks that the process that started it is still there.
PARENT_POLL_S = 0.5


def _parent_identity() -> tuple[int, float]:
    """(pid, start time) of this process: a pid alone may be reused by another process after this one dies."""
    import psutil

    return os.getpid(), psutil.Process().create_time()


def _die_with_parent(parent: tuple[int, float]) -> None:
    """End this worker as soon as ``parent`` (the sweep or training command) is gone, however it ended: a
    ``kill -9`` or the OOM killer runs no clean-up in the parent, and workers of a fork server are not its children,
    so nothing else would stop them finishing every queued task."""
    import psutil

    def gone() -> bool:
        try:
            proc = psutil.Process(parent[0])
            # a start time over a second apart is another process under a reused pid (psutil derives it from the
            # boot time, which a clock step can shift by a little, so exact equality could kill a live worker)
            return abs(proc.create_time() - parent[1]) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def watch() -> None:
        while not gone():
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up to wait for: staging folders and claims are reclaimed

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _init_worker(num_threads: int, parent: tuple[int, float] | None = None) -> None:
    from .utils.logs import quiet_dependencies

    if parent is not None:
        _die_with_parent(parent)
    quiet_dependencies()
    os.environ["TQDM_DISABLE"] = "1"  # per-epoch bars from parallel workers would interleave; the caller reports
    # Records down to INFO reach the handlers (an experiment's log file takes the runner's lines), while the
    # console shows warnings only: the caller reports each task's end, and workers' lines would interleave.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    _set_threads(num_threads)


def _call_with_threads(fn: Callable, num_threads: int, args: tuple) -> Any:
    _init_worker(num_threads)
    return fn(*args)


class LocalExecutor:
    """One task after another in this process."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def run(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[Result]:
        for i, args in enumerate(tasks):
            yield i, fn(*args)


# What a worker imports before its first task, once, in the fork server: torch, Lightning, timm, PEFT and the
# package's training and experiment code (3-5 s an interpreter here). Workers then start as forks of it.
WORKER_PRELOAD = ["multisource.experiment.jobs", "multisource.training.all_bins"]


def worker_context() -> multiprocessing.context.BaseContext:
    """A fork server that has imported the heavy libraries once (workers fork from it: no import per worker, and
    unlike a plain fork no threads or CUDA state inherited from this process); spawn where there is none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def start_worker_server() -> None:
    """Start the fork server now, without waiting for it: its imports (seconds) then overlap whatever the caller
    does before the first task (the upstream pretraining before the sources), instead of delaying that task."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        worker_context()
        multiprocessing.forkserver.ensure_running()


class ProcessExecutor:
    """``workers`` processes on this machine (forked from a fork server), each with its share of the CPU cores."""

    def __init__(self, options: RunOptions) -> None:
        self.workers = options.workers
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)

    def __enter__(self) -> "ProcessExecutor":
        start_worker_server()
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def run(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[Result]:
        if not tasks:
            return
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=worker_context(),
                                   initializer=_init_worker, initargs=(self.threads, _parent_identity()))
        futures = {pool.submit(fn, *args): i for i, args in enumerate(tasks)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        yield futures[fut], fut.result()
                    except Exception as exc:  # BrokenProcessPool: a worker died (killed, out of memory)
                        yield futures[fut], exc
        except BaseException:  # Ctrl-C, SIGTERM or the consumer stopped: stop running tasks too, at once
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()  # their staging folders and claims are cleaned up by the next run
            raise
        finally:  # drop what has not started
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Tasks on an existing Ray cluster (``--ray_address``) or a local Ray instance (``--workers`` CPUs).

    Every node needs this package installed and the same data, checkpoint and results paths (shared
    storage). Each task gets ``--ray_cpus_per_task`` CPUs (its torch threads) and one GPU when the cluster has
    GPUs.
    """

    def __init__(self, options: RunOptions) -> None:
        self.address = options.ray_address
        self.num_cpus = options.workers if options.workers > 1 else None
        self.cpus_per_task = options.ray_cpus_per_task
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
            import ray  # only for this executor: Ray is large and most runs never use it
        except ImportError as exc:
            raise ImportError("--executor ray needs Ray: pip install 'ray[default]'.") from exc
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=True)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False)
            self._started = True
        return ray

    def run(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[Result]:
        if not tasks:
            return
        ray = self._connect()
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=0)(_call_with_threads)
        refs = {remote.remote(fn, self.cpus_per_task, tuple(args)): i for i, args in enumerate(tasks)}
        log.info("Submitted %d Ray tasks (%d CPU, %d GPU each)", len(refs), self.cpus_per_task, gpus)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield refs[ref], ray.get(ref)
                    except Exception as exc:  # RayTaskError / WorkerCrashedError / node lost
                        yield refs[ref], exc
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)


EXECUTORS: Registry[Callable[[RunOptions], Any]] = Registry("executor")
# "local" is sequential in this process for one worker, a process pool for more.
EXECUTORS.register("local", lambda o: ProcessExecutor(o) if o.workers > 1 else LocalExecutor(o))
EXECUTORS.register("ray", RayExecutor)


def make_executor(options: RunOptions):
    """The executor ``options.executor`` names, configured by ``options`` (workers, Ray address, ...)."""
    return EXECUTORS.get(options.executor)(options)

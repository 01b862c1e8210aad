"""One experiment as a task for the project's executors, and how it went (an :class:`Outcome`).

Every executor calls the same :func:`execute` (which calls the runner on a resolved plan). Results themselves
are the metrics.json files the runner writes, so a summary does not depend on the executor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import RunOptions
from . import runner
from .plan import ExperimentPlan

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How one experiment went. ``status``: finished, skipped (already finished), failed, or claimed (another
    sweep was running it; the sweep waits for it and then reports what that run left on disk)."""

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
    def for_plan(cls, plan: ExperimentPlan, status: str, **kw: Any) -> "Outcome":
        c = plan.config
        return cls(status=status, out_dir=str(plan.out_dir), dataset=plan.handle.info.name, model=c.model,
                   method=c.method, target=c.target, trial=c.trial, **kw)

    @classmethod
    def died(cls, plan: ExperimentPlan, exc: BaseException) -> "Outcome":
        """The outcome of a task whose worker died or could not return (out of memory, killed, lost node)."""
        return cls.for_plan(plan, "failed", error_type=type(exc).__name__, message=f"worker failed: {exc}",
                            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


# A claim's owner touches it every HEARTBEAT_S while it runs the experiment; a claim untouched for STALE_AFTER_S
# belongs to a process that is gone, wherever it ran (a lost Ray node, a restarted container), so it is taken
# over. Generous against clock skew between hosts sharing the results folder.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


def claim_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.claim")


def _claim_is_stale(path: Path, owner: str) -> bool:
    """Nobody runs this claim any more: its process on this machine has ended, or (any host) it has not been
    touched for STALE_AFTER_S."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return runner.owner_is_gone(owner) or age > STALE_AFTER_S


def _read_owner(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def try_claim(out_dir: Path) -> bool:
    """Claim an experiment for this process, so two sweeps started at once on one results folder never run it
    twice. The claim file appears with its owner already written (written aside, then hard-linked into place,
    which fails if the claim exists), so a claim is never seen half-written; a stale one is taken over."""
    path = claim_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = runner.process_tag()
    aside = path.with_name(f"{path.name}.{tag}")
    aside.write_text(tag, encoding="utf-8")
    try:
        for _ in range(2):
            try:
                os.link(aside, path)
                return True
            except FileExistsError:
                owner = _read_owner(path)
                if owner == tag or not _claim_is_stale(path, owner):
                    return False
                log.warning("Taking over the stale claim %s of %s.", path, owner or "an unknown process")
                path.unlink(missing_ok=True)
        return False
    finally:
        aside.unlink(missing_ok=True)


def release_claim(out_dir: Path) -> None:
    path = claim_path(out_dir)
    if _read_owner(path) == runner.process_tag():  # never remove a claim another process took over
        path.unlink(missing_ok=True)


def claimed_elsewhere(out_dir: Path) -> bool:
    """Another process holds the experiment's claim and is still running it."""
    path = claim_path(out_dir)
    if not path.exists():
        return False
    owner = _read_owner(path)
    return owner != runner.process_tag() and not _claim_is_stale(path, owner)


class _Heartbeat:
    """Touches a claim every ``HEARTBEAT_S`` from a daemon thread while the experiment runs."""

    def __init__(self, path: Path) -> None:
        self.path, self.stop = path, threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"claim-heartbeat {path.name}", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # released meanwhile
                return

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def execute(plan: ExperimentPlan, opts: RunOptions) -> Outcome:
    """Run one experiment; its own failure is returned as an Outcome, never raised (Ctrl-C still propagates).

    An experiment another live process has claimed is not run here: its outcome is ``claimed``."""
    if not try_claim(plan.out_dir):
        return Outcome.for_plan(plan, "claimed")
    try:
        with _Heartbeat(claim_path(plan.out_dir)):
            return _execute_claimed(plan, opts)
    finally:
        release_claim(plan.out_dir)


def _execute_claimed(plan: ExperimentPlan, opts: RunOptions) -> Outcome:
    t0 = time.perf_counter()
    try:
        report = runner.run_plan(plan, opts)  # looked up at call time, so tests can substitute the runner
    except runner.ExperimentExists:
        return Outcome.for_plan(plan, "skipped")
    except Exception as exc:  # noqa: BLE001  a failed experiment must not stop the sweep; the sweep records it
        log.error("%s failed: %s: %s", plan.label, type(exc).__name__, exc)
        return Outcome.for_plan(plan, "failed", time_s=time.perf_counter() - t0, error_type=type(exc).__name__,
                                message=str(exc), traceback=traceback.format_exc())
    return Outcome.for_plan(plan, "finished", test_accuracy=report["test"]["accuracy"],
                            time_s=time.perf_counter() - t0)


def failure_paths(out_dir: Path) -> tuple[Path, Path]:
    """Where a failed experiment is recorded: beside its (absent) folder, never inside it."""
    return out_dir.with_name(f"{out_dir.name}.failed.json"), out_dir.with_name(f"{out_dir.name}.traceback.txt")

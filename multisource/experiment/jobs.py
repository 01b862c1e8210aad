"""One experiment as a task for the project's executors, and how it went (an :class:`Outcome`).

Every executor calls the same :func:`execute` (which calls the runner on a resolved plan). Results themselves
are the metrics.json files the runner writes, so a summary does not depend on the executor.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import ExperimentOptions
from .. import claims
from ..failures import failure_paths  # noqa: F401  (where an experiment's failure is recorded)
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


def execute(plan: ExperimentPlan, opts: ExperimentOptions) -> Outcome:
    """Run one experiment; its own failure is returned as an Outcome, never raised (Ctrl-C still propagates).

    An experiment another live process has claimed is not run here: its outcome is ``claimed``."""
    with claims.holding(plan.out_dir) as held:
        return _execute_claimed(plan, opts) if held else Outcome.for_plan(plan, "claimed")


def _execute_claimed(plan: ExperimentPlan, opts: ExperimentOptions) -> Outcome:
    t0 = time.perf_counter()
    try:
        report = runner.run_plan(plan, opts)  # looked up at call time, so tests can substitute the runner
    except runner.ExperimentExists:
        return Outcome.for_plan(plan, "skipped")
    except Exception as exc:  # noqa: BLE001  a failed experiment must not stop the sweep; the sweep records it
        log.error("%s failed: %s: %s", plan.label, type(exc).__name__, exc)
        return Outcome.for_plan(plan, "failed", time_s=time.perf_counter() - t0, error_type=type(exc).__name__,
                                message=str(exc), traceback=traceback.format_exc())
    return Outcome.for_plan(plan, "finished", test_accuracy=report.test.accuracy,
                            time_s=time.perf_counter() - t0)

"""Failure records, the same for every kind of job (an experiment, a source model): ``<name>.failed.json`` and
``<name>.traceback.txt`` beside the job's output (never inside it), written when the job fails and removed once
it has finished. A re-run reads them to say what went wrong before; summaries list them, never score them."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .utils.io import read_json, write_json, write_text

log = logging.getLogger(__name__)


def failure_paths(out: Path) -> tuple[Path, Path]:
    """Where a failed job whose output is ``out`` is recorded: beside its (absent) output, never inside it."""
    return out.with_name(f"{out.name}.failed.json"), out.with_name(f"{out.name}.traceback.txt")


def write_failure(out: Path, *, error_type: str | None, message: str | None, traceback: str | None,
                  time_s: float, config: dict[str, Any]) -> Path:
    """Record that the job of ``out`` failed: what, when, with which settings, and its traceback file."""
    record, tb = failure_paths(out)
    write_text(tb, traceback or "")
    return write_json(record, {"status": "failed", "error_type": error_type, "message": message,
                               "traceback_file": tb.name, "time_s": time_s,
                               "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "config": config})


def clear_failure(out: Path) -> None:
    """Remove the failure record of a job that has now finished (a read-only copy of results keeps it)."""
    for stale in failure_paths(out):
        try:
            stale.unlink(missing_ok=True)
        except OSError as exc:  # the finished job counts all the same
            log.warning("Could not remove the old failure record %s (%s); the job has finished.", stale,
                        exc.strerror or exc)


def read_failure(out: Path) -> dict[str, Any] | None:
    """The failure record of ``out`` (None when there is none or it cannot be read)."""
    try:
        record = read_json(failure_paths(out)[0])
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None

"""Calling a method from Python without the scripts."""

from __future__ import annotations

from typing import Any, Mapping

from ..config import build
from .base import MethodResult, SourcePool, TargetData, get_method


def make_config(method: str, values: Mapping[str, Any] | Any | None = None) -> Any:
    """The method's config dataclass from a mapping (unknown keys are errors) or an instance as is."""
    spec = get_method(method)
    if isinstance(values, spec.config_cls):
        return values
    return build(spec.config_cls, dict(values or {}))


def run_method(method: str, pool: SourcePool, target: TargetData, config: Mapping[str, Any] | Any | None = None,
               meter: Any | None = None) -> MethodResult:
    """Run a registered method; a fresh Meter is used when none is given."""
    from ..measure.meter import Meter

    cfg = make_config(method, config)
    meter = meter if meter is not None else Meter(target.device)
    if pool.residency is None:
        pool.residency = meter.models
    return get_method(method).run(cfg, pool, target, meter)

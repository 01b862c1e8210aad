"""The embedded benchmarks, generated offline: for each, the settings class of its build (a settings file's
``data:`` section, the builder's flags) and the function that builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..registry import Registry
from .datasets import get_dataset
from .drift_digits import DriftDigitsConfig, build_drift_digits
from .drift_glyphs import DriftGlyphsConfig, build_drift_glyphs


@dataclass(frozen=True)
class EmbeddedBuild:
    config_cls: type
    build: Callable[..., dict]  # build(output_dir, cfg, *, overwrite, progress) -> the card


EMBEDDED: Registry[EmbeddedBuild] = Registry("embedded benchmark")
EMBEDDED.register("drift_digits", EmbeddedBuild(DriftDigitsConfig, build_drift_digits))
EMBEDDED.register("drift_glyphs", EmbeddedBuild(DriftGlyphsConfig, build_drift_glyphs))
DEFAULT_EMBEDDED = "drift_digits"


def embedded_build(dataset: str | None) -> EmbeddedBuild:
    """The build of ``dataset`` (a registered name or alias, looked up before any folder of that name; or a built
    folder, by its card's dataset); drifting digits' for any other dataset, whose ``data:`` section then has
    nothing to build."""
    if dataset and str(dataset) in EMBEDDED:
        return EMBEDDED.get(str(dataset))
    if dataset:
        try:
            name = get_dataset(str(dataset)).name
        except (KeyError, ValueError):
            name = DEFAULT_EMBEDDED
        if name in EMBEDDED:
            return EMBEDDED.get(name)
    return EMBEDDED.get(DEFAULT_EMBEDDED)


def data_config_classes() -> list[type]:
    """Every embedded benchmark's settings class (a ``data:`` section of a file that names no dataset may hold
    any of their fields; the command that builds checks them against its own)."""
    return [EMBEDDED.get(name).config_cls for name in EMBEDDED.list()]

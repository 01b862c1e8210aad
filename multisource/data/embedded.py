"""The embedded benchmarks, generated offline: for each, the settings class of its build (a settings file's
``data:`` section, the builder's flags) and the function that builds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
    """The build of ``dataset`` (a registered name or alias); drifting digits' for any other dataset, whose
    ``data:`` section then has nothing to build."""
    name = DEFAULT_EMBEDDED
    if dataset:
        try:
            name = get_dataset(str(dataset)).name if not Path(str(dataset)).expanduser().is_dir() else name
        except (KeyError, ValueError):
            name = DEFAULT_EMBEDDED
    return EMBEDDED.get(name) if name in EMBEDDED else EMBEDDED.get(DEFAULT_EMBEDDED)

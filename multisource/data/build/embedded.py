"""The embedded benchmarks, generated offline: for each, the settings class of its build (a settings file's
``data:`` section, the builder's flags) and the function that builds it, as its registry entry names them
(``embedded=True`` in data/datasets.py; nothing here is per benchmark)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..datasets import DATASETS, DatasetInfo, get_dataset

DEFAULT_EMBEDDED = "drift_digits"


@dataclass(frozen=True)
class EmbeddedBuild:
    config_cls: type
    build: Callable[..., dict]  # build(output_dir, cfg, *, overwrite, progress) -> the card


def load(target: str) -> Any:
    """What a registry entry names as "module:attribute", imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _build_of(info: DatasetInfo) -> EmbeddedBuild:
    return EmbeddedBuild(load(info.build_settings), load(info.builder))


def embedded_names() -> list[str]:
    return [name for name in DATASETS.list() if DATASETS.get(name).embedded]


def embedded_build(dataset: str | None) -> EmbeddedBuild:
    """The build of ``dataset`` (a registered name or alias, looked up before any folder of that name; or a built
    folder, by its card's dataset); drifting digits' for any other dataset, whose ``data:`` section then has
    nothing to build."""
    if dataset and str(dataset) in DATASETS and DATASETS.get(str(dataset)).embedded:
        return _build_of(DATASETS.get(str(dataset)))
    if dataset:
        try:
            name = get_dataset(str(dataset)).name
        except (KeyError, ValueError):
            name = DEFAULT_EMBEDDED
        if name in DATASETS and DATASETS.get(name).embedded:
            return _build_of(DATASETS.get(name))
    return _build_of(DATASETS.get(DEFAULT_EMBEDDED))


def data_config_classes() -> list[type]:
    """Every embedded benchmark's settings class (a ``data:`` section of a file that names no dataset may hold
    any of their fields; the command that builds checks them against its own)."""
    return [load(DATASETS.get(name).build_settings) for name in embedded_names()]

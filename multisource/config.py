"""Configs are small dataclasses: defaults from the spec, validated on construction,
loadable from YAML and overridable from the command line (CLI wins over the file)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is out of range or unknown; the message names field, value and fix."""


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass an existing YAML file to --config.")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of field: value, not {type(data).__name__}.")
    return data


def build(cls: type[C], *layers: Mapping[str, Any] | None, strict: bool = True) -> C:
    """Instantiate dataclass ``cls`` from layered mappings (later layers win; ``None`` values are skipped).

    With ``strict`` an unknown key is an error naming the valid fields, so typos never pass silently.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            key = key.replace("-", "_")
            if key not in names:
                if strict:
                    raise ConfigError(
                        f"Unknown {cls.__name__} field '{key}'. Valid fields: {', '.join(sorted(names))}."
                    )
                continue
            if value is not None:
                values[key] = value
    for f in dataclasses.fields(cls):
        if f.name in values and f.type in ("tuple[str, ...]", "tuple[int, ...]") and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def pick(mapping: Mapping[str, Any] | None, cls: type) -> dict[str, Any]:
    """The subset of ``mapping`` that names fields of ``cls`` (for configs shared by several dataclasses)."""
    if not mapping:
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    return {k.replace("-", "_"): v for k, v in mapping.items() if k.replace("-", "_") in names}


def check_range(obj: Any, name: str, low: float | None = None, high: float | None = None) -> None:
    value = getattr(obj, name)
    if (low is not None and value < low) or (high is not None and value > high):
        rng = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{type(obj).__name__}.{name}={value!r} is out of range; use a value in {rng}.")


def check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{type(obj).__name__}.{name}={value!r} is not valid; choose one of {', '.join(choices)}.")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)

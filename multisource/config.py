"""Configs are small dataclasses: defaults from the spec, validated on construction, built from layered
settings (defaults < settings file < command line) with every value converted to its field's type.

One conversion path serves the settings files and the command line: a value is converted by the field's
type hint (``int``, ``float``, ``bool``, ``str``, ``tuple[str, ...]``, ``X | None``, ``dict``), so ``1e-3``
(which PyYAML reads as a string) becomes a float, and ``three`` for an ``int`` field is one clear error
naming where it came from (file and line, or the flag).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is out of range, of the wrong type or unknown; the message names field, value, fix.

    ``field``: the field whose value is refused; :func:`build` then says where that value came from (a file and
    line, or a flag), since a config's own check cannot know."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFinite(ValueError):
    """NaN or infinity where a number is needed: it passes no range check honestly (every comparison with NaN is
    false), so it is refused where values are converted and where ranges are checked."""


INT_LIMIT = 2**63  # integers beyond int64 overflow torch, numpy and JSON readers downstream
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (and most tools) take seeds in [0, 2**32)


class Layer(dict):
    """A mapping of settings that remembers where it came from, for messages.

    ``origin`` is e.g. ``"configs/demo.yaml"`` or ``"the command line"``; ``lines`` maps a key to its line in
    the file; ``prefix`` is the section path (``"sources."``) and ``flag`` marks command-line values.
    """

    def __init__(self, values: Mapping[str, Any] | None = None, *, origin: str = "", lines: Mapping | None = None,
                 prefix: str = "", flag: bool = False) -> None:
        super().__init__(values or {})
        self.origin, self.lines, self.prefix, self.flag = origin, dict(lines or {}), prefix, flag

    def where(self, key: str) -> str:
        """``configs/x.yaml, line 4, sources.max_epochs`` or ``--max_epochs``: how a message names a key."""
        if self.flag:
            return f"--{key}"
        line = self.lines.get(self.prefix + key)
        parts = [p for p in (self.origin, f"line {line}" if line else "", self.prefix + key) if p]
        return ", ".join(parts) or key

    def sub(self, key: str) -> "Layer":
        """The section ``key`` (a mapping) as a layer of its own."""
        value = self.get(key) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where(key)}: a section must be a mapping of key: value, not "
                              f"{type(value).__name__} ({value!r}).")
        return Layer(value, origin=self.origin, lines=self.lines, prefix=f"{self.prefix}{key}.", flag=self.flag)

    def only(self, keys: set[str] | frozenset[str]) -> "Layer":
        return Layer({k: v for k, v in self.items() if k in keys}, origin=self.origin, lines=self.lines,
                     prefix=self.prefix, flag=self.flag)


def _key_lines(node: yaml.Node, prefix: str = "", out: dict | None = None) -> dict[str, int]:
    """Dotted key -> 1-based line of every key of a composed YAML mapping, for messages."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                key = prefix + yaml_key(k.value)
                out[key] = k.start_mark.line + 1
                _key_lines(v, key + ".", out)
    return out


def yaml_key(key: Any) -> str:
    """A settings file's key as the fields are named (``max-epochs`` -> ``max_epochs``); a variant's tag in
    brackets is a name, kept as written (``grasp[near-best]``)."""
    text = str(key)
    head, bracket, tag = text.partition("[")
    return head.replace("-", "_") + bracket + tag


def _normalise_keys(value: Any) -> Any:
    """YAML users write ``max-epochs``; field names have underscores."""
    if isinstance(value, dict):
        return {yaml_key(k): _normalise_keys(v) for k, v in value.items()}
    return value


class _SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (27 lines of nested ``*a`` references expand to billions of values
    and hang any reader) and without duplicate keys (the later one silently won): both refused, naming the line."""

    def __init__(self, text: str, path: Path) -> None:
        super().__init__(text)
        self.path = path

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"{self.path}, line {mark.line + 1}: YAML aliases (*name) are not accepted in settings "
                              "files (a few lines of them can expand without bound); write the values out.")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            key = yaml_key(self.construct_object(key_node, deep=True))
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.path}, line {line}: key '{key}' is given twice (first on line {seen[key]}); "
                                  "keep one of them.")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike) -> Layer:
    """A settings file as a :class:`Layer`; a missing file, a syntax error or a non-mapping is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass an existing YAML file to --config.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text; save it as UTF-8 YAML.") from None
    loader = _SettingsLoader(text, path)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{at}: YAML syntax error ({problem}); fix the file (key: value per line, "
                          "spaces for indentation).") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of field: value, not {type(data).__name__}.")
    return Layer(_normalise_keys(data), origin=str(path), lines=_key_lines(root) if root is not None else {})


# --- typed conversion -------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def convert(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``; raises ``TypeError`` when it cannot be one (the caller words the message)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
            raise TypeError
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value)
            except NotFinite:
                raise
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp) or (Any,)
        # one value where a list is expected is a list of one (``target_fraction: 0.25`` for a sweep's fractions)
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, Mapping):
            raise TypeError
        return tuple(convert(item, v) for v in items)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeError
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise TypeError
    if tp is int:
        return _bounded_int(_to_int(value))
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            raise TypeError
        if not math.isfinite(number):
            raise NotFinite
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # ``precision: 32`` in YAML is an int
        raise TypeError
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotFinite
        if value.is_integer():
            return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            number = float(value)  # "1e3" is an integer written as a float; "abc" raises ValueError
            if not math.isfinite(number):
                raise NotFinite from None
            if number.is_integer():
                return int(number)
    raise TypeError


def _bounded_int(value: int) -> int:
    if not -INT_LIMIT < value < INT_LIMIT:
        raise TypeError  # words as "not an integer": no tool downstream holds it as one
    return value


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def convert_field(cls: type, name: str, value: Any, where: str) -> Any:
    tp = field_types(cls)[name]
    try:
        return convert(tp, value)
    except NotFinite:
        raise ConfigError(f"{where}: {value!r} is not a finite number ({cls.__name__}.{name}); write a number such "
                          "as 0.3 (NaN and infinity pass no range check).") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)} ({cls.__name__}.{name}); "
                          f"write {_type_name(tp)}.") from None


def build(cls: type[C], *layers: Mapping[str, Any] | None, strict: bool = True) -> C:
    """Instantiate dataclass ``cls`` from layered mappings (later layers win; ``None`` values are skipped).

    Every value is converted to its field's type. With ``strict`` an unknown key is an error naming the
    valid fields, so typos never pass silently. Layers that are :class:`Layer` name their file/line or flag.
    """
    names = field_names(cls)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            key = key.replace("-", "_")
            where = layer.where(key) if isinstance(layer, Layer) else key
            if key not in names:
                if strict:
                    at = f"{where}: unknown" if isinstance(layer, Layer) else "Unknown"
                    raise ConfigError(f"{at} {cls.__name__} field '{key}'. Valid fields: {', '.join(sorted(names))}.")
                continue
            if value is not None:
                values[key] = convert_field(cls, key, value, where)
                origins[key] = where
    try:
        return cls(**values)
    except ConfigError as exc:
        if exc.field in origins and isinstance(origins[exc.field], str) and origins[exc.field] != exc.field:
            raise ConfigError(f"{origins[exc.field]}: {exc}", exc.field) from None
        raise


def pick(mapping: Mapping[str, Any] | None, cls: type) -> dict[str, Any]:
    """The subset of ``mapping`` that names fields of ``cls`` (a :class:`Layer` stays one, for messages)."""
    if not mapping:
        return {}
    names = field_names(cls)
    if isinstance(mapping, Layer):
        return mapping.only(names)
    return {k.replace("-", "_"): v for k, v in mapping.items() if k.replace("-", "_") in names}


def check_range(obj: Any, name: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False) -> None:
    """``obj.name`` is a finite real number (not a bool) in [low, high], or (low, high] with ``low_open``: the one
    numeric check every config runs, whether its values came from a file, a flag or Python."""
    value = getattr(obj, name)
    rng = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{type(obj).__name__}.{name}={value!r} is not a number; use a value in {rng}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{type(obj).__name__}.{name}={value!r} is not a finite number; use a value in {rng}.")
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        raise ConfigError(f"{type(obj).__name__}.{name}={value!r} is out of range; use a value in {rng}.")


def check_seed(obj: Any, name: str = "seed") -> None:
    check_range(obj, name, 0, SEED_MAX)
    if not isinstance(getattr(obj, name), int):
        raise ConfigError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r} is not a whole number; use an integer "
                          f"in [0, {SEED_MAX}].")


def check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{type(obj).__name__}.{name}={value!r} is not valid; choose one of {', '.join(choices)}.")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)

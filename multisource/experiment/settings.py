"""The one settings loader: every command resolves defaults < settings file < command line through here.

One grammar for every settings file (``--config FILE``), read the same way by every command::

    dataset: drift_digits      # top level: any setting of any stage (dataset, model, seed, batch_size,
    model: tiny-resnet         #   learning_rate, num_workers, ...): it applies to every stage that has it
    data:    {...}             # how the embedded dataset is built (DriftDigitsConfig)
    import:  {...}             # how your own images are binned and split (ImportConfig)
    sources: {...}             # source training (SourceTrainConfig); alias: source_training
    sweep:   {...}             # targets, num_trials, methods (SweepConfig)
    methods: {grasp: {...}}    # per-method hyper-parameters (a list instead only selects the methods)
    run:     {...}             # how to run: device, precision, workers, executor, paths (the command's options:
                               #   RunOptions, TrainOptions, ExperimentOptions or SweepOptions)

A section overrides the top level for its stage. The whole file is checked whichever command reads it, so an
unknown key, a wrong type or a YAML syntax error anywhere is one line naming the file, the line and the key.
Commands honour every section that concerns them: the importer reads ``import``; training ``sources`` and
``run``; the drift report and ``summarize`` ``run``; an experiment
``methods`` and ``run``; a sweep ``sweep``, ``methods``, ``sources`` (for ``--train_missing``) and ``run``;
the demo all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any, Mapping, TypeVar

from ..config import ConfigError, Layer, build, convert_field, field_names, load_yaml
from ..data.build.embedded import data_config_classes, embedded_build
from ..data.build.importer import ImportConfig
from ..executors import EXECUTORS
from ..methods import get_method, list_methods, reference_method
from ..options import ExperimentOptions, RunOptions, SweepOptions, TrainOptions
from ..training.fit import SourceTrainConfig
from .config import ExperimentConfig
from ..methods.base import default_methods, stream_refusal
from ..paths import split_label, tag_problem, variant_label
from .protocols import STREAM
from .sweep import SweepConfig

log = logging.getLogger(__name__)
O = TypeVar("O", bound=RunOptions)

# data: the settings class of the embedded benchmark the file names (see _section_cls)
SECTIONS: dict[str, type | None] = {"data": None, "import": ImportConfig, "sources": SourceTrainConfig,
                                    "sweep": SweepConfig, "run": SweepOptions}
# ``run:`` is checked against SweepOptions, which has every command's options (a test keeps it so): each command
# takes its own class's keys from it, so a file read by training and by sweeps may hold either's options.
SECTION_ALIASES = {"source_training": "sources"}
METHOD_KEYS = ("methods", "method_configs")  # per-method mappings, at the top level or in ``sweep:``
# The same setting under another name in one stage (the paper's --model_name; a sweep's list of models).
RENAMES: dict[type, dict[str, str]] = {SourceTrainConfig: {"model": "model_name"},
                                       ExperimentConfig: {"model_name": "model"},
                                       SweepConfig: {"model": "models", "model_name": "models",
                                                     "target_fraction": "target_fractions"}}
def stages() -> tuple[type, ...]:
    """Every stage's settings class: a top-level key of a settings file is a field of one of them (the embedded
    benchmarks' from the dataset registry, so a new one's settings are read like the others')."""
    return (SourceTrainConfig, ExperimentConfig, SweepConfig, SweepOptions, *data_config_classes(), ImportConfig)


def _names(cls: type) -> set[str]:
    return field_names(cls) | set(RENAMES.get(cls, {}))


def _renamed(layer: Layer, cls: type) -> Layer:
    """``layer``'s keys of ``cls`` (its aliases renamed to the field), keeping each key's line for messages."""
    renames = RENAMES.get(cls, {})
    out = Layer(origin=layer.origin, lines=layer.lines, prefix=layer.prefix, flag=layer.flag)
    for key, value in layer.items():
        if key in field_names(cls) or key in renames:
            name = renames.get(key, key)
            out[name] = value
            if layer.prefix + key in layer.lines:
                out.lines[layer.prefix + name] = layer.lines[layer.prefix + key]
    return out


def _method_fields() -> dict[str, set[str]]:
    return {m: field_names(get_method(m).config_cls) for m in list_methods()}


def _owner(key: str) -> type | None:
    """The first class that has ``key`` (for checking a top-level value's type)."""
    for cls in stages():
        if key in field_names(cls):
            return cls
    for m in list_methods():
        if key in field_names(get_method(m).config_cls):
            return get_method(m).config_cls
    return None


def _check_values(layer: Layer, cls: type, skip: tuple[str, ...] = ()) -> None:
    renames = RENAMES.get(cls, {})
    valid = _names(cls) - set(skip)
    for key, value in layer.items():
        if key in skip:
            continue
        if key not in valid:
            raise ConfigError(f"{layer.where(key)}: unknown key '{key}' for {cls.__name__}. Valid: "
                              f"{', '.join(sorted(valid))}.")
        if value is not None:
            convert_field(cls, renames.get(key, key), value, layer.where(key))


def _check_methods(layer: Layer, key: str) -> None:
    value = layer.get(key)
    if value is None or (key == "methods" and isinstance(value, (list, tuple, str))):
        return
    section = layer.sub(key)
    for name in section:
        method, tag = split_label(str(name))  # grasp[nearest]: a variant of grasp (its own row, tag nearest)
        try:
            spec = get_method(method)
        except KeyError as exc:
            raise ConfigError(f"{section.where(name)}: {exc.args[0]}") from None
        if tag and (problem := tag_problem(tag)):
            raise ConfigError(f"{section.where(name)}: the variant's tag {tag!r}: {problem}.")
        _check_values(section.sub(name), spec.config_cls)


def read_settings(path: str | None) -> Layer | None:
    """Read and check a whole settings file (None when no ``--config`` was given)."""
    if not path:
        return None
    raw = load_yaml(path)
    file = Layer(origin=raw.origin, lines=raw.lines)
    for key, value in raw.items():
        name = SECTION_ALIASES.get(key, key)
        file[name] = value
        if key in raw.lines:
            file.lines[name] = raw.lines[key]
    methods = _method_fields()
    top_keys = set().union(*(_names(c) for c in stages()), *methods.values())
    for key, value in file.items():
        if key == "data" and file.get("dataset") is None:  # which benchmark it builds is the command's to say
            _check_data_fields(file.sub(key))
        elif key in SECTIONS:
            _check_values(file.sub(key), _section_cls(file, key), skip=METHOD_KEYS if key == "sweep" else ())
        elif key in METHOD_KEYS:
            continue
        elif key not in top_keys:
            raise ConfigError(f"{file.where(key)}: unknown key '{key}'. Valid: the sections "
                              f"{', '.join(sorted(SECTIONS))}, methods, or a setting of a stage or method "
                              f"({', '.join(sorted(top_keys))}).")
        elif value is not None and (owner := _owner(key)) is not None:
            convert_field(owner, RENAMES.get(owner, {}).get(key, key), value, file.where(key))
    for holder in (file, file.sub("sweep") if "sweep" in file else None):
        if holder is not None:
            for key in METHOD_KEYS:
                _check_methods(holder, key)
    return file


def _section_cls(file: Layer, section: str) -> type:
    """The settings class of ``section``: ``data:`` builds the file's embedded benchmark (drifting digits unless
    its ``dataset`` names another)."""
    if section == "data":
        return embedded_build(file.get("dataset")).config_cls
    return SECTIONS[section]


def _check_data_fields(layer: Layer) -> None:
    """A ``data:`` section of a file that names no dataset: each key a field of some embedded benchmark's
    settings, with a value of its type."""
    classes = data_config_classes()
    for key, value in layer.items():
        owner = next((c for c in classes if key in field_names(c)), None)
        if owner is None:
            valid = sorted(set().union(*(field_names(c) for c in classes)))
            raise ConfigError(f"{layer.where(key)}: unknown key '{key}' for the data: section. Valid: "
                              f"{', '.join(valid)}.")
        if value is not None:
            convert_field(owner, key, value, layer.where(key))


def cli_layer(args: argparse.Namespace, exclude: tuple[str, ...] = ("config", "verbose")) -> Layer:
    """The values given on the command line (argparse leaves the others None)."""
    return Layer({k: v for k, v in vars(args).items() if v is not None and k not in exclude}, flag=True)


def _top(file: Layer) -> Layer:
    """The top-level settings without the sections (``sources:`` is a section, not ExperimentConfig.sources)."""
    return file.only(set(file) - set(SECTIONS) - set(METHOD_KEYS))


def stage_layers(file: Layer | None, cls: type, section: str | None = None) -> list[Layer]:
    """What a settings file says for ``cls``: its top-level keys, then its section (which wins)."""
    if file is None:
        return []
    layers = [_renamed(_top(file), cls)]
    if section and section in file:
        layers.append(_renamed(file.sub(section), cls))
    return layers


def method_layers(file: Layer | None, method: str) -> list[Layer]:
    """What a settings file says for ``method``: top-level keys it has, then ``methods.<m>`` and
    ``method_configs.<m>`` (at the top level, then in ``sweep:``)."""
    if file is None:
        return []
    base, tag = split_label(method)
    cls = get_method(base).config_cls
    layers = [_renamed(_top(file), cls)]
    for wanted in ("", tag) if tag else ("",):  # a variant: the method's own settings, then the variant's
        for holder in (file, file.sub("sweep") if "sweep" in file else None):
            for key in METHOD_KEYS:
                if holder is not None and isinstance(holder.get(key), Mapping):
                    section = holder.sub(key)
                    for name in section:
                        found, found_tag = split_label(str(name))
                        if get_method(found).name == get_method(base).name and found_tag == wanted:
                            layers.append(section.sub(name))
    return layers


def methods_named(file: Layer | None) -> list[str] | None:
    """The methods a settings file selects (a ``methods`` list or mapping; ``sweep:`` wins), or None."""
    for holder in ((file.sub("sweep") if "sweep" in file else None), file) if file is not None else ():
        value = holder.get("methods") if holder is not None else None
        if value:
            return [value] if isinstance(value, str) else list(value)
    return None


def _methods_listed(file: Layer | None) -> bool:
    """Whether a settings file names its sweep's methods (``sweep: methods:``, or a top-level list), rather than
    only configuring some (a top-level ``methods:`` mapping of their settings)."""
    if file is None:
        return False
    sweep = file.sub("sweep") if "sweep" in file else None
    return bool((sweep is not None and sweep.get("methods")) or isinstance(file.get("methods"), (list, tuple, str)))


def resolve_options(file: Layer | None, cli: Layer, defaults: Mapping[str, Any] | None = None,
                    cls: type[O] = RunOptions) -> O:
    """How a command runs, as its options class ``cls``: ``defaults`` (the command's own) < the file's top level
    < ``run:`` < flags. Keys of another command's options are not this command's and are left to it."""
    opts = build(cls, defaults, *stage_layers(file, cls, "run"), _renamed(cli, cls))
    EXECUTORS.canonical(opts.executor)  # an unknown executor fails now, listing the registered ones
    return opts


def resolve_training(file: Layer | None, cli: Layer, fixed: Mapping[str, Any] | None = None
                     ) -> tuple[SourceTrainConfig, TrainOptions]:
    """Source training: top level < ``sources:`` < flags < what the command fixes (its dataset, its bin)."""
    cfg = build(SourceTrainConfig, *stage_layers(file, SourceTrainConfig, "sources"),
                _renamed(cli, SourceTrainConfig), dict(fixed or {}))
    return cfg, resolve_options(file, cli, cls=TrainOptions)


def resolve_method_config(file: Layer | None, method: str, cli: Layer | None = None) -> Any:
    """The method's config dataclass, built once from the file's layers and the flags."""
    cls = get_method(split_label(method)[0]).config_cls
    return build(cls, *method_layers(file, method), _renamed(cli, cls) if cli else None)


def resolve_experiment(file: Layer | None, cli: Layer, method: str, method_flags: set[str]
                       ) -> tuple[ExperimentConfig, ExperimentOptions]:
    """One experiment: the method's config is built here, once, and handed down in the ExperimentConfig."""
    method = get_method(method).name
    method_cli = cli.only(method_flags)
    cfg = build(ExperimentConfig, *stage_layers(file, ExperimentConfig),
                _renamed(cli.only(set(cli) - method_flags), ExperimentConfig),
                {"method": method, "method_config": resolve_method_config(file, method, method_cli)})
    return cfg, resolve_options(file, cli, cls=ExperimentOptions)


def resolve_sweep(file: Layer | None, cli: Layer, *, method: str | None = None, dataset: str | None = None,
                  method_flags: dict[str, list[str]] | None = None) -> tuple[SweepConfig, SweepOptions]:
    """A sweep: which methods (flag > file > the paper's four and the reference rows), each one's config built once; the file's
    ``sources:`` section is kept for ``--train_missing``."""
    owners = method_flags or {}
    flags = {k for k in cli if k in owners}
    chosen = [method] if method else (cli.get("methods") or methods_named(file) or list(default_methods()))
    chosen = [variant_label(get_method(split_label(m)[0]).name, split_label(m)[1]) for m in chosen]
    stray = [k for k in flags if not set(owners[k]) & {split_label(m)[0] for m in chosen}]
    if stray:
        owning = sorted({m for k in stray for m in owners[k]})
        raise ConfigError(f"Flag(s) {['--' + k for k in stray]} apply to {owning}, which this sweep does not run "
                          f"(methods: {chosen}).")
    configs = {m: resolve_method_config(file, m, cli.only(flags)) for m in chosen}
    # A ``matched`` budget follows the reference method's settings in the file even when the sweep does not run
    # it (``--methods ties`` with configs/merging.yaml): the same epochs as in the sweep that does.
    configs.setdefault(reference_method(), resolve_method_config(file, reference_method()))
    sweep_layers = [layer.only(set(layer) - set(METHOD_KEYS)) for layer in stage_layers(file, SweepConfig, "sweep")]
    training = Layer()
    for layer in stage_layers(file, SourceTrainConfig, "sources"):
        training.update({k: convert_field(SourceTrainConfig, k, v, layer.where(k)) for k, v in layer.items()
                         if k not in ("dataset", "model_name") and v is not None})
    fixed: dict[str, Any] = {"methods": tuple(chosen), "method_configs": configs, "source_training": training}
    if dataset:
        fixed["dataset"] = dataset
    sweep_cli = _renamed(cli.only(set(cli) - flags - {"methods"}), SweepConfig)
    cfg = build(SweepConfig, *sweep_layers, sweep_cli, fixed)
    if cfg.protocol == STREAM and not (method or cli.get("methods") or _methods_listed(file)):
        # methods the file only configures (a ``methods:`` mapping of settings) or the defaults: those with no
        # running form are left out with a note; methods named (--methods, a list) are refused by the plan
        kept = tuple(m for m in cfg.methods if not stream_refusal(get_method(split_label(m)[0]), configs[m]))
        if kept and kept != cfg.methods:
            log.info("--protocol stream leaves out %s (no running form in O(1) models; see docs/experiments.md)",
                     ", ".join(m for m in cfg.methods if m not in kept))
            cfg.methods = kept
    # A sweep saves no experiment's model unless asked (--save_model, or run: save_model: true): dozens of full
    # models (94 MB each for ResNet-50) that no summary reads. A single experiment keeps saving its model.
    return cfg, resolve_options(file, cli, defaults={"save_model": False}, cls=SweepOptions)


def resolve_import(file: Layer | None, cli: Layer) -> ImportConfig:
    """How own images are imported: top level < ``import:`` < flags."""
    return build(ImportConfig, *stage_layers(file, ImportConfig, "import"), _renamed(cli, ImportConfig))


def resolve_data(file: Layer | None, cli: Layer | None = None, dataset: str | None = None) -> Any:
    """How an embedded benchmark is built (``dataset``, else the file's, else drifting digits): its settings
    class from top level < ``data:`` < flags."""
    cls = embedded_build(dataset or (file.get("dataset") if file is not None else None)).config_cls
    if file is not None and "data" in file:
        section = file.sub("data")
        for key in section:
            if key not in field_names(cls):
                raise ConfigError(f"{section.where(key)}: '{key}' is not a setting of {cls.__name__}, which this "
                                  f"command builds (valid: {', '.join(sorted(field_names(cls)))}); remove it or "
                                  "build the dataset it belongs to.")
    return build(cls, *stage_layers(file, cls, "data"), _renamed(cli, cls) if cli else None)


def resolved_settings(*configs: Any) -> dict[str, Any]:
    """The resolved configs as one JSON-ready mapping (written beside results)."""
    return {type(c).__name__: dataclasses.asdict(c) for c in configs}

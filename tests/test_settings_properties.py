"""Property tests of the settings loader (hypothesis): whatever keys, types and values a settings file holds,
reading and resolving it either gives typed, range-checked configs or one ConfigError; never another
exception, never a silently wrong type."""

from __future__ import annotations

import dataclasses
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multisource.config import ConfigError, Layer, field_types
from multisource.experiment.settings import read_settings, resolve_experiment, resolve_sweep, resolve_training
from multisource.methods import get_method
from multisource.training.fit import SourceTrainConfig

TRAIN_KEYS = [f.name for f in dataclasses.fields(SourceTrainConfig) if f.name not in ("dataset", "bin", "model_name")]
GRASP_KEYS = [f.name for f in dataclasses.fields(get_method("grasp").config_cls)]
KEYS = sorted(set(TRAIN_KEYS + GRASP_KEYS + ["seed", "batch_size", "num_trials", "workers", "votingg", "batchsize"]))
scalars = st.one_of(st.integers(-5, 100), st.floats(-10, 10, allow_nan=False), st.booleans(),
                    st.sampled_from(["1e-3", "abc", "3", "true", "none", "", "era_1", "2.5"]), st.none())
values = st.one_of(scalars, st.lists(scalars, max_size=3))
files = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)
sectioned = st.fixed_dictionaries({}, optional={"sources": st.dictionaries(st.sampled_from(TRAIN_KEYS), values,
                                                                          max_size=3),
                                                "methods": st.fixed_dictionaries(
                                                    {"grasp": st.dictionaries(st.sampled_from(GRASP_KEYS), values,
                                                                              max_size=3)})})


def _resolve_all(path):
    file = read_settings(path)
    train, _ = resolve_training(file, Layer(), {"dataset": "drift_digits", "bin": "era_1"})
    exp, _ = resolve_experiment(file, Layer({"target": "era_1"}, flag=True), "grasp", set())
    sweep, _ = resolve_sweep(file, Layer())
    return train, exp, sweep


def _typed(obj) -> None:
    """Every field holds a value of its declared type (the loader converted it)."""
    for name, tp in field_types(type(obj)).items():
        value = getattr(obj, name)
        if tp in (int, float, bool, str):
            assert isinstance(value, tp) and not (tp is int and isinstance(value, bool)), (name, value)
        if tp is float:
            assert math.isfinite(value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=files, sections=sectioned)
def test_any_file_gives_typed_configs_or_one_config_error(tmp_path, top, sections):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**top, **sections}))
    try:
        train, exp, sweep = _resolve_all(path)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    except KeyError as exc:  # an unknown registry name: a user error with its own one-line message
        assert "Unknown" in str(exc)
        return
    _typed(train)
    _typed(exp.method_config)
    _typed(sweep.method_configs["grasp"])
    for key in ("learning_rate", "weight_decay", "seed", "batch_size"):
        if key in top and top[key] is not None and key in TRAIN_KEYS and "sources" not in sections:
            assert getattr(train, key) == yaml.safe_load(yaml.safe_dump(top[key])) or \
                getattr(train, key) == float(top[key]) or getattr(train, key) == int(float(top[key]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=st.floats(1e-8, 1.0), style=st.sampled_from(["{:e}", "{:.3e}", "{!r}", "{:g}"]))
def test_a_learning_rate_in_any_spelling_is_that_number(tmp_path, rate, style):
    text = style.format(rate)
    path = tmp_path / "lr.yaml"
    path.write_text(f"learning_rate: {text}\n")
    train, exp, _ = _resolve_all(path)
    assert train.learning_rate == float(text) and exp.method_config.learning_rate == float(text)

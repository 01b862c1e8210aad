"""The generic registry (register / get / list, aliases, errors) and the real registries built on it."""

from __future__ import annotations

import pytest

from multisource.registry import Registry


@pytest.fixture
def widgets() -> Registry:
    reg: Registry = Registry("widget")
    reg.register("Alpha", 1, aliases=("a", "first"))
    reg.register("beta", 2)
    return reg


def test_get_by_name_alias_and_any_case(widgets):
    assert widgets.get("alpha") == 1
    assert widgets.get("ALPHA") == 1
    assert widgets.get(" a ") == 1
    assert widgets.get("First") == 1
    assert widgets.get("beta") == 2
    assert widgets.canonical("first") == "alpha"
    assert widgets.canonical("Beta") == "beta"


def test_list_is_sorted_canonical_names_without_aliases(widgets):
    widgets.register("aardvark", 0)
    assert widgets.list() == ["aardvark", "alpha", "beta"]
    assert list(widgets) == ["aardvark", "alpha", "beta"]
    assert "a" in widgets and "FIRST" in widgets and "gamma" not in widgets


def test_decorator_form_returns_the_object():
    reg: Registry = Registry("method")

    @reg.register("mine", aliases=("m",))
    def run():
        return 42

    assert reg.get("m") is run
    assert run() == 42


def test_duplicate_name_is_an_error(widgets):
    with pytest.raises(ValueError, match="widget 'ALPHA' is already registered"):
        widgets.register("ALPHA", 3)
    with pytest.raises(ValueError, match="widget 'first' is already registered"):
        widgets.register("first", 3)  # a name that is already someone's alias
    assert widgets.get("alpha") == 1


def test_alias_colliding_with_a_name_or_another_alias_is_an_error(widgets):
    with pytest.raises(ValueError, match="alias 'beta' is already registered"):
        widgets.register("gamma", 3, aliases=("beta",))
    with pytest.raises(ValueError, match="alias 'a' is already registered"):
        widgets.register("delta", 4, aliases=("a",))


def test_unknown_name_lists_the_available_ones(widgets):
    with pytest.raises(KeyError) as info:
        widgets.get("gamma")
    message = info.value.args[0]
    assert message == "Unknown widget 'gamma'. Available: alpha, beta."


def test_real_registries_hold_the_spec_entries():
    from multisource.data.datasets import DATASETS, get_dataset
    from multisource.models.registry import MODELS

    assert DATASETS.list() == ["clear10", "clear100", "drift_digits", "drift_glyphs", "yearbook"]
    assert get_dataset("glyphs").bins == ("era_01", "era_02", "era_03", "era_04", "era_05", "era_06")
    digits = get_dataset("digits")
    assert digits.name == "drift_digits"
    assert digits.bins == ("era_1", "era_2", "era_3", "era_4", "era_5")
    assert digits.classes == tuple("0123456789")
    assert get_dataset("clear100_30classes").dir_name == "CLEAR100_30classes"
    assert len(get_dataset("clear100").classes) == 30
    assert "BACKGROUND" not in get_dataset("clear10").classes
    assert get_dataset("yearbook").classes == ("F", "M")
    for name in ("mobilevit-xxs", "mobilevit-xs", "resnet-50", "efficientnet-b1", "tiny-resnet"):
        assert name in MODELS.list()
    with pytest.raises(KeyError, match="Available: clear10, clear100, drift_digits, drift_glyphs, yearbook"):
        get_dataset("mnist")


def test_failed_registration_leaves_nothing_behind(widgets):
    with pytest.raises(ValueError):
        widgets.register("gamma", 3, aliases=("g", "beta"))
    assert "gamma" not in widgets and "g" not in widgets
    assert widgets.list() == ["alpha", "beta"]
    widgets.register("gamma", 3, aliases=("g",))  # the name is still free
    assert widgets.get("g") == 3


def test_a_new_method_is_in_the_default_sweep_unless_it_says_why_not():
    from dataclasses import dataclass

    from multisource.experiment.settings import resolve_sweep
    from multisource.config import Layer
    from multisource.methods import METHODS, get_method
    from multisource.methods.base import default_methods, register_method

    @dataclass
    class Plain:
        pass

    try:
        register_method("zz_new", Plain, "a method added by a test")(lambda cfg, pool, target, meter: None)
        register_method("zz_left_out", Plain, "another", outside_default_sweep="needs a GPU")(
            lambda cfg, pool, target, meter: None)
        assert "zz_new" in default_methods() and "zz_left_out" not in default_methods()
        assert "zz_new" in resolve_sweep(None, Layer())[0].methods
    finally:
        for name in ("zz_new", "zz_left_out"):
            METHODS._items.pop(name, None)
    # every method left out names its reason; the paper's four and the reference rows are in
    assert {m for m in METHODS if not get_method(m).outside_default_sweep} == set(default_methods())
    assert default_methods()[:4] == ("ensemble", "fusion", "grasp", "pearl")
    assert {"target_only", "source_finetune"} <= set(default_methods())

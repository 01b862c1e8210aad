"""Config dataclasses: layering (defaults < file < CLI), unknown keys, range and choice errors, YAML."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from multisource.config import ConfigError, build, check_choice, check_range, load_yaml, pick, to_dict
from multisource.options import RunOptions, TrainOptions
from multisource.training.fit import SourceTrainConfig


@dataclass
class Toy:
    lr: float = 0.1
    epochs: int = 3
    name: str = "x"
    bins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_range(self, "lr", 0, 1)
        check_range(self, "epochs", 1)
        check_choice(self, "name", ("x", "y"))


def test_build_layers_later_wins_and_none_is_skipped():
    cfg = build(Toy, {"lr": 0.5, "epochs": 7}, {"lr": 0.25, "epochs": None}, None, {})
    assert (cfg.lr, cfg.epochs, cfg.name) == (0.25, 7, "x")


def test_build_accepts_dashes_and_turns_lists_into_tuples():
    cfg = build(Toy, {"bins": ["era_1", "era_2"]}, {"lr": 0.5})
    assert cfg.bins == ("era_1", "era_2") and isinstance(cfg.bins, tuple)
    # dashes in keys (as YAML users write them) map to the field names
    assert build(SourceTrainConfig, {"max-epochs": 2}).max_epochs == 2


def test_unknown_key_names_the_valid_fields():
    with pytest.raises(ConfigError) as info:
        build(Toy, {"lr": 0.5}, {"epoch": 2})
    assert str(info.value) == "Unknown Toy field 'epoch'. Valid fields: bins, epochs, lr, name."
    assert build(Toy, {"epoch": 2}, strict=False).epochs == 3  # non-strict: ignored


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 1.5}, "Toy.lr=1.5 is out of range; use a value in [0, 1]."),
    ({"lr": -0.1}, "Toy.lr=-0.1 is out of range; use a value in [0, 1]."),
    ({"epochs": 0}, "Toy.epochs=0 is out of range; use a value in [1, inf]."),
    ({"name": "z"}, "Toy.name='z' is not valid; choose one of x, y."),
])
def test_validation_messages_name_field_value_and_range(kwargs, message):
    with pytest.raises(ConfigError) as info:
        Toy(**kwargs)
    assert str(info.value) == message


def test_range_bounds_are_inclusive():
    assert Toy(lr=0, epochs=1).lr == 0
    assert Toy(lr=1).lr == 1


def test_source_train_config_defaults_follow_the_spec():
    cfg = SourceTrainConfig()
    assert (cfg.max_epochs, cfg.batch_size, cfg.weight_decay, cfg.head_lr_multiplier, cfg.warmup_epochs,
            cfg.gradient_clip, cfg.seed, cfg.pretrained) == (15, 32, 0.01, 10.0, 2.0, 1.0, 42, True)
    assert cfg.learning_rate is None  # the model's recommended rate


@pytest.mark.parametrize("kwargs, field", [
    ({"max_epochs": 0}, "max_epochs=0"), ({"batch_size": 0}, "batch_size=0"),
    ({"weight_decay": -1.0}, "weight_decay=-1.0"), ({"learning_rate": -1e-3}, "learning_rate=-0.001"),
    ({"image_size": 4}, "image_size=4"), ({"warmup_epochs": -1}, "warmup_epochs=-1"),
])
def test_source_train_config_range_errors(kwargs, field):
    with pytest.raises(ConfigError, match=f"SourceTrainConfig.{field} is out of range"):
        SourceTrainConfig(**kwargs)


def test_run_options_precision_choice_aliases_and_what_really_runs():
    with pytest.raises(ConfigError, match="RunOptions.precision='fp8' is not valid; choose one of auto, 32"):
        RunOptions(precision="fp8")
    assert RunOptions(precision="32-true").precision == "32"  # Lightning's spelling, one recorded name
    assert RunOptions(precision="bf16").precision == "bf16-mixed"
    assert RunOptions().precision_on("cpu") == "32" and RunOptions().precision_on("cuda") == "16-mixed"
    # mixed precision runs on CUDA only: on CPU the truth (32) is what runs and is recorded
    assert RunOptions(precision="16-mixed").precision_on("cpu") == "32"
    assert RunOptions(precision="bf16-mixed").precision_on("cuda") == "bf16-mixed"
    assert RunOptions(device="gpu").device == "cuda" and TrainOptions(devices="2").devices == 2


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; pass an existing YAML file to --config"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of field: value, not list"):
        load_yaml(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_pick_keeps_only_the_class_fields():
    mixed = {"max_epochs": 2, "num-workers": 3, "alignment_threshold": 0.3}
    assert pick(mixed, SourceTrainConfig) == {"max_epochs": 2}
    assert pick(mixed, RunOptions) == {"num_workers": 3}
    assert pick(None, RunOptions) == {}
    assert to_dict(build(Toy, {"epochs": 4}))["epochs"] == 4


def _train_args(argv, dataset=None):
    from multisource.cli.train import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser, dataset)
    return parser.parse_args(argv)


def test_cli_flags_override_the_config_file(tmp_path):
    """The training CLI's layering: defaults < --config file < command-line flags; what vs how kept apart."""
    from multisource.cli.train import _resolve

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("max_epochs: 9\nbatch_size: 8\nlearning_rate: 2e-3\nnum_workers: 2\n"
                        "alignment_threshold: 0.5\n")  # a method's key: valid in the grammar, not training's
    args = _train_args(["--config", str(cfg_file), "--dataset", "drift_digits", "--max_epochs", "2",
                        "--no-pretrained", "--device", "cuda", "--devices", "2"])
    cfg, opts = _resolve(args, {"bin": "era_3"})
    assert (cfg.max_epochs, cfg.batch_size, cfg.learning_rate) == (2, 8, 0.002)  # CLI > file > default
    assert cfg.bin == "era_3" and cfg.pretrained is False and cfg.seed == 42
    assert (opts.num_workers, opts.device, opts.devices) == (2, "cuda", 2)


def test_cli_rejects_out_of_range_values_from_the_file(tmp_path):
    from multisource.cli.train import _resolve

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("batch_size: 0\n")
    with pytest.raises(ConfigError, match="SourceTrainConfig.batch_size=0 is out of range"):
        _resolve(_train_args(["--config", str(cfg_file)], "drift_digits"), {"bin": "era_1"})

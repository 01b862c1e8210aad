"""The one settings loader: every command reads a settings file the same way (types converted, unknown keys,
wrong types and YAML syntax errors refused with one line naming the file, line and key), and every section of
configs/demo.yaml is honoured by the commands that take it."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from multisource.cli.demo import demo_main
from multisource.cli.experiment import experiment_main
from multisource.cli.own_data import drift_main, import_main
from multisource.cli.preprocess import build_main
from multisource.cli.sweep import summarize_main, sweep_main
from multisource.cli.train import train_all_main, train_baseline_main
from multisource.config import ConfigError, Layer, build, field_names, load_yaml
from multisource.experiment.settings import (SECTIONS, cli_layer, read_settings, resolve_data, resolve_experiment,
                                             resolve_options, resolve_sweep, resolve_training)
from multisource.options import ExperimentOptions, RunOptions, SweepOptions, TrainOptions
from multisource.training.fit import SourceTrainConfig

drift_digits_main = functools.partial(build_main, dataset="drift_digits")  # preprocessing/drift_digits_preprocessing.py

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO = PROJECT_ROOT / "configs" / "demo.yaml"
# Every command that takes --config, with arguments that would otherwise be valid (the refusal comes first).
COMMANDS = {
    "run_grasp_experiment": lambda cfg, tmp: experiment_main(["--config", cfg, "--target", "era_1",
                                                              "--results_dir", str(tmp)], method="grasp"),
    "run_experiment": lambda cfg, tmp: experiment_main(["--method", "fusion", "--config", cfg, "--target", "era_1",
                                                        "--results_dir", str(tmp)]),
    "train_baseline": lambda cfg, tmp: train_baseline_main(["--config", cfg, "--bin", "era_1",
                                                            "--results_dir", str(tmp)]),
    "train_all_subsets": lambda cfg, tmp: train_all_main(["--config", cfg, "--results_dir", str(tmp)]),
    "run_all": lambda cfg, tmp: sweep_main(["--config", cfg, "--results_dir", str(tmp), "--dry_run"]),
    "run_all_grasp_clear10": lambda cfg, tmp: sweep_main(["--config", cfg, "--results_dir", str(tmp)],
                                                         method="grasp", dataset="clear10"),
    "drift_digits_preprocessing": lambda cfg, tmp: drift_digits_main(["--config", cfg, "--output_dir",
                                                                      str(tmp / "d")]),
    "import_dataset": lambda cfg, tmp: import_main(["--config", cfg, "--folder", str(tmp / "tree"), "--output_dir",
                                                    str(tmp / "d")]),
    "drift_report": lambda cfg, tmp: drift_main(["--config", cfg, "--dataset", "drift_digits", "--model",
                                                 "tiny-resnet", "--results_dir", str(tmp)]),
    "summarize": lambda cfg, tmp: summarize_main(["--config", cfg, "--dataset", "drift_digits", "--model",
                                                  "tiny-resnet", "--results_dir", str(tmp)]),
    "demo": lambda cfg, tmp: demo_main(["--config", cfg, "--data_root", str(tmp / "d"), "--results_dir", str(tmp)]),
}
BAD_FILES = {  # file text -> what the one-line message must name
    "unknown_top": ("batchsize: 8\n", ["line 1", "batchsize", "unknown key"]),
    "unknown_in_section": ("sources:\n  max_epochs: 2\n  votingg: soft\n", ["line 3", "sources.votingg"]),
    "unknown_method_key": ("methods:\n  grasp: {alignment_treshold: 0.2}\n", ["methods.grasp.alignment_treshold"]),
    "unknown_method": ("methods:\n  grasb: {}\n", ["line 2", "grasb", "Available"]),
    "wrong_type_int": ("batch_size: abc\n", ["line 1", "batch_size", "'abc' is not an integer"]),
    "wrong_type_in_section": ("sweep:\n  num_trials: three\n", ["line 2", "sweep.num_trials", "integer"]),
    "wrong_type_float": ("methods:\n  grasp: {learning_rate: fast}\n", ["line 2", "learning_rate", "a number"]),
    "wrong_type_bool": ("run:\n  overwrite: maybe\n", ["run.overwrite", "true or false"]),
    "yaml_syntax": ("sources:\n  max_epochs: [1, 2\n", ["YAML syntax error", "line"]),
    "not_a_mapping": ("- 1\n- 2\n", ["must hold a mapping"]),
    "section_not_mapping": ("sources: 3\n", ["sources", "must be a mapping"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_every_command_refuses_a_bad_settings_file_in_one_line(command, case, tmp_path, capsys):
    text, needles = BAD_FILES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert COMMANDS[command](str(cfg), tmp_path / "results") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    if "line" in needles[0] or case.startswith(("unknown", "wrong")):
        assert str(cfg) in err  # the file is named
    assert not (tmp_path / "results").exists()  # refused before any work


def test_numbers_written_as_1e_3_are_numbers_for_every_stage(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("learning_rate: 1e-3\nbatch_size: 16\nseed: 7\nmethods: [grasp]\n"
                   "sources:\n  weight_decay: 1e-4\nsweep:\n  num_trials: 2\nrun:\n  num_workers: '1'\n")
    file = read_settings(cfg)
    train, opts = resolve_training(file, Layer(), {"dataset": "drift_digits"})
    assert (train.learning_rate, train.weight_decay, train.batch_size, train.seed) == (1e-3, 1e-4, 16, 7)
    assert opts.num_workers == 1
    exp, _ = resolve_experiment(file, Layer({"target": "era_1"}, flag=True), "grasp", set())
    assert exp.method_config.learning_rate == 1e-3 and exp.batch_size == 16 and exp.seed == 7
    sweep, _ = resolve_sweep(file, Layer())
    assert sweep.methods == ("grasp",) and sweep.num_trials == 2
    assert sweep.method_configs["grasp"].learning_rate == 1e-3
    assert sweep.source_training["weight_decay"] == 1e-4  # the sources: section travels for --train_missing
    assert resolve_data(file).seed == 7


def test_command_line_beats_the_file_beats_the_defaults(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("learning_rate: 1e-3\nsources:\n  max_epochs: 4\n")
    file = read_settings(cfg)
    train, _ = resolve_training(file, Layer({"max_epochs": "2"}, flag=True))
    assert (train.max_epochs, train.learning_rate, train.batch_size) == (2, 1e-3, 32)
    with pytest.raises(ConfigError, match="--max_epochs: 'two' is not an integer"):
        resolve_training(file, Layer({"max_epochs": "two"}, flag=True))


def test_each_command_takes_its_own_options_from_one_run_section(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("run:\n  workers: 2\n  strategy: ddp\n  devices: 2\n  save_model: false\n  train_missing: true\n")
    file = read_settings(cfg)
    _, train = resolve_training(file, Layer())
    assert type(train) is TrainOptions and (train.workers, train.strategy, train.devices) == (2, "ddp", 2)
    assert not hasattr(train, "save_model") and not hasattr(train, "train_missing")
    _, one = resolve_experiment(file, Layer({"target": "era_1"}, flag=True), "ensemble", set())
    assert type(one) is ExperimentOptions and (one.workers, one.save_model) == (2, False)
    assert not hasattr(one, "strategy") and not hasattr(one, "train_missing")
    _, sweep = resolve_sweep(file, Layer({"overwrite": True}, flag=True))
    assert type(sweep) is SweepOptions
    assert (sweep.strategy, sweep.save_model, sweep.train_missing, sweep.overwrite) == ("ddp", False, True, True)
    assert type(resolve_options(file, Layer())) is RunOptions  # the drift report's and summarize's
    # a key no command has is still refused, naming the line and every command's keys
    cfg.write_text("run:\n  save_modle: false\n")
    with pytest.raises(ConfigError, match=r"line 2.*unknown key 'save_modle'.*save_model.*strategy.*train_missing"):
        read_settings(cfg)


def test_the_run_section_is_checked_against_every_commands_options():
    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    every = set().union(*(field_names(c) for c in subclasses(RunOptions)))
    assert len(subclasses(RunOptions)) >= 3 and every == field_names(SECTIONS["run"])


def test_demo_config_sections_are_honoured_by_each_command():
    file = read_settings(DEMO)
    train, opts = resolve_training(file, Layer())
    assert (train.dataset, train.model_name, train.max_epochs, train.learning_rate, train.seed) == (
        "drift_digits", "tiny-resnet", 10, 1e-3, 42)
    assert (opts.workers, opts.device) == (2, "cpu")
    exp, _ = resolve_experiment(file, Layer({"target": "era_5"}, flag=True), "grasp", set())
    raw = load_yaml(DEMO)["methods"]["grasp"]
    assert exp.method_config.initial_epochs == raw["initial_epochs"] and exp.method_config.learning_rate == 1e-3
    sweep, _ = resolve_sweep(file, Layer())
    assert (sweep.targets, sweep.protocol, sweep.num_trials) == (("era_5",), "window:2", 1)
    assert sweep.methods == tuple(load_yaml(DEMO)["methods"])
    assert sweep.method_configs["pearl"].adapter_dim == 4
    assert resolve_data(file).image_size == 32


def test_train_all_subsets_with_the_demo_config_trains_with_its_sources_settings(monkeypatch, tmp_path, digits_root):
    """The CLI end to end up to the trainer: the file's sources: section (10 epochs, lr 1e-3) is what trains."""
    from multisource.training import all_bins

    seen = []
    monkeypatch.setattr(all_bins, "train_source", lambda cfg, opts, handle, start: seen.append((cfg, opts)) or {})
    from multisource.training.start import SharedStart

    start = SharedStart("upstream", "stands/for/the/upstream.ckpt", "0" * 16)
    monkeypatch.setattr(all_bins, "resolve_start", lambda cfg, opts, handle: start)  # no upstream pretraining here
    rc = train_all_main(["--config", str(DEMO), "--data_root", str(digits_root), "--results_dir", str(tmp_path),
                         "--workers", "1"])
    assert rc == 0 and [c.bin for c, _ in seen] == ["era_1", "era_2", "era_3", "era_4", "era_5"]
    cfg, opts = seen[0]
    assert (cfg.max_epochs, cfg.learning_rate, cfg.batch_size, cfg.model_name) == (10, 1e-3, 32, "tiny-resnet")
    assert opts.device == "cpu"


def test_typed_conversion_of_each_field_kind():
    from dataclasses import dataclass

    @dataclass
    class Kinds:
        n: int = 1
        x: float = 0.5
        flag: bool = False
        names: tuple[str, ...] = ()
        maybe: float | None = None
        devices: int | str = "auto"
        label: str = "a"

    got = build(Kinds, {"n": "3", "x": "1e-3", "flag": "yes", "names": "era_1", "maybe": "2", "devices": "4",
                        "label": 32})
    assert (got.n, got.x, got.flag, got.names, got.maybe, got.devices, got.label) == (
        3, 1e-3, True, ("era_1",), 2.0, 4, "32")
    assert build(Kinds, {"maybe": "none", "devices": "0,1", "n": 2.0}).maybe is None
    assert build(Kinds, {"devices": "0,1"}).devices == "0,1"
    # one value where a list is expected is a list of one (a year-named bin, a sweep's one budget)
    assert build(Kinds, {"names": 2019}).names == ("2019",)
    for key, value in (("n", "abc"), ("n", 2.5), ("n", True), ("x", "fast"), ("flag", 2), ("names", {"a": 1})):
        with pytest.raises(ConfigError, match=f"{key}: .* is not"):
            build(Kinds, {key: value})


def test_cli_layer_keeps_only_given_values():
    import argparse

    layer = cli_layer(argparse.Namespace(a=None, b="1", config="x.yaml", verbose=True))
    assert dict(layer) == {"b": "1"} and layer.where("b") == "--b"


def test_source_train_config_is_canonical():
    assert SourceTrainConfig(model_name="test_resnet").model_name == "tiny-resnet"


def test_the_importer_reads_its_section_and_flags_win(tmp_path, capsys):
    from PIL import Image

    tree = tmp_path / "tree"
    for b in ("2019", "2020"):
        for c in ("cat", "dog"):
            (tree / b / c).mkdir(parents=True)
            for i in range(12):
                Image.new("RGB", (20, 20), (i * 20, 0, 0) if c == "cat" else (0, i * 20, 0)).save(
                    tree / b / c / f"{i}.png")
    cfg = tmp_path / "import.yaml"
    cfg.write_text("seed: 7\nimport:\n  name: Pets\n  image_size: 16\n  classes: [dog, cat]\n")
    out = tmp_path / "out"
    assert import_main(["--config", str(cfg), "--folder", str(tree), "--output_dir", str(out), "--image_size", "20",
                        "--no_progress"]) == 0
    from multisource.data.card import read_card
    card = read_card(out)
    assert card["dataset"] == "Pets" and card["seed"] == 7 and card["classes"] == ["dog", "cat"]
    assert card["image_size"] == 20  # the flag wins over the file
    cfg.write_text("import:\n  image_size: big\n")
    assert import_main(["--config", str(cfg), "--folder", str(tree), "--output_dir", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "import.image_size" in err and "line 2" in err and not (tmp_path / "o2").exists()


def test_a_settings_file_declares_variants_that_inherit_the_methods_settings(tmp_path):
    cfg = tmp_path / "variants.yaml"
    cfg.write_text("methods:\n  grasp: {initial_epochs: 2, learning_rate: 1e-3}\n"
                   "  grasp[near-first]: {source-order: nearest-first}\n  ensemble: {}\n")
    sweep, _ = resolve_sweep(read_settings(cfg), Layer())
    assert sweep.methods == ("grasp", "grasp[near-first]", "ensemble")  # a tag is a name: its '-' stays
    base, variant = sweep.method_configs["grasp"], sweep.method_configs["grasp[near-first]"]
    assert (base.source_order, base.initial_epochs) == ("chronological", 2)
    assert (variant.source_order, variant.initial_epochs, variant.learning_rate) == ("nearest-first", 2, 1e-3)
    cfg.write_text("methods:\n  grasp[no/pe]: {}\n")
    with pytest.raises(ConfigError, match="the variant's tag 'no/pe'"):
        read_settings(cfg)
    cfg.write_text("methods:\n  grasp[nearest]: {alignment_treshold: 0.1}\n")
    with pytest.raises(ConfigError, match="alignment_treshold"):
        read_settings(cfg)


def test_a_matched_budget_follows_the_files_reference_settings_when_the_sweep_does_not_run_it(tmp_path):
    """configs/merging.yaml with --methods ties: TIES's matched epochs are GRASP's in that file (2 + 3 x 1 for
    four sources), as in the sweep that runs GRASP too, not GRASP's defaults (3 + 3 x 3)."""
    from multisource.methods import get_method
    from multisource.methods.base import resolve_budget
    from multisource.methods.inputs import make_config

    cfg = tmp_path / "merge.yaml"
    cfg.write_text("methods:\n  grasp: {initial_epochs: 2, finetune_epochs: 1}\n  ties: {finetune_epochs: matched}\n")
    for cli in (Layer({"methods": ["ties"]}), Layer({"methods": ["ties", "grasp"]})):
        sweep, _ = resolve_sweep(read_settings(cfg), cli)
        reference = make_config("grasp", sweep.method_configs["grasp"])
        ties = resolve_budget(get_method("ties"), make_config("ties", sweep.method_configs["ties"]), 4, reference)
        assert ties.finetune_epochs == 5
